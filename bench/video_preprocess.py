"""Benchmark: video preprocess throughput (decode + uniform frame sampling + processor) against the image one.

Writes `--n` demo clips (16 frames of 64x64, moving digit, GIF as the demo writes them; and the same frames as
H.264 MP4 and MPEG-4 AVI) and `--n` 28x28 grey PNGs (the demo's images), then times `load` + `process` in batches
of `--batch` exactly as `multimodal.preprocessing.preprocess` runs them, in this one process:

- video: the config-built VideoMAE-style processor at image_size 64 (no resize) and 32, num_frames 16;
- image: the image modality's processor at image_size 28.

    python bench/video_preprocess.py [--n 256] [--batch 128] [--threads 2]

Reports samples/second and the ratio to the image rate; the best of `--repeats` passes (the machine is shared).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere


def write_inputs(root: Path, n: int) -> dict[str, list[str]]:
    """`n` clips per container and `n` PNGs under `root`; manifest-style relative cells per kind."""
    import av
    import numpy as np
    from PIL import Image

    from multimodal.demo.dataset import _load_mnist
    from multimodal.demo.video import moving_digit_frames, write_gif

    pixels, labels = _load_mnist()
    rng = np.random.default_rng(0)
    cells: dict[str, list[str]] = {"gif": [], "mp4": [], "avi": [], "png": []}
    for i in range(n):
        digit = np.round(pixels[i].reshape(28, 28) * 255).astype(np.uint8)
        frames = moving_digit_frames(digit, rng, frames=16, size=64, noise=0.2, blur=1.0, occluder=20)
        write_gif(root / f"{i}.gif", frames, 10)
        for fmt, codec in (("mp4", "libx264"), ("avi", "mpeg4")):
            with av.open(str(root / f"{i}.{fmt}"), "w", format=fmt) as container:
                stream = container.add_stream(codec, rate=10)
                stream.width = stream.height = 64
                stream.pix_fmt = "yuv420p"
                for frame in frames:
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
                container.mux(stream.encode())
        Image.fromarray(digit).save(root / f"{i}.png")
        for kind in cells:
            cells[kind].append(f"{i}.{kind}")
    return cells


def rate(modality, spec, cells: list[str], root: Path, batch: int, repeats: int) -> float:
    """Best samples/second of load + process over `cells`, batched as preprocess does."""
    processor = modality.build_processor(spec)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for first in range(0, len(cells), batch):
            items = [modality.load(cell, root, spec, processor) for cell in cells[first:first + batch]]
            modality.process(processor, items, spec)
        best = max(best, len(cells) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from multimodal.modalities import get_modality, video
    from multimodal.modalities.base import Modality
    from multimodal.modalities.spec import ModalitySpec

    torch.set_num_threads(args.threads)
    # Assembled here until the registry lists video (issue 12); the same functions the registry will call.
    video_modality = Modality("video", video.load, video.build_processor, video.process, video.build_encoder,
                              options=video.OPTIONS, checkpoints=())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cells = write_inputs(root, args.n)
        image_spec = ModalitySpec(pretrained=None, config={}, image_size=28)
        image_rate = rate(get_modality("image"), image_spec, cells["png"], root, args.batch, args.repeats)
        print(f"{'input':<34} {'samples/s':>10} {'x image':>8}")
        print(f"{'image: 28x28 PNG, image_size 28':<34} {image_rate:>10.0f} {1.0:>8.2f}")
        for size in (64, 32):
            spec = ModalitySpec(pretrained=None, config={}, image_size=size, num_frames=16, encoder="video")
            for kind in ("gif", "mp4", "avi"):
                clips = rate(video_modality, spec, cells[kind], root, args.batch, args.repeats)
                label = f"video: 16x64x64 {kind}, image_size {size}"
                print(f"{label:<34} {clips:>10.0f} {clips / image_rate:>8.2f}")


if __name__ == "__main__":
    main()
