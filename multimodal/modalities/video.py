"""Video: PyAV decode (FFmpeg ships in its wheel) of uniformly sampled RGB frames, a VideoMAE-style processor, and
either a transformers video encoder (VideoMAE, TimeSformer, ViViT) or an image encoder applied to every frame and
pooled over time (`encoder: per_frame`).

Validation reads the container header first (size, duration, frame count) and refuses a clip beyond the bounds
before decoding any of it, then decodes every frame, one at a time, to prove the clip whole. Audio tracks are
ignored (reported as `has_audio`). The processor is the VideoMAE image processor (PIL backend): transformers'
video processors need torchvision, which this environment does not have.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PreTrainedConfig, VideoMAEImageProcessorPil
from transformers.modeling_outputs import BaseModelOutput

from multimodal.modalities.base import Modality, PooledEncoder, config_built, load_pretrained
from multimodal.modalities.checks import Check, between
from multimodal.modalities.spec import ModalitySpec
from multimodal.modalities.transforms import gaussian_noise, random_affine, random_cutout
from multimodal.pipeline.params import Strict
from multimodal.storage.codecs import Stored, compact_pixels
from multimodal.storage.dataset import in_row_chunks
from multimodal.storage.paths import resolve_inside

OPTIONS = ("image_size", "num_frames", "encoder")
ENCODERS = ("video", "per_frame")
# Profile columns (`video_<field>`) and their pandas dtypes; nulls where a clip is absent or refused.
PROFILE_FIELDS = {"width": "Int64", "height": "Int64", "fps": "float64", "duration_s": "float64", "frames": "Int64",
                  "has_audio": "boolean", "codec": "string"}
GIF_TRAILER = b"\x3b"  # the last byte of a whole GIF; FFmpeg decodes a cut-off GIF without complaint


class VideoChecks(Strict):
    """Bounds of the video checks (params `validate`). The upper ones are also enforced on the container header,
    before any frame is decoded, so an oversized clip costs nothing to refuse."""

    min_size: int = Field(ge=1)  # px, width and height alike
    max_size: int = Field(ge=1)
    min_fps: float = Field(gt=0)
    max_fps: float = Field(gt=0)
    min_duration_s: float = Field(ge=0)
    max_duration_s: float = Field(gt=0)
    min_frames: int = Field(ge=1)
    max_frames: int = Field(ge=1)

    @model_validator(mode="after")
    def _ranges_ordered(self) -> "VideoChecks":
        problems = [f"{low} ({getattr(self, low)}) exceeds {high} ({getattr(self, high)})" for low, high in
                    (("min_size", "max_size"), ("min_fps", "max_fps"), ("min_duration_s", "max_duration_s"),
                     ("min_frames", "max_frames")) if getattr(self, low) > getattr(self, high)]
        if problems:
            raise ValueError("; ".join(problems))
        return self


class VideoAugment(Strict):
    """Clip transforms (`augment`), one geometric draw per clip shared by its frames; magnitudes x augment_strength."""

    affine_degrees: float = Field(ge=0, le=180)  # rotation drawn in ±degrees
    translate: float = Field(ge=0, le=1)  # shift drawn in ±translate x the side
    scale: float = Field(ge=0, lt=1)  # zoom drawn in 1 ± scale
    noise: float = Field(ge=0)  # std of Gaussian noise, in the processor's normalised pixel units
    cutout: float = Field(ge=0, le=1)  # side of one zeroed square (the same place in every frame), x the shorter side


# --- decoding -----------------------------------------------------------------------------------------------------


@contextmanager
def _named(name: str) -> Iterator[None]:
    """FFmpeg errors as ValueError naming the file (its decode errors do not say which; its open errors give the
    whole path)."""
    try:
        yield
    except av.FFmpegError as err:
        raise ValueError(f"{name}: FFmpeg cannot read it: {err.strerror or type(err).__name__}") from err


def _video_stream(container: Any, name: str) -> Any:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise ValueError(f"{name}: no video stream (streams: {', '.join(kinds)}; format {container.format.name})")
    return container.streams.video[0]


def _header(container: Any, stream: Any) -> dict[str, Any]:
    """What the container promises before any frame is decoded; frames 0 and duration None when it does not say."""
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    else:
        duration = container.duration / av.time_base if container.duration is not None else None
    return {"width": stream.codec_context.width, "height": stream.codec_context.height,
            "fps": float(rate) if rate else None, "duration_s": duration, "frames": stream.frames}


def _too_big(width: int, height: int, frames: int, duration: float | None, options: VideoChecks) -> str | None:
    if max(width, height) > options.max_size:
        return f"{width}x{height} px exceeds max_size {options.max_size} px"
    if frames > options.max_frames:
        return f"{frames} frames exceed max_frames {options.max_frames}"
    if duration is not None and duration > options.max_duration_s:
        return f"duration {duration:.3f} s exceeds max_duration_s {options.max_duration_s:g} s"
    return None


def probe(source: Path | BinaryIO, options: VideoChecks) -> dict[str, Any]:
    """The profile facts of one clip (`PROFILE_FIELDS`); raises ValueError on a refused header, a truncated clip or
    one that does not decode. Frames are decoded one at a time and dropped: memory does not grow with the clip."""
    name = Path(getattr(source, "name", None) or str(source)).name
    with _named(name), av.open(source if hasattr(source, "read") else str(source)) as container:
        stream = _video_stream(container, name)
        header = _header(container, stream)
        if problem := _too_big(header["width"], header["height"], header["frames"], header["duration_s"], options):
            raise ValueError(f"{name}: header refused before decoding: {problem}")
        facts = {"has_audio": bool(container.streams.audio), "codec": stream.codec_context.name}
        fmt, decoded = container.format.name, 0
        for frame in container.decode(stream):
            decoded += 1
            if decoded == 1 and not (header["width"] and header["height"]):  # a header without the frame size
                header["width"], header["height"] = frame.width, frame.height
            # The header may understate: keep the bound while decoding too.
            if problem := _too_big(frame.width, frame.height, decoded, None, options):
                raise ValueError(f"{name}: refused while decoding frame {decoded}: {problem}")
    _check_whole(source, name, fmt, header, decoded)
    fps = header["fps"]
    duration = header["duration_s"] if header["duration_s"] is not None else (decoded / fps if fps else None)
    return {"width": header["width"], "height": header["height"], "fps": fps, "duration_s": duration,
            "frames": decoded, **facts}


def _check_whole(source: Path | BinaryIO, name: str, fmt: str, header: dict[str, Any], decoded: int) -> None:
    """Raise if fewer frames decode than the header promises: FFmpeg decodes what a cut-off file still holds
    without complaint. Matroska/WebM headers hold a duration, not a frame count (one frame of slack there)."""
    if decoded == 0:
        raise ValueError(f"{name}: no frame decodes")
    expected, slack = header["frames"], 0
    if not expected and header["duration_s"] and header["fps"]:
        expected, slack = round(header["duration_s"] * header["fps"]), 1
    if decoded < expected - slack:
        raise ValueError(f"{name}: truncated or damaged: the header promises {expected} frames, "
                         f"only {decoded} decode")
    if fmt == "gif" and not _ends_with(source, GIF_TRAILER):
        raise ValueError(f"{name}: truncated GIF: its trailer byte is missing")


def _ends_with(source: Path | BinaryIO, tail: bytes) -> bool:
    if hasattr(source, "read"):
        source.seek(-len(tail), 2)
        return source.read() == tail
    with Path(source).open("rb") as handle:
        handle.seek(-len(tail), 2)
        return handle.read() == tail


def frame_indices(total: int, count: int) -> np.ndarray:
    """`count` indices into `total` frames, one at the middle of each of `count` equal segments (ascending);
    fewer frames than `count` repeat."""
    return ((np.arange(count) + 0.5) * total / count).astype(np.int64)


def _sampled(container: Any, stream: Any, total: int, count: int) -> tuple[np.ndarray | None, int]:
    """Decode up to the last of `frame_indices(total, count)`, converting only those to RGB at the stream's size:
    (the frames, or None if the stream ended first; how many frames decoded)."""
    wanted = frame_indices(total, count)
    keep, last = set(wanted.tolist()), int(wanted[-1])
    width, height = stream.codec_context.width, stream.codec_context.height
    picked: dict[int, np.ndarray] = {}
    decoded = 0
    for decoded, frame in enumerate(container.decode(stream), start=1):
        if decoded - 1 in keep:
            picked[decoded - 1] = frame.to_ndarray(format="rgb24", width=width, height=height)
        if decoded > last:
            return np.stack([picked[int(i)] for i in wanted]), decoded
    return None, decoded


def read_frames(path: Path, count: int) -> np.ndarray:
    """`count` uniformly sampled RGB frames (count, H, W, 3) uint8 of the clip at `path`; decoding stops after the
    last one needed. The frame count comes from the header, else (Matroska/WebM) from demuxing the packets."""
    with _named(path), av.open(str(path)) as container:
        stream = _video_stream(container, path)
        if stream.frames:
            frames, total = _sampled(container, stream, int(stream.frames), count)
            if frames is not None:
                return frames
        else:
            total = sum(1 for packet in container.demux(stream) if packet.size)
    while total > 0:  # after counting packets, or when the header promised more frames than decode
        with _named(path), av.open(str(path)) as container:
            frames, total = _sampled(container, _video_stream(container, path), total, count)
        if frames is not None:
            return frames
    raise ValueError(f"{path.name}: no frame decodes")


def load(cell: str, root: Path, spec: ModalitySpec, processor: Any) -> np.ndarray:
    return read_frames(resolve_inside(root, cell), int(spec.options["num_frames"]))


# --- processor and encoder ----------------------------------------------------------------------------------------


def build_processor(spec: ModalitySpec) -> Any:
    """The pretrained checkpoint's image processor (VideoMAE's for video models, per-frame ones likewise), or a
    config-built VideoMAE one: every frame resized to image_size, mean/std 0.5."""
    if spec.pretrained:
        return load_pretrained(AutoImageProcessor, spec.pretrained, spec.revision, weights=False)
    size = int(spec.options["image_size"])
    return VideoMAEImageProcessorPil(size={"height": size, "width": size}, do_center_crop=False,
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)


def store(processor: Any, items: Sequence[np.ndarray], spec: ModalitySpec) -> Stored:
    """Clips (T, H, W, 3) -> `pixel_values` (B, T, C, H, W), uint8 before normalisation where the processor allows
    (as images). Frames go through as one list of images, so an image processor (per-frame encoders) and a video
    one give the same layout."""
    count = int(spec.options["num_frames"])
    if bad := [i for i, clip in enumerate(items) if len(clip) != count]:
        raise ValueError(f"video clips {bad} do not hold num_frames={count} frames")

    def pixels(**flags: Any) -> torch.Tensor:
        out = processor([frame for clip in items for frame in clip], return_tensors="pt", **flags)
        values = out["pixel_values"] if "pixel_values" in out else out["pixel_values_videos"]
        return values.reshape(len(items), count, *values.shape[-3:])

    return compact_pixels(processor, pixels)


def process(processor: Any, items: Sequence[np.ndarray], spec: ModalitySpec) -> dict[str, torch.Tensor]:
    return store(processor, items, spec).decoded()


class PerFrameConfig(PreTrainedConfig):
    """An image architecture (`frame_config`, its config as a dict) read frame by frame; `hidden_size` its width."""

    model_type = "per_frame"
    frame_config: dict[str, Any] | None = None
    hidden_size: int = 0


class PerFrameEncoder(nn.Module):
    """An image encoder over every frame of (B, T, C, H, W) clips: T folded into the batch, each frame pooled as an
    image (`PooledEncoder`), `last_hidden_state` (B, T, D) for the outer `PooledEncoder` to pool over time.

    Registered with AutoConfig/AutoModel as `per_frame`, so a saved model rebuilds from its config like any other."""

    config_class = PerFrameConfig
    main_input_name = "pixel_values"

    def __init__(self, frame_model: nn.Module):
        super().__init__()
        self.frames = PooledEncoder(frame_model)
        self.config = PerFrameConfig(frame_config=frame_model.config.to_dict(), hidden_size=self.frames.out_dim)

    @classmethod
    def _from_config(cls, config: PerFrameConfig, **kwargs: Any) -> "PerFrameEncoder":
        frame = dict(config.frame_config)
        return cls(AutoModel.from_config(AutoConfig.for_model(frame.pop("model_type"), **frame)))

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> BaseModelOutput:
        batch, frames = pixel_values.shape[:2]
        pooled = self.frames(pixel_values=pixel_values.flatten(0, 1))
        return BaseModelOutput(last_hidden_state=pooled.view(batch, frames, -1))


AutoConfig.register(PerFrameConfig.model_type, PerFrameConfig, exist_ok=True)
AutoModel.register(PerFrameConfig, PerFrameEncoder, exist_ok=True)


def build_encoder(spec: ModalitySpec) -> nn.Module:
    """`encoder: video`: a video architecture (VideoMAE unless `config.model_type` says e.g. timesformer or vivit),
    its image_size and num_frames those of the clips unless `config` sets them; `encoder: per_frame`: an image
    architecture (ViT unless `config.model_type` says e.g. resnet) over every frame. Pretrained: the checkpoint."""
    kind = spec.options["encoder"]
    if kind not in ENCODERS:
        raise ValueError(f"modalities.video.encoder: {kind!r} is not one of {list(ENCODERS)}")
    size, count = int(spec.options["image_size"]), int(spec.options["num_frames"])
    if spec.pretrained:
        model = load_pretrained(AutoModel, spec.pretrained, spec.revision, weights=True)
    elif kind == "video":
        # Any video architecture must agree with the clips' size and length, not only the default one.
        clips = spec.model_copy(update={"config": {"image_size": size, "num_frames": count, **spec.config}})
        model = config_built(clips, "videomae", num_channels=3)
    else:
        model = config_built(spec, "vit", image_size=size, num_channels=3)
    return PerFrameEncoder(model) if kind == "per_frame" else model


# --- training, baseline and validation ----------------------------------------------------------------------------


def augment(inputs: dict[str, torch.Tensor], generator: torch.Generator, strength: float, *, affine_degrees: float,
            translate: float, scale: float, noise: float, cutout: float) -> dict[str, torch.Tensor]:
    """The image transforms with one draw per clip: frames are stacked as channels, so the affine and the cutout
    hole are the same in every frame (the clip moves as a whole); the noise is drawn per pixel of every frame."""
    x = inputs["pixel_values"]
    batch, frames, channels, height, width = x.shape
    x = x.reshape(batch, frames * channels, height, width)
    x = random_affine(x, affine_degrees * strength, translate * strength, min(scale * strength, 0.9), generator)
    x = random_cutout(x, min(cutout * strength, 1.0), generator)
    x = gaussian_noise(x, noise * strength, generator)
    return {**inputs, "pixel_values": x.reshape(batch, frames, channels, height, width)}


def baseline_features(tensors: dict[str, torch.Tensor], size: int) -> np.ndarray:
    """Frames of `pixel_values` (N, T, C, H, W) average-pooled to at most `size` a side, then their mean and
    standard deviation over time (appearance and motion energy), flattened: (N, 2 x C x size x size)."""
    pixels = tensors["pixel_values"].float()
    batch, frames = pixels.shape[:2]
    pixels = pixels.flatten(0, 1)
    if max(pixels.shape[-2:]) > size:
        pixels = torch.nn.functional.adaptive_avg_pool2d(pixels, size)
    pixels = pixels.reshape(batch, frames, -1)
    stats = torch.cat([pixels.mean(dim=1), pixels.std(dim=1, unbiased=False)], dim=1)
    return stats.numpy().astype(np.float64)


def row_checks(ex: Any, options: VideoChecks) -> list[Check]:
    """Per-row bounds on the probed facts (`ex`: `great_expectations.expectations`); each failing row's message
    names its value and the allowed range."""
    o = options
    sides = [between(ex, "video", side, o.min_size, o.max_size, f"video {side} is {o.min_size}..{o.max_size} px",
                     f"video {side} is {{video_{side}}} px; allowed {o.min_size}..{o.max_size}")
             for side in ("width", "height")]
    return [*sides,
            between(ex, "video", "fps", o.min_fps, o.max_fps, f"video frame rate is {o.min_fps:g}..{o.max_fps:g} fps",
                    f"frame rate {{video_fps:.3f}} fps; allowed {o.min_fps:g}..{o.max_fps:g}"),
            between(ex, "video", "duration_s", o.min_duration_s, o.max_duration_s,
                    f"video lasts {o.min_duration_s:g}..{o.max_duration_s:g} s",
                    f"duration {{video_duration_s:.3f}} s; allowed {o.min_duration_s:g}..{o.max_duration_s:g} s"),
            between(ex, "video", "frames", o.min_frames, o.max_frames,
                    f"video has {o.min_frames}..{o.max_frames} frames",
                    f"{{video_frames}} frames; allowed {o.min_frames}..{o.max_frames}")]


def _baseline(tensors: dict[str, Any], fit_rows: np.ndarray, cfg: Any) -> np.ndarray:
    # `baseline.image_size`: the same pooled side as images; row-wise, so read a chunk of clips at a time.
    return in_row_chunks(tensors, lambda chunk: baseline_features(chunk, cfg.image_size), rows=64)


MODALITY = Modality(
    name="video", reads_file=True, probe=probe, profile_fields=PROFILE_FIELDS, checks=VideoChecks,
    row_checks=row_checks, load=load, build_processor=build_processor, process=process, store=store,
    build_encoder=build_encoder, options=OPTIONS, augment=augment, augment_knobs=VideoAugment,
    baseline_features=_baseline)
