"""`params.yaml` validation: the repo's file loads; every problem is reported at once, naming its key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from multimodal.config import MODALITIES, Ingest, Params, ParamsError, load_params

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"


@pytest.fixture
def raw_params() -> dict:
    return yaml.safe_load(PARAMS.read_text())


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repo_params_load(raw_params):
    params = load_params(PARAMS)
    assert isinstance(params, Params)
    assert params.base.seed == raw_params["base"]["seed"]
    assert params.preprocess.modalities == raw_params["preprocess"]["modalities"]
    assert set(params.preprocess.modalities) <= set(params.modalities)
    split = params.ingest.split
    assert split.train + split.val + split.test == pytest.approx(1.0)
    # `validate` is a pydantic-reserved name: it must still be read from the yaml key.
    assert params.validate_.text_max_chars == raw_params["validate"]["text_max_chars"]
    assert set(params.tune.space) == set(raw_params["tune"]["space"])
    # Processor knobs beyond pretrained/config land in `options`.
    assert params.modalities["image"].options["image_size"] == raw_params["modalities"]["image"]["image_size"]


def test_every_problem_reported_together(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    raw["base"]["sed"] = 1                                            # unknown key (typo)
    raw["ingest"]["split"] = {"train": 0.7, "val": 0.2, "test": 0.2}  # sums to 1.1
    raw["preprocess"]["modalities"] = ["image", "video"]             # unknown modality
    raw["tune"]["space"]["lr"] = {"normal": [0.0, 1.0]}               # not a search kind
    with pytest.raises(ParamsError) as info:
        load_params(write(tmp_path, raw))
    message = str(info.value)
    assert "4 problem(s)" in message
    assert "base.sed" in message
    assert "ingest.split" in message and "sum to 1" in message
    assert "preprocess.modalities" in message and "video" in message
    assert "tune.space" in message and "tune.space.lr" in message
    # One problem per line, each naming its key.
    assert len([line for line in message.splitlines() if line.startswith("  ")]) == 4


def test_split_fraction_out_of_range_is_reported(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    raw["ingest"]["split"] = {"train": 1.0, "val": 0.0, "test": 0.0}
    with pytest.raises(ParamsError, match=r"ingest\.split\.train") as info:
        load_params(write(tmp_path, raw))
    assert "ingest.split.val" in str(info.value)


def test_search_space_entry_with_two_kinds_is_rejected(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    raw["tune"]["space"]["dropout"] = {"uniform": [0, 0.1], "choice": [0.0]}
    with pytest.raises(ParamsError, match=r"tune\.space\.dropout"):
        load_params(write(tmp_path, raw))


def test_modality_without_section_is_reported(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    del raw["modalities"]["audio"]
    with pytest.raises(ParamsError, match=r"\['audio'\].*no section"):
        load_params(write(tmp_path, raw))


def test_manifest_source_needs_a_manifest(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    raw["ingest"]["source"] = "manifest"
    raw["ingest"]["manifest"] = None
    with pytest.raises(ParamsError, match="ingest.manifest names no file"):
        load_params(write(tmp_path, raw))
    raw["ingest"]["manifest"] = "data/user/manifest.csv"
    params = load_params(write(tmp_path, raw))
    assert params.ingest.manifest == Path("data/user/manifest.csv")
    with pytest.raises(ValueError, match="names no file"):
        Ingest.model_validate({**raw_params["ingest"], "source": "manifest", "manifest": None})


def test_unreadable_yaml_is_a_params_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("base: [unclosed\n")
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(path)
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "missing.yaml")


def test_known_modalities_constant():
    assert MODALITIES == ("image", "audio", "text")


def test_search_space_typo_is_reported_at_load_time(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    raw["tune"]["space"]["learning_rate"] = raw["tune"]["space"].pop("lr")
    raw["tune"]["space"]["fusion"] = {"choice": ["concat", "sum"]}
    with pytest.raises(ParamsError) as info:
        load_params(write(tmp_path, raw))
    assert "learning_rate" in str(info.value) and "sum" in str(info.value)
