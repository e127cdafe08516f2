"""The video modality on real clips written here with PyAV (mp4, webm, avi, mkv, gif): probe, header refusal,
damaged files, frame sampling, processor, encoders (VideoMAE, TimeSformer, ViViT, per-frame ResNet) with their save
and reload, augmentation, baseline features, row checks, and the demo's moving-digit clips."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from pydantic import ValidationError

from multimodal.demo.dataset import _load_mnist
from multimodal.demo.video import FPS, moving_digit_frames, other_writer_digit, video_cell, write_moving_digit_clip
from multimodal.modalities import video
from multimodal.modalities.base import PooledEncoder
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.model import Embedder, ModelSpec, MultimodalModel, encoder_entry, load_model, save_model
from tests.unit.conftest import knobs

pytestmark = pytest.mark.usefixtures("single_thread")

LOOSE = video.VideoChecks(min_size=8, max_size=4096, min_fps=1, max_fps=120, min_duration_s=0.1, max_duration_s=600,
                          min_frames=2, max_frames=100_000)
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
RESNET = {"model_type": "resnet", "num_channels": 3, "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1],
          "layer_type": "basic"}
# (container format, video encoder, pixel format, audio encoder or None): one per container the modality reads.
FORMATS = {
    "mp4": ("mp4", "libx264", "yuv420p", "aac"),
    "mp4v": ("mp4", "mpeg4", "yuv420p", None),
    "webm": ("webm", "libvpx", "yuv420p", "libopus"),
    "avi": ("avi", "mpeg4", "yuv420p", "pcm_s16le"),
    "mkv": ("matroska", "ffv1", "yuv444p", None),  # lossless; no frame count in the header
    "gif": ("gif", "gif", "rgb8", None),
}
SUFFIX = {"mp4v": ".mp4", "mkv": ".mkv"}


def numbered_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Grey frames whose level encodes their index (10 x i), so a decoded frame tells which one it is."""
    return np.repeat(np.arange(count, dtype=np.uint8)[:, None, None, None] * 10, height * width * 3).reshape(
        count, height, width, 3)


def write_clip(path: Path, kind: str, frames: np.ndarray, fps: int, audio: bool = False) -> Path:
    fmt, codec, pix_fmt, audio_codec = FORMATS[kind]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        sound = container.add_stream(audio_codec, rate=48000) if audio else None
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
        if sound is not None:
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
            samples.sample_rate = 48000
            container.mux(sound.encode(samples))
            container.mux(sound.encode())
    return path


def clip(tmp_path: Path, kind: str, count: int = 16, fps: int = 10, audio: bool = False) -> Path:
    return write_clip(tmp_path / f"clip{SUFFIX.get(kind, '.' + kind)}", kind, numbered_frames(count), fps, audio)


def spec(encoder: str, config: dict, size: int = 16, frames: int = 4) -> ModalitySpec:
    return ModalitySpec(pretrained=None, config=config, image_size=size, num_frames=frames, encoder=encoder)


# --- probe ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_probe_reports_what_was_written(tmp_path, kind):
    audio = FORMATS[kind][3] is not None
    facts = video.probe(clip(tmp_path, kind, count=16, fps=10, audio=audio), LOOSE)
    assert facts["width"] == 64 and facts["height"] == 48
    assert facts["frames"] == 16
    assert facts["fps"] == pytest.approx(10.0)
    assert facts["duration_s"] == pytest.approx(1.6, abs=0.03)  # audio priming may lengthen a track a little
    assert facts["has_audio"] is audio
    assert set(facts) == set(video.PROFILE_FIELDS)


def test_header_refusal_comes_before_decoding(tmp_path):
    """An AVI with a valid header and garbage where the frames should be: decoding fails, so a message about the
    header's size, frame count or duration proves nothing was decoded."""
    data = bytearray(clip(tmp_path, "avi", count=16, fps=8).read_bytes())
    payload = data.index(b"movi") + 12  # past the first frame chunk's id and size
    data[payload:-200] = np.random.default_rng(0).integers(0, 256, len(data) - 200 - payload, np.uint8).tobytes()
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="garbage.avi: FFmpeg cannot read it"):
        video.probe(garbage, LOOSE)
    for bound, message in [({"max_size": 32}, r"64x48 px exceeds max_size 32"),
                           ({"max_frames": 10}, r"16 frames exceed max_frames 10"),
                           ({"max_duration_s": 1.5}, r"duration 2.000 s exceeds max_duration_s 1.5")]:
        tight = LOOSE.model_copy(update={**bound, "min_frames": 1})
        with pytest.raises(ValueError, match=f"garbage.avi: header refused before decoding: {message}"):
            video.probe(garbage, tight)


