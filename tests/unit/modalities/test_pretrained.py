"""Pretrained checkpoints: one loading function, safetensors only, hub ids explicit and pinned, offline by default.

Hub loads are exercised without a network: a Hugging Face cache laid out in a temporary folder holds two
snapshots of `org/tiny`, and the hub stays offline, so a pinned `revision` must pick its snapshot from the cache.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import BertConfig, BertModel

from multimodal.modalities import get_modality, load_pretrained
from multimodal.modalities.spec import ModalitySpec
from multimodal.pipeline.runtime import go_offline, go_offline_for

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[3]
TINY = {"vocab_size": 64, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16, "max_position_embeddings": 16}


def tiny_bert(folder: Path, *, safetensors: bool = True, hidden_size: int = 8) -> Path:
    torch.manual_seed(0)
    model = BertModel(BertConfig(**{**TINY, "hidden_size": hidden_size}))
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    if safetensors:
        model.save_pretrained(folder)
    else:  # what an old or untrusted checkpoint looks like: pickled weights only
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def text_spec(pretrained: str, revision: str | None = None) -> ModalitySpec:
    return ModalitySpec(pretrained=pretrained, revision=revision, config={}, max_length=8, tokenizer="minilm")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> dict[str, str]:
    """A local hub cache with two snapshots of `org/tiny` (hidden sizes 8 and 12); the hub offline."""
    cache = tmp_path / "hub"
    snapshots = {"a" * 40: 8, "b" * 40: 12}
    for commit, width in snapshots.items():
        tiny_bert(cache / "models--org--tiny" / "snapshots" / commit, hidden_size=width)
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("b" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return {commit: str(width) for commit, width in snapshots.items()}


def test_hub_load_is_pinned_to_its_revision(offline_hub):
    for commit, width in offline_hub.items():
        encoder = get_modality("text").build_encoder(text_spec("hub:org/tiny", revision=commit))
        assert encoder.config.hidden_size == int(width)
    with pytest.raises(ValueError, match="revision"):
        get_modality("text").build_encoder(text_spec("hub:org/tiny"))


def test_a_name_without_hub_prefix_is_never_a_hub_id(offline_hub):
    """`org/tiny` is in the hub cache, yet without `hub:` it must be a local folder, and there is none."""
    with pytest.raises(ValueError, match="neither an existing local folder"):
        get_modality("text").build_encoder(text_spec("org/tiny"))


def test_weights_load_from_safetensors_only(tmp_path):
    good = tiny_bert(tmp_path / "good")
    assert get_modality("text").build_encoder(text_spec(str(good))).config.hidden_size == 8
    pickled = tiny_bert(tmp_path / "pickled", safetensors=False)
    with pytest.raises(OSError, match="safetensors"):
        get_modality("text").build_encoder(text_spec(str(pickled)))


def test_local_folders_and_minilm_take_no_revision(tmp_path):
    with pytest.raises(ValueError, match="only allowed beside a hub id"):
        load_pretrained(BertModel, str(tiny_bert(tmp_path / "m")), "main", weights=True)


def test_every_from_pretrained_call_goes_through_load_pretrained():
    """So the revision and safetensors rules cannot be forgotten in one place."""
    callers = []
    for path in sorted((REPO / "multimodal").rglob("*.py")):
        tree = ast.parse(path.read_text())
        functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for function in functions:
            for node in ast.walk(function):
                if isinstance(node, ast.Attribute) and node.attr == "from_pretrained":
                    callers.append(f"{path.relative_to(REPO)}::{function.name}")
    assert sorted(set(callers)) == ["multimodal/modalities/base.py::load_pretrained"]


@pytest.fixture
def hub_switches(monkeypatch):
    """The user's shell says online; every switch go_offline touches is restored after the test."""
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(key, "0")
    for key in ("HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK", "DVC_NO_ANALYTICS", "RAY_USAGE_STATS_ENABLED",
                "PREFECT_SERVER_ANALYTICS_ENABLED", "TOKENIZERS_PARALLELISM"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_an_inherited_online_switch_does_not_turn_the_default_run_online(hub_switches):
    go_offline()
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert huggingface_hub.constants.is_offline_mode()  # huggingface_hub was imported before: switched too
    assert os.environ["DO_NOT_TRACK"] == "1"


def test_only_a_hub_id_turns_the_hub_on(hub_switches):
    go_offline_for({"text": text_spec("minilm"), "image": text_spec("org/model")})  # no `hub:`: a folder name
    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.is_offline_mode()
    go_offline_for({"text": text_spec("hub:org/model", revision="a" * 40)})
    assert os.environ["HF_HUB_OFFLINE"] == "0" and not huggingface_hub.constants.is_offline_mode()

