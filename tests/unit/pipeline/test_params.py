"""`params.yaml` validation: the repo's file loads; every problem is reported at once, naming its key; no knob has a
second source of defaults; typos are refused with the closest valid name."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from multimodal.modalities import registry
from multimodal.modalities.spec import ModalitySpec
from multimodal.models.model import ModelSpec
from multimodal.pipeline.params import ParamsError
from multimodal.pipeline.stage_params import Section
from multimodal.training.align import AlignConfig
from multimodal.training.train import TrainConfig
from stages.check_params import ALL, load_all

REPO = Path(__file__).resolve().parents[3]
PARAMS = REPO / "params.yaml"


@pytest.fixture
def raw_params() -> dict:
    return yaml.safe_load(PARAMS.read_text())


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repo_params_load(raw_params):
    params = load_all(PARAMS)
    assert isinstance(params, Section)
    assert params.base.seed == raw_params["base"]["seed"]
    assert params.preprocess.modalities == raw_params["preprocess"]["modalities"]
    assert set(params.preprocess.modalities) <= set(params.modalities)
    split = params.ingest.split
    assert split.train + split.val + split.test == pytest.approx(1.0)
    # `validate` is a pydantic-reserved name: it must still be read from the yaml key.
    assert params.validate.modalities["text"].max_chars == raw_params["validate"]["modalities"]["text"]["max_chars"]
    assert set(params.tune.space) == set(raw_params["tune"]["space"])
    # Processor knobs beyond pretrained/config land in `options`.
    assert params.modalities["image"].options["image_size"] == raw_params["modalities"]["image"]["image_size"]


def test_every_problem_reported_together(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    raw["base"]["sed"] = 1                                            # unknown key (typo)
    raw["ingest"]["split"] = {"train": 0.7, "val": 0.2, "test": 0.2}  # sums to 1.1
    raw["preprocess"]["modalities"] = ["image", "smell"]             # unknown modality
    raw["tune"]["space"]["lr"] = {"normal": [0.0, 1.0]}               # not a search kind
    with pytest.raises(ParamsError) as info:
        load_all(write(tmp_path, raw))
    message = str(info.value)
    assert "4 problem(s)" in message
    assert "base.sed" in message
    assert "ingest.split" in message and "sum to 1" in message
    assert "preprocess.modalities" in message and "smell" in message
    assert "tune.space" in message and "tune.space.lr" in message
    # One problem per line, each naming its key.
    assert len([line for line in message.splitlines() if line.startswith("  ")]) == 4


def test_split_fraction_out_of_range_is_reported(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    raw["ingest"]["split"] = {"train": 1.0, "val": 0.0, "test": 0.0}
    with pytest.raises(ParamsError, match=r"ingest\.split\.train") as info:
        load_all(write(tmp_path, raw))
    assert "ingest.split.val" in str(info.value)


def test_search_space_entry_with_two_kinds_is_rejected(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    raw["tune"]["space"]["dropout"] = {"uniform": [0, 0.1], "choice": [0.0]}
    with pytest.raises(ParamsError, match=r"tune\.space\.dropout"):
        load_all(write(tmp_path, raw))


def test_modality_without_section_is_reported(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    del raw["modalities"]["audio"]
    with pytest.raises(ParamsError, match=r"\['audio'\].*no section"):
        load_all(write(tmp_path, raw))


def test_ingest_names_a_dataset_folder_and_its_manifest(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    raw["ingest"]["dataset"] = "/data/user"
    raw["ingest"]["manifest"] = None
    with pytest.raises(ParamsError, match="ingest.manifest"):
        load_all(write(tmp_path, raw))
    raw["ingest"]["manifest"] = "manifest.parquet"
    params = load_all(write(tmp_path, raw))
    assert (params.ingest.dataset, params.ingest.manifest) == (Path("/data/user"), "manifest.parquet")


def test_unreadable_yaml_is_a_params_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("base: [unclosed\n")
    with pytest.raises(ParamsError, match="cannot read"):
        load_all(path)
    with pytest.raises(ParamsError, match="cannot read"):
        load_all(tmp_path / "missing.yaml")


def test_registry_finds_every_modality_module():
    """Every module of multimodal/modalities defining MODALITY is registered, under its own name."""
    assert {"image", "audio", "text"} <= set(registry())
    assert all(name == modality.name for name, modality in registry().items())


def test_search_space_typo_is_reported_at_load_time(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    raw["tune"]["space"]["learning_rate"] = raw["tune"]["space"].pop("lr")
    raw["tune"]["space"]["fusion"] = {"choice": ["concat", "sum"]}
    with pytest.raises(ParamsError) as info:
        load_all(write(tmp_path, raw))
    assert "learning_rate" in str(info.value) and "sum" in str(info.value)


# --- one source of truth ------------------------------------------------------------------------------------------

# The one optional key: `revision` exists exactly beside a `hub:` id (validated in multimodal.modalities.params).
OPTIONAL = {(ModalitySpec, "revision"), (ModalitySpec, "module"), (ModelSpec, "extra")}


def models_under(model: type[BaseModel]) -> set[type[BaseModel]]:
    """`model` and every pydantic model its fields hold (directly, or as dict values)."""
    found = {model}
    for field in model.model_fields.values():
        for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel) and candidate not in found:
                found |= models_under(candidate)
    return found


def test_no_config_field_or_run_config_has_a_default():
    """params.yaml is the only source of a knob's value: a default anywhere else could disagree with it."""
    # The sections keyed by modality are checked by models the modality modules declare.
    declared = {model for m in registry().values() for model in (m.checks, m.augment_knobs) if model is not None}
    sections = [t for t in ALL.types.values() if isinstance(t, type) and issubclass(t, BaseModel)] + [ModalitySpec]
    walked = set().union(*map(models_under, sections), *map(models_under, declared))
    defaulted = [f"{m.__name__}.{n}" for m in walked for n, f in m.model_fields.items()
                 if not f.is_required() and (m, n) not in OPTIONAL]
    defaulted += [f"{cls.__name__}.{f.name}" for cls in (TrainConfig, AlignConfig, ModelSpec)
                  for f in dataclasses.fields(cls) if (cls, f.name) not in OPTIONAL
                  and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)]
    assert ModalitySpec in walked and len(declared) >= 5 and len(walked) > 15  # the walk reaches every section
    assert defaulted == []


