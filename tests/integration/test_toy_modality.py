"""A modality is one file: a toy modality defined in this test module, never named by the library, runs through
the whole pipeline (ingest from a manifest, validate, preprocess, baseline, align, tune, evaluate) via `dvc repro`.

Its manifest cells hold a few numbers inline ("0.9 0.1 0.0 0.2"); params register it with
`modalities.toy.module: tests.integration.test_toy_modality` (this file, importable from the project root).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import BaseModelOutput

from flows.workspace import copy_project, run
from multimodal.modalities.base import Modality
from multimodal.modalities.checks import Check, one_of

# slow (~4 min, a fresh project through every stage): the plugin parts are unit-tested (tests/unit/modalities);
# this is the end-to-end proof that a modality written outside the library runs the whole pipeline.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


# ---------------------------------------------------------------------------------------------- the toy modality


class ToyChecks(BaseModel):
    """params `validate.modalities.toy`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n_values: int = Field(ge=1)


def parse(cell: str) -> list[float]:
    return [float(v) for v in cell.split()]


def probe(cell: str, checks: ToyChecks) -> dict[str, Any]:
    return {"values": len(parse(cell))}  # a cell that is not numbers raises: the row fails `toy_decodes`


def row_checks(ex: Any, checks: ToyChecks) -> list[Check]:
    return [one_of(ex, "toy", "values", [checks.n_values], f"a toy cell holds {checks.n_values} numbers",
                   f"{{toy_values}} numbers; expected {checks.n_values}")]


def load(cell: str, root: Path, spec: Any, processor: Any) -> list[float]:
    return parse(cell)


def process(processor: Any, items: Sequence[list[float]], spec: Any) -> dict[str, torch.Tensor]:
    return {"values": torch.tensor(items, dtype=torch.float32)}


class ToyEncoder(nn.Module):
    """What PooledEncoder needs of an encoder: `config` (its width), `main_input_name`, `last_hidden_state`."""

    main_input_name = "values"

    def __init__(self, n_values: int, hidden: int):
        super().__init__()
        self.config = PretrainedConfig(hidden_size=hidden, n_values=n_values)
        self.net = nn.Sequential(nn.Linear(n_values, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, values: torch.Tensor) -> BaseModelOutput:
        return BaseModelOutput(last_hidden_state=self.net(values).unsqueeze(1))


def build_encoder(spec: Any) -> ToyEncoder:
    return ToyEncoder(int(spec.options["n_values"]), int(spec.options["hidden"]))


def rebuild_encoder(entry: dict[str, Any]) -> ToyEncoder:
    return ToyEncoder(int(entry["hf_config"]["n_values"]), int(entry["hf_config"]["hidden_size"]))


def baseline_features(tensors: dict[str, torch.Tensor], fit_rows: np.ndarray, cfg: Any) -> np.ndarray:
    return tensors["values"][:].numpy().astype(np.float64)  # a lazy column: [:] reads every row


MODALITY = Modality(
    name="toy", reads_file=False, probe=probe, profile_fields={"values": "Int64"}, checks=ToyChecks,
    row_checks=row_checks, load=load, build_processor=lambda spec: None, process=process,
    build_encoder=build_encoder, rebuild_encoder=rebuild_encoder, options=("n_values", "hidden"),
    baseline_features=baseline_features)


# ---------------------------------------------------------------------------------------------- the test

LABELS = ("red", "green", "blue")


def write_dataset(folder: Path, groups: int = 10, per_label: int = 4, seed: int = 0) -> Path:
    """A manifest of text + toy cells; the toy numbers carry the label (a noisy one-hot), the text a weak hint."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = []
    for g in range(groups):
        for k, label in enumerate(LABELS):
            for i in range(per_label):
                values = np.eye(4)[k] + rng.normal(0, 0.3, 4)
                text = f"note {rng.integers(100)} maybe {label if rng.random() < 0.5 else rng.choice(LABELS)}"
                toy = "" if (g + i) % 7 == 0 else " ".join(f"{v:.3f}" for v in values)  # some rows lack it
                rows.append({"sample_id": f"g{g}-{label}-{i}", "label": label, "group": f"g{g}", "text": text,
                             "toy": toy})
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_a_modality_defined_outside_the_library_runs_the_whole_pipeline(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "toy-data")
    project = copy_project(tmp_path / "project", {
        ("ingest", "dataset"): str(dataset),
        ("preprocess", "modalities"): ["text", "toy"],
        ("preprocess", "batch_size"): 64,
        ("modalities", "toy"): {"pretrained": None, "config": {}, "module": "tests.integration.test_toy_modality",
                                "n_values": 4, "hidden": 8},
        ("validate", "modalities", "toy"): {"n_values": 4},
        ("align", "epochs"): 1,
        ("tune", "num_samples"): 1,
        ("tune", "cpus_per_trial"): 1,
        ("tune", "asha"): {"max_epochs": 2, "grace_period": 1, "reduction_factor": 2},
        # As small as the shared run's (conftest.TINY_PARAMS, not imported: the stages import this module); the toy
        # modality has no corruptions.
        ("evaluate", "corruptions"): {"text": {"tokens": [0, 0.5]}},
        ("evaluate", "efficiency"): {"batch_sizes": [1, 4], "warmup": 0, "repeats": 1},
    })
    # The module is an input of every stage importing the modality registry: dvc.yaml lists it (a stage refuses to
    # start otherwise).
    run(["python", "-m", "multimodal.pipeline.stage_deps", "--write"], project)
    run(["dvc", "repro", "evaluate"], project)

    report = json.loads((project / "data/validated/report.json").read_text())
    assert report["success"] and {"toy_decodes", "toy_values"} <= {c["name"] for c in report["checks"]}
    counts = json.loads((project / "data/preprocessed/toy/counts.json").read_text())
    assert sum(counts.values()) == sum(1 for r in csv.DictReader((dataset / "manifest.csv").open()) if r["toy"])
    spec = json.loads((project / "models/best/model.json").read_text())
    assert set(spec["modalities"]) == {"text", "toy"}
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    assert {"unimodal_toy", "baseline_toy", "fused"} <= set(metrics["models"])
    # The toy numbers carry the label: both the deep toy model and its classical baseline learn it.
    assert metrics["models"]["baseline_toy"]["accuracy"] > 0.8

    # A bad toy cell is named by the toy modality's own checks.
    with (dataset / "manifest.csv").open("a", newline="") as handle:
        csv.writer(handle).writerow(["bad-1", "red", "g0", "some text", "1 2 three"])
    failed = run(["dvc", "repro", "validate"], project, check=False)
    assert failed.returncode != 0
    assert "bad-1" in failed.stderr and "cannot decode toy" in failed.stderr