@pytest.mark.parametrize("kind", ["avi", "webm", "mkv", "gif", "mp4"])
def test_a_truncated_clip_raises(tmp_path, kind):
    whole = clip(tmp_path, kind)
    cut = tmp_path / f"cut{whole.suffix}"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.8)])
    with pytest.raises(ValueError, match="cut"):
        video.probe(cut, LOOSE)


def test_what_is_no_video_raises(tmp_path):
    wav = tmp_path / "speech.mp4"
    sf.write(tmp_path / "speech.wav", np.zeros(8000, np.float32), 16000)
    os.replace(tmp_path / "speech.wav", wav)
    with pytest.raises(ValueError, match=r"speech.mp4: no video stream \(streams: audio; format wav\)"):
        video.probe(wav, LOOSE)
    noise = tmp_path / "noise.webm"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    with pytest.raises(ValueError, match="noise.webm: FFmpeg cannot read it"):
        video.probe(noise, LOOSE)


def test_video_checks_have_no_defaults_and_refuse_inverted_ranges():
    with pytest.raises(ValidationError):
        video.VideoChecks()
    with pytest.raises(ValidationError, match=r"min_fps \(30.0\) exceeds max_fps \(10.0\)"):
        video.VideoChecks(**{**LOOSE.model_dump(), "min_fps": 30, "max_fps": 10})


def test_row_checks_bound_each_fact_and_name_value_and_range():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    checks = {c.name: c for c in video.row_checks(gx.expectations, LOOSE)}
    assert sorted(checks) == ["video_duration_s", "video_fps", "video_frames", "video_height", "video_width"]
    fps = checks["video_fps"].expectation
    assert (fps.column, fps.min_value, fps.max_value) == ("video_fps", 1, 120)
    row = {"video_width": 4, "video_height": 48, "video_fps": 200.0, "video_duration_s": 0.05, "video_frames": 1}
    reasons = {name: c.reason(0, row, None) for name, c in checks.items()}
    assert reasons["video_width"] == ("video", "video width is 4 px; allowed 8..4096")
    assert reasons["video_fps"] == ("video", "frame rate 200.000 fps; allowed 1..120")
    assert reasons["video_duration_s"] == ("video", "duration 0.050 s; allowed 0.1..600 s")
    assert reasons["video_frames"] == ("video", "1 frames; allowed 2..100000")


# --- frame sampling -------------------------------------------------------------------------------------------------


def test_frame_indices_take_the_middle_of_equal_segments():
    assert video.frame_indices(16, 4).tolist() == [2, 6, 10, 14]
    assert video.frame_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert video.frame_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]  # short clips repeat frames
    for total, count in [(7, 3), (100, 16), (1, 4)]:
        picked = video.frame_indices(total, count)
        assert len(picked) == count and picked.min() >= 0 and picked.max() < total and (np.diff(picked) >= 0).all()