@pytest.mark.parametrize("key", [("tune", "asha", "grace_period"), ("tune", "fixed", "patience"),
                                 ("align", "weight_decay"), ("modalities", "text", "config"),
                                 ("modalities", "audio", "num_mel_bins"), ("demo", "sample_rate")])
def test_a_missing_key_is_an_error_naming_it(tmp_path, raw_params, key):
    raw = copy.deepcopy(raw_params)
    section = raw
    for part in key[:-1]:
        section = section[part]
    del section[key[-1]]
    with pytest.raises(ParamsError, match=rf"{'[.]'.join(key)}: Field required"):
        load_all(write(tmp_path, raw))


def test_fusion_and_align_knobs_live_in_params(raw_params):
    fixed = raw_params["tune"]["fixed"]
    assert {"attention_heads", "attention_layers", "tensor_rank"} <= set(fixed)
    assert "weight_decay" in raw_params["align"]


# --- typos --------------------------------------------------------------------------------------------------------

def test_unknown_modality_key_is_refused_with_the_closest_names(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    raw["modalities"]["image"]["image_szie"] = raw["modalities"]["image"].pop("image_size")
    raw["modalities"]["audio"]["pretrianed"] = None
    raw["modalities"]["imgae"] = {"pretrained": None, "config": {}}
    with pytest.raises(ParamsError) as info:
        load_all(write(tmp_path, raw))
    message = str(info.value)
    assert "modalities.image.image_szie: unknown key; did you mean image_size?" in message
    assert "modalities.image.image_size: Field required" in message
    assert "modalities.audio.pretrianed: unknown key; did you mean pretrained?" in message
    assert "modalities.imgae: unknown modality; did you mean image?" in message


def test_each_modality_declares_its_option_keys(raw_params):
    """The modality module is the home of its keys: params.yaml sets exactly what each one declares."""
    for name in raw_params["modalities"]:
        modality = registry()[name]
        assert modality.options, name
        assert set(raw_params["modalities"][name]) - {"pretrained", "revision", "config"} == set(modality.options)
        assert set(modality.checkpoints) <= set(modality.options)


@pytest.mark.parametrize("where,typo,meant", [
    (("base",), "sed", "seed"), (("tune", "asha"), "grace_perod", "grace_period"),
    (("validate", "modalities", "image"), "max_sise", "max_size"), ((), "evalute", "evaluate"),
    (("tune", "fixed", "augment", "audio"), "time_mask_", "time_mask"),
])
def test_unknown_key_anywhere_suggests_the_closest_name(tmp_path, raw_params, where, typo, meant):
    raw = copy.deepcopy(raw_params)
    section = raw
    for part in where:
        section = section[part]
    section[typo] = 1
    with pytest.raises(ParamsError, match=rf"{'[.]'.join((*where, typo))}: unknown key; did you mean {meant}\b"):
        load_all(write(tmp_path, raw))


# --- selection metric ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric,mode,error", [
    ("val_loss", "max", "val_loss is better lower, so tune.mode must be 'min'"),
    ("val_accuracy", "min", "val_accuracy is better higher, so tune.mode must be 'max'"),
    ("train_loss", "min", "tune.metric: Input should be 'val_accuracy' or 'val_loss'"),
    ("val_loss", "min", None),
])
def test_metric_and_mode_must_agree_and_select_on_validation(tmp_path, raw_params, metric, mode, error):
    raw = copy.deepcopy(raw_params)
    raw["tune"].update(metric=metric, mode=mode)
    if error is None:
        assert load_all(write(tmp_path, raw)).tune.metric == metric
    else:
        with pytest.raises(ParamsError, match=error):
            load_all(write(tmp_path, raw))


