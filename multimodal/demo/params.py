"""The `demo` params section: the embedded dataset."""

from __future__ import annotations

from pydantic import Field

from multimodal.pipeline.params import Schema, Strict


class DemoClip(Strict):
    """The demo's moving-digit clips (multimodal.demo.video.write_moving_digit_clip)."""

    frames: int = Field(ge=2)
    size: int = Field(ge=28)  # px, square; at least a whole 28 px digit
    noise: float = Field(ge=0)  # std of pixel noise per frame (0-1 scale)
    blur: float = Field(ge=0)  # Gaussian blur of the digit, px
    occluder: int = Field(ge=0)  # side of the still grey square the digit passes behind, px


class Demo(Strict):
    """The embedded demo dataset (stage `demo`, multimodal.demo.dataset)."""

    n_samples: int = Field(ge=30)
    image_components: int = Field(ge=1, le=784)
    image_noise: float = Field(ge=0)
    audio_snr_db: tuple[float, float]
    missing_rate: float = Field(ge=0, lt=0.34)
    sample_rate: int
    speakers: int = Field(ge=3)  # synthetic speakers, the demo's groups (multimodal.demo.speakers)
    modalities: list[str] = Field(min_length=1)  # which of the demo's modalities to write (checked by demo_dataset)
    clip: DemoClip  # the opt-in moving-digit clips (multimodal.demo.video)


DEMO = Schema({"demo": Demo})