@pytest.mark.parametrize("kind", ["mkv", "avi"])  # mkv: the count comes from its packets; avi: from the header
def test_load_returns_the_uniformly_sampled_rgb_frames(tmp_path, kind):
    path = clip(tmp_path, kind, count=16)
    frames = video.load(path.name, tmp_path, spec("video", {}, frames=4), None)
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == np.uint8
    levels = np.round(frames.reshape(4, -1).mean(axis=1) / 10).astype(int).tolist()
    assert levels == [2, 6, 10, 14]
    repeated = video.load(path.name, tmp_path, spec("video", {}, frames=32), None)
    assert np.round(repeated.reshape(32, -1).mean(axis=1) / 10).astype(int).tolist() == [i // 2 for i in range(32)]


def test_load_samples_the_frames_that_exist_when_the_header_overstates(tmp_path):
    whole = clip(tmp_path, "mkv", count=16)  # lossless, so each level tells its frame
    avi = write_clip(tmp_path / "c.avi", "avi", video.read_frames(whole, 16), 10)
    data = avi.read_bytes()
    payload = data.index(b"movi")
    cut = tmp_path / "cut.avi"  # its header still promises 16 frames
    cut.write_bytes(data[: payload + int((len(data) - payload) * 0.6)])
    with av.open(str(cut)) as container:
        decodable = sum(1 for _ in container.decode(video=0))
    assert 0 < decodable < 16
    frames = video.read_frames(cut, 4)
    expected = video.frame_indices(decodable, 4).tolist()
    assert np.round(frames.reshape(4, -1).mean(axis=1) / 10).astype(int).tolist() == pytest.approx(expected, abs=1)


# --- processor and encoders -----------------------------------------------------------------------------------------


def test_processor_gives_batch_time_channel_height_width_deterministically(tmp_path):
    s = spec("video", {}, size=32, frames=4)
    processor = video.build_processor(s)
    clips = [video.load(clip(tmp_path, kind).name, tmp_path, s, processor) for kind in ("gif", "avi")]
    first = video.process(processor, clips, s)
    assert list(first) == ["pixel_values"]
    assert first["pixel_values"].shape == (2, 4, 3, 32, 32) and first["pixel_values"].dtype == torch.float32
    assert first["pixel_values"].min() >= -1 and first["pixel_values"].max() <= 1  # mean/std 0.5
    assert torch.equal(first["pixel_values"], video.process(processor, clips, s)["pixel_values"])
    with pytest.raises(ValueError, match=r"video clips \[1\] do not hold num_frames=4 frames"):
        video.process(processor, [clips[0], clips[1][:3]], s)


ENCODERS = {
    "videomae": ("video", {**TINY, "patch_size": 8, "tubelet_size": 2}, "VideoMAEModel", 16),
    "timesformer": ("video", {**TINY, "model_type": "timesformer", "patch_size": 8}, "TimesformerModel", 16),
    "vivit": ("video", {**TINY, "model_type": "vivit", "tubelet_size": [2, 8, 8]}, "VivitModel", 16),
    "per_frame_resnet": ("per_frame", RESNET, "PerFrameEncoder", 16),
    "per_frame_vit": ("per_frame", {**TINY, "patch_size": 8}, "PerFrameEncoder", 16),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_runs_inside_pooled_encoder_and_trains(name):
    kind, config, architecture, width = ENCODERS[name]
    torch.manual_seed(0)
    encoder = PooledEncoder(video.build_encoder(spec(kind, config)))
    assert type(encoder.model).__name__ == architecture and encoder.out_dim == width
    pooled = encoder(pixel_values=torch.randn(2, 4, 3, 16, 16))
    assert pooled.shape == (2, width) and torch.isfinite(pooled).all()
    pooled.pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_per_frame_encoder_pools_each_frame_then_time():
    torch.manual_seed(0)
    encoder = PooledEncoder(video.build_encoder(spec("per_frame", RESNET))).eval()
    clips = torch.randn(2, 4, 3, 16, 16)
    with torch.no_grad():
        per_frame = encoder.model(pixel_values=clips).last_hidden_state
        alone = torch.stack([encoder.model.frames(pixel_values=clips[:, t]) for t in range(4)], dim=1)
        assert per_frame.shape == (2, 4, 16) and torch.allclose(per_frame, alone, atol=1e-6)
        assert torch.allclose(encoder(pixel_values=clips), alone.mean(dim=1), atol=1e-6)


def test_a_video_architecture_gets_the_clip_size_and_length_unless_config_sets_them():
    config = video.build_encoder(spec("video", {**TINY, "model_type": "timesformer", "patch_size": 8})).config
    assert (config.image_size, config.num_frames) == (16, 4)
    config = video.build_encoder(spec("video", {**TINY, "patch_size": 8, "num_frames": 8})).config
    assert (config.model_type, config.image_size, config.num_frames) == ("videomae", 16, 8)
    with pytest.raises(ValueError, match=r"modalities.video.encoder: 'frames' is not one of \['video', 'per_frame'\]"):
        video.build_encoder(spec("frames", {}))


@pytest.mark.parametrize("name", ["videomae", "per_frame_resnet"])
def test_saved_model_reloads_to_identical_outputs(tmp_path, name):
    kind, config, architecture, _ = ENCODERS[name]
    torch.manual_seed(0)
    encoders = {"video": PooledEncoder(video.build_encoder(spec(kind, config)))}
    model = MultimodalModel(Embedder(encoders, 8), "concat", n_classes=3, dropout=0.0, fusion_knobs=knobs("concat"))
    with torch.no_grad():  # a freshly initialised model must not match by chance
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model_spec = ModelSpec(["video"], {"video": encoder_entry(encoders["video"])}, ["a", "b", "c"], dim=8,
                           fusion="concat", dropout=0.0, fusion_knobs=knobs("concat"), input_norm={})
    save_model(model, model_spec, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    assert type(loaded.embedder.encoders["video"].model).__name__ == architecture
    inputs = {"video": {"pixel_values": torch.randn(3, 4, 3, 16, 16)}}
    masks = {"video": torch.ones(3, dtype=torch.bool)}
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(inputs, masks), loaded(inputs, masks))


@pytest.mark.parametrize("kind", ["video", "per_frame"])
def test_pretrained_checkpoint_from_a_local_folder(tmp_path, kind):
    """A saved checkpoint (weights + its processor) loads through `load_pretrained`; per_frame wraps an image model."""
    config = {**TINY, "patch_size": 8, "tubelet_size": 2} if kind == "video" else RESNET
    torch.manual_seed(0)
    original = video.build_encoder(spec("video" if kind == "video" else "per_frame", config))
    model = original if kind == "video" else original.frames.model
    model.save_pretrained(tmp_path / "ckpt")
    video.build_processor(spec(kind, {}, size=16)).save_pretrained(tmp_path / "ckpt")
    pretrained = ModalitySpec(pretrained=str(tmp_path / "ckpt"), config={}, image_size=16, num_frames=4,
                              encoder=kind)
    encoder = PooledEncoder(video.build_encoder(pretrained)).eval()
    clips = [video.load(clip(tmp_path, "gif").name, tmp_path, pretrained, None)] * 2
    pixels = video.process(video.build_processor(pretrained), clips, pretrained)["pixel_values"]
    assert pixels.shape == (2, 4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(encoder(pixel_values=pixels), PooledEncoder(original).eval()(pixel_values=pixels))


# --- augmentation and baseline --------------------------------------------------------------------------------------


def test_augment_draws_one_transform_per_clip_for_all_its_frames():
    still = torch.randn(3, 1, 3, 16, 16).expand(3, 4, 3, 16, 16).contiguous()  # every frame the same picture
    knobs_ = video.VideoAugment(affine_degrees=30, translate=0.2, scale=0.2, noise=0.0, cutout=0.4).model_dump()
    out = video.augment({"pixel_values": still}, torch.Generator().manual_seed(0), 1.0, **knobs_)["pixel_values"]
    assert out.shape == still.shape and not torch.equal(out, still)
    assert torch.allclose(out, out[:, :1].expand_as(out))  # the frames of a clip moved alike
    again = video.augment({"pixel_values": still}, torch.Generator().manual_seed(0), 1.0, **knobs_)["pixel_values"]
    assert torch.equal(out, again)
    noisy = video.augment({"pixel_values": still}, torch.Generator().manual_seed(0), 1.0,
                          **{**knobs_, "noise": 0.5})["pixel_values"]
    assert not torch.allclose(noisy[:, 0], noisy[:, 1])  # noise is drawn per frame
    with pytest.raises(ValidationError):
        video.VideoAugment(affine_degrees=30)


def test_baseline_features_pool_frames_then_take_mean_and_std_over_time():
    pixels = torch.arange(2 * 4 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 4, 3, 8, 8)
    features = video.baseline_features({"pixel_values": pixels}, size=2)
    assert features.shape == (2, 2 * 3 * 2 * 2) and features.dtype == np.float64
    pooled = torch.nn.functional.adaptive_avg_pool2d(pixels.flatten(0, 1), 2).reshape(2, 4, -1)
    assert np.allclose(features[:, :12], pooled.mean(dim=1).numpy())
    assert np.allclose(features[:, 12:], pooled.std(dim=1, unbiased=False).numpy())


# --- demo clips ----------------------------------------------------------------------------------------------------

DEMO = {"frames": 16, "size": 64, "noise": 0.2, "blur": 1.0, "occluder": 20}


def test_demo_clip_is_byte_for_byte_deterministic_and_a_valid_gif(tmp_path):
    pixels, labels = _load_mnist()
    digit = other_writer_digit(pixels, labels, 0, np.random.default_rng(0))
    paths = [tmp_path / f"{name}.gif" for name in ("a", "b", "c")]
    for path, seed in zip(paths, (7, 7, 8)):
        write_moving_digit_clip(path, digit, np.random.default_rng(seed), **DEMO)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    facts = video.probe(paths[0], LOOSE)
    assert (facts["width"], facts["height"], facts["frames"], facts["fps"]) == (64, 64, 16, FPS)
    assert facts["duration_s"] == pytest.approx(16 / FPS)
    # Lossless: the file holds exactly the frames that were drawn.
    drawn = moving_digit_frames(digit, np.random.default_rng(7), **DEMO)
    assert np.array_equal(video.read_frames(paths[0], 16)[..., 0], drawn)
    assert video_cell("s00001") == "video/s00001.gif"


def test_demo_digit_is_another_image_of_the_same_class_and_moves():
    pixels, labels = _load_mnist()
    rng = np.random.default_rng(0)
    for index in (0, 1, 2):
        digit = other_writer_digit(pixels, labels, index, rng)
        same = np.flatnonzero(labels == labels[index])
        sources = [i for i in same if np.array_equal(np.round(pixels[i].reshape(28, 28) * 255), digit)]
        assert sources and index not in sources
    digit = other_writer_digit(pixels, labels, 0, rng)
    frames = moving_digit_frames(digit, rng, **{**DEMO, "noise": 0.0, "occluder": 0}).astype(float)
    centres = [np.argwhere(f > 64).mean(axis=0) for f in frames]
    assert np.linalg.norm(centres[-1] - centres[0]) > 2  # it travels
    assert all((f > 64).any() for f in frames)  # and stays on the canvas