# --- pretrained names ---------------------------------------------------------------------------------------------

def with_text(raw_params, **section) -> dict:
    raw = copy.deepcopy(raw_params)
    raw["modalities"]["text"].update(section)
    return raw


def test_a_pretrained_name_that_is_no_folder_is_refused_not_downloaded(tmp_path, raw_params):
    raw = with_text(raw_params, pretrained="models/minilm-finetuned")  # a mistyped local path
    with pytest.raises(ParamsError, match=r"modalities\.text\.pretrained: 'models/minilm-finetuned' is neither an "
                                          r"existing local folder .* hub:org/name"):
        load_all(write(tmp_path, raw))


def test_a_local_folder_is_found_beside_params_yaml(tmp_path, raw_params, monkeypatch):
    (tmp_path / "checkpoints" / "mine").mkdir(parents=True)
    monkeypatch.chdir(REPO)  # not the params file's folder
    params = load_all(write(tmp_path, with_text(raw_params, pretrained="checkpoints/mine")))
    assert params.modalities["text"].pretrained == "checkpoints/mine"


def test_a_hub_id_needs_a_revision_and_only_a_hub_id_takes_one(tmp_path, raw_params):
    with pytest.raises(ParamsError, match=r"modalities\.text\.revision: required beside the hub id"):
        load_all(write(tmp_path, with_text(raw_params, pretrained="hub:sentence-transformers/all-MiniLM-L6-v2")))
    with pytest.raises(ParamsError, match=r"modalities\.text\.revision: only allowed beside a hub id"):
        load_all(write(tmp_path, with_text(raw_params, revision="main")))
    with pytest.raises(ParamsError, match=r"modalities\.text\.tokenizer: 'bert-base' is neither"):
        load_all(write(tmp_path, with_text(raw_params, tokenizer="bert-base")))
    pinned = load_all(write(tmp_path, with_text(raw_params, pretrained="hub:org/name", revision="a" * 40)))
    assert pinned.modalities["text"].names_hub and not load_all(PARAMS).modalities["text"].names_hub


def test_knobs_without_a_fixed_value_must_be_searched(tmp_path, raw_params):
    # lr, fusion and dropout live only in tune.space: leaving one out would fail every trial, so params refuse it.
    raw = copy.deepcopy(raw_params)
    del raw["tune"]["space"]["fusion"]
    with pytest.raises(ParamsError, match=r"tune\.space\.fusion: required .*choice: \[concat\]"):
        load_all(write(tmp_path, raw))


# --- each stage checks the keys it declares --------------------------------------------------------------------

def stage_schemas() -> dict[str, object]:
    """{stage: the Schema its module declares as PARAMS}, in dvc.yaml's order (the DAG's order here)."""
    import importlib

    from multimodal.pipeline.stage_params import read_stages

    return {name: importlib.import_module(stage.cmd.split()[2]).PARAMS
            for name, stage in read_stages(REPO / "dvc.yaml").items()}


def load_for(stage: str, schema, path: Path):
    import shutil

    from multimodal.pipeline.params import load_params

    if not (path.parent / "dvc.yaml").exists():
        shutil.copy(REPO / "dvc.yaml", path.parent / "dvc.yaml")
    return load_params(path, stage=stage, schema=schema)


