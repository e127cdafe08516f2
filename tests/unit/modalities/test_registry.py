"""The modality registry and the bounds a modality's probe reads before decoding."""

from __future__ import annotations

import copy
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from multimodal.data.profile import profile_cell
from multimodal.modalities import get_modality, register_module, registry
from multimodal.pipeline.params import ParamsError
from stages.check_params import load_all
from tests.unit.conftest import params_section

REPO = Path(__file__).resolve().parents[3]
TOY = "tests.integration.test_toy_modality"


def test_every_module_in_the_package_is_a_registered_modality() -> None:
    modules = {p.stem for p in (REPO / "multimodal/modalities").glob("*.py") if "\nMODALITY = " in p.read_text()}
    assert set(registry()) >= modules == {"image", "audio", "text", "video"}


def test_register_module_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="cannot import module 'no.such.module'"):
        register_module("toy", "no.such.module")
    with pytest.raises(ValueError, match="defines no MODALITY"):
        register_module("toy", "multimodal.modalities.checks")
    with pytest.raises(ValueError, match="defines modality 'toy', not 'other'"):
        register_module("other", TOY)
    with pytest.raises(ValueError, match="defines modality 'text', not 'image'"):
        register_module("image", "multimodal.modalities.text")


def test_params_register_a_modality_module_and_check_its_sections(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["modalities"]["toy"] = {"pretrained": None, "config": {}, "module": TOY, "n_values": 4, "hidden": 8}
    raw["validate"]["modalities"]["toy"] = {"n_valuez": 4}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"validate.modalities.toy.n_valuez: unknown key; did you mean n_values\?"):
        load_all(tmp_path / "params.yaml")
    raw["validate"]["modalities"]["toy"] = {"n_values": 4}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert load_all(tmp_path / "params.yaml").validate.modalities["toy"].n_values == 4
    assert get_modality("toy").reads_file is False

    bad = copy.deepcopy(raw)
    bad["modalities"]["toy"]["module"] = "tests.no_such_plugin"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ParamsError, match=r"modalities.toy.module: cannot import module 'tests.no_such_plugin'"):
        load_all(tmp_path / "params.yaml")


def test_sections_for_an_unknown_modality_are_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["validate"]["modalities"]["imgae"] = raw["validate"]["modalities"].pop("image")
    raw["tune"]["fixed"]["input_norm"]["audoi"] = "none"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as info:
        load_all(tmp_path / "params.yaml")
    assert "validate.modalities.imgae: no such modality here; did you mean image?" in str(info.value)
    assert "tune.fixed.input_norm.audoi: unknown modality; did you mean audio?" in str(info.value)


# --------------------------------------------------------------------------------------------- bounds before decoding


def png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header (IHDR, CRC fixed) claims `width` x `height`: what a decompression bomb shows."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


def test_an_image_beyond_max_pixels_is_refused_from_its_header(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(png_claiming(12000, 12000))  # 144 Mpx: under Pillow's own bomb limit
    options = params_section("validate", modalities={"image": {"max_pixels": 10_000_000}})
    out = profile_cell(get_modality("image"), "big.png", tmp_path, options)
    assert out["image_decodes"] is False and out["image_width"] is None
    assert "12000x12000 = 144000000 pixels; allowed 10000000" in out["image_error"] and "not decoded" in out["image_error"]


def test_a_file_over_max_file_mb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"\0" * 300_000)
    options = params_section("validate", max_file_mb=0.25)
    out = profile_cell(get_modality("audio"), "a.wav", tmp_path, options)
    assert out["audio_exists"] and not out["audio_decodes"] and out["audio_sha256"] is None
    assert out["audio_error"] == "file is 0.3 MB; allowed 0.25 MB (validate.max_file_mb)"


def test_an_audio_clip_far_beyond_max_duration_is_refused_from_its_header(tmp_path: Path) -> None:
    import soundfile as sf

    sf.write(tmp_path / "long.wav", np.zeros(8000 * 130, np.int16), 8000, subtype="PCM_16")  # 130 s, 2 MB
    out = profile_cell(get_modality("audio"), "long.wav", tmp_path, params_section("validate"))
    assert not out["audio_decodes"] and out["audio_duration_s"] is None
    assert "(130.0 s), over twice the allowed 60 s" in out["audio_error"] and "not decoded" in out["audio_error"]


def test_a_manifest_column_without_its_checks_section_is_named() -> None:
    from multimodal.data.profile import profile_samples

    frame = pd.DataFrame({"sample_id": ["a"], "label": ["x"], "video": ["v.gif"]})
    options = params_section("validate")
    trimmed = options.model_copy(update={"modalities": {k: v for k, v in options.modalities.items() if k != "video"}})
    with pytest.raises(ValueError, match=r"add validate.modalities.video"):
        profile_samples(frame, Path("."), trimmed)


def test_a_modality_whose_package_is_missing_is_unavailable_not_fatal() -> None:
    """Without PyAV the other modalities and the repo's params still load; asking for video names the package."""
    import subprocess
    import sys

    code = """
import builtins
real = builtins.__import__
def without_av(name, *args, **kwargs):
    if name == "av" or name.startswith("av."):
        raise ModuleNotFoundError("No module named 'av'", name="av")
    return real(name, *args, **kwargs)
builtins.__import__ = without_av
from stages.check_params import load_all
from multimodal.modalities import get_modality, names
load_all()
print(sorted(names()))
try:
    get_modality("video")
except KeyError as err:
    print(err)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "['audio', 'image', 'text']"
    assert "modality 'video' needs the package 'av', which is not installed" in out
