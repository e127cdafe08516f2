"""The demo's opt-in video: a short moving-digit clip in the spirit of Moving MNIST, written as a GIF with PyAV.

Recipe (one clip): the digit is another writer's image of the sample's class (`other_writer_digit`: a different
MNIST image with the same label, from the digits the demo draws from), so the clip never repeats the sample's own
image. It is blurred (Gaussian, `blur` px) and bounces across a dark `size` x `size` canvas at a random speed
(2-4 px a frame) and direction; a mid-grey square of side `occluder` px stands still at a random place and hides the
digit whenever it passes behind. Every frame gets Gaussian pixel noise of std `noise` (0-1 scale) and is stored
with 16 grey levels, which halves the GIF without hiding the digit. Informative (shape over time), not sufficient.

GIF, because its encoder ships in the PyAV wheel, it is lossless for grey frames and pure integer code (LZW), and
the file holds no timestamp or encoder version: the same seed gives the same bytes on any machine.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from scipy.ndimage import gaussian_filter

DIGIT_SIDE = 28
FPS = 10  # GIF delays are whole 1/100 s: 10 fps is exact
GREY_LEVELS = 16
SPEED = (2.0, 4.0)  # px per frame
OCCLUDER_GREY = 0.5


def other_writer_digit(pixels: np.ndarray, labels: np.ndarray, index: int, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 uint8 digit of the class of image `index`, drawn from the other images of that class.

    `pixels` (n, 784) on a 0-1 scale and `labels` (n,) are the demo's digit source (`demo_dataset._load_mnist`).
    """
    same = np.flatnonzero(labels == labels[index])
    others = same[same != index]
    if not len(others):
        raise ValueError(f"no other image of class {labels[index]} to draw a video digit from")
    chosen = others[rng.integers(len(others))]
    return np.round(pixels[chosen].reshape(DIGIT_SIDE, DIGIT_SIDE) * 255.0).astype(np.uint8)


def _bounce(rng: np.random.Generator, frames: int, room: int) -> np.ndarray:
    """(frames, 2) integer top-left positions of a point moving straight and reflecting off [0, room]."""
    if room == 0:
        return np.zeros((frames, 2), np.int64)
    angle = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(*SPEED)
    start = rng.uniform(0, room, 2)
    path = start + np.arange(frames)[:, None] * speed * np.array([np.sin(angle), np.cos(angle)])
    folded = np.abs(np.mod(path, 2 * room) - room)  # reflection off both walls, as a triangle wave
    return np.round(room - folded).astype(np.int64)


def moving_digit_frames(digit: np.ndarray, rng: np.random.Generator, *, frames: int, size: int, noise: float,
                        blur: float, occluder: int) -> np.ndarray:
    """The degraded clip as (frames, size, size) uint8 grey frames (see the module docstring)."""
    if size < DIGIT_SIDE:
        raise ValueError(f"video size must be at least {DIGIT_SIDE} px (a whole digit), got {size}")
    if not 0 <= occluder <= size:
        raise ValueError(f"video occluder must be 0..{size} px, got {occluder}")
    glyph = gaussian_filter(digit.astype(np.float32) / 255.0, blur) if blur > 0 else digit / np.float32(255.0)
    positions = _bounce(rng, frames, size - DIGIT_SIDE)
    top, left = rng.integers(0, size - occluder + 1, 2)
    clip = np.zeros((frames, size, size), np.float32)
    for canvas, (y, x) in zip(clip, positions):
        canvas[y:y + DIGIT_SIDE, x:x + DIGIT_SIDE] = glyph
    clip[:, top:top + occluder, left:left + occluder] = OCCLUDER_GREY
    clip += rng.normal(0.0, noise, clip.shape).astype(np.float32)
    levels = np.round(np.clip(clip, 0.0, 1.0) * (GREY_LEVELS - 1))
    return np.round(levels * (255.0 / (GREY_LEVELS - 1))).astype(np.uint8)


def write_gif(path: Path, frames: np.ndarray, fps: int) -> None:
    """Grey (T, H, W) uint8 frames as a GIF at `fps` (a divisor of 100 keeps the timing exact)."""
    with av.open(str(path), "w", format="gif") as container:
        stream = container.add_stream("gif", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "gray"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(stream.encode())


def write_moving_digit_clip(path: Path, digit_image: np.ndarray, rng: np.random.Generator, *, frames: int, size: int,
                            noise: float, blur: float, occluder: int) -> None:
    """One demo clip of `digit_image` (28x28 uint8, from `other_writer_digit`) at `path` (a .gif)."""
    clip = moving_digit_frames(digit_image, rng, frames=frames, size=size, noise=noise, blur=blur, occluder=occluder)
    write_gif(Path(path), clip, FPS)


def video_cell(sample_id: str) -> str:
    """The manifest cell of a sample's clip, relative to the dataset folder."""
    return f"video/{sample_id}.gif"