def test_every_stage_loads_exactly_its_declared_keys(tmp_path, raw_params):
    from multimodal.pipeline.stage_params import declared_params

    path = write(tmp_path, raw_params)
    for stage, schema in stage_schemas().items():
        params = load_for(stage, schema, path)
        declared = {k.split(".")[0] for k in declared_params(stage, REPO / "dvc.yaml")}
        assert set(params._value) == declared | {"base"}, stage  # nothing else was validated


UNKNOWN = "{key}: unknown key; did you mean {meant}\\b"
@pytest.mark.parametrize("where,typo,meant,first,message", [
    (("demo",), "n_sample", "n_samples", "demo", UNKNOWN),
    (("ingest", "split"), "trian", "train", "ingest", UNKNOWN),
    (("validate", "modalities", "audio"), "max_clipping_", "max_clipping", "validate", UNKNOWN),
    (("modalities", "text"), "max_lenght", "max_length", "preprocess@text", UNKNOWN),
    # preprocess@<m> reads two keys of the section, not all of it: the key it misses is named, and the typo beside it.
    (("preprocess",), "shard_sise", "shard_size", "preprocess@image",
     r"preprocess[.]shard_size: missing \(a typo\? params.yaml has shard_sise there\)"),
    (("baseline",), "n_mfc", "n_mfcc", "baseline", UNKNOWN),
    (("align",), "temprature", "temperature", "align", UNKNOWN),
    (("tune", "fixed", "input_norm"), "audi", "audio", "align",  # align reads tune.fixed.input_norm
     r"tune[.]fixed[.]input_norm[.]audi: unknown modality; did you mean audio\?"),
    (("tune", "fixed"), "wieght_decay", "weight_decay", "tune", UNKNOWN),
    (("tune", "asha"), "max_epoch", "max_epochs", "tune", UNKNOWN),
    (("evaluate", "efficiency"), "repeat", "repeats", "evaluate", UNKNOWN),
    (("report",), "titel", "title", "report", UNKNOWN),
])
def test_a_typo_is_refused_by_the_first_stage_that_reads_it(tmp_path, raw_params, where, typo, meant, first,
                                                            message):
    """Stages before `first` load their params untroubled (they do not read that section); `first` refuses the
    file naming the key and the closest valid name."""
    raw = copy.deepcopy(raw_params)
    section = raw
    for part in where:
        section = section[part]
    section[typo] = section.pop(meant) if meant in section else 1
    path = write(tmp_path, raw)
    order = list(stage_schemas().items())
    position = [name for name, _ in order].index(first)
    for stage, schema in order[:position]:
        load_for(stage, schema, path)
    with pytest.raises(ParamsError, match=message.format(key="[.]".join((*where, typo)), meant=meant)):
        load_for(first, order[position][1], path)


def test_an_undeclared_section_name_typo_is_named_by_its_reader(tmp_path, raw_params):
    raw = copy.deepcopy(raw_params)
    raw["evalute"] = raw.pop("evaluate")
    with pytest.raises(ParamsError, match=r"evaluate: missing \(a typo\? params.yaml has evalute there\)"):
        load_for("evaluate", stage_schemas()["evaluate"], write(tmp_path, raw))


def test_every_stage_but_demo_registers_the_users_modalities_first(tmp_path, raw_params):
    """A modality module named by `modalities.<m>.module` is registered by every stage that reads a manifest, even
    one that reads no `modalities` key (ingest must know the column): checked in a fresh interpreter."""
    import subprocess
    import sys

    from multimodal.modalities.params import plugin_problems

    assert [s for s, schema in stage_schemas().items() if plugin_problems not in schema.prepare] == ["demo"]
    raw = copy.deepcopy(raw_params)
    raw["modalities"]["toy"] = {"pretrained": None, "config": {}, "module": "tests.integration.test_toy_modality",
                                "n_values": 4, "hidden": 8}
    raw["validate"]["modalities"]["toy"] = {"n_values": 4}
    path = write(tmp_path, raw)
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    code = ("import sys; from multimodal.pipeline.params import load_params; from stages.ingest import PARAMS; "
            "from multimodal.modalities import names; load_params(sys.argv[1], stage='ingest', schema=PARAMS); "
            "print(sorted(names()))")
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'toy'" in done.stdout
