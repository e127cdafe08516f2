"""The params guard has no way around it: every path that reads a value of a partly declared section either reads
a declared key or raises `UndeclaredParam` naming the key (or the section whose every key it would read)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from multimodal.pipeline.params import load_params
from multimodal.pipeline.stage_params import StageParams, UndeclaredParam
from stages.align import PARAMS as ALIGN

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def align() -> StageParams:
    """Stage align's view: of `tune` it declares `tune.fixed.input_norm` only."""
    return load_params(REPO / "params.yaml", stage="align", schema=ALIGN)


class Knobs(BaseModel):
    declared: int
    hidden: int

    @property
    def total(self) -> int:  # reads `hidden`, which the stage does not declare
        return self.declared + self.hidden


@pytest.fixture
def model_view() -> StageParams:
    """A view around a pydantic section of which one key is declared (the guard's other kind of section)."""
    return StageParams(Knobs(declared=1, hidden=2), "s", ("knobs.declared",), path="knobs")


def test_declared_keys_read_as_before(align, model_view) -> None:
    assert align.tune.fixed.input_norm["audio"] == "utterance_bins"
    assert align.tune.fixed.get("input_norm") == align.tune.fixed.input_norm
    assert "input_norm" in align.tune.fixed and "fixed" in align.tune
    assert model_view.declared == 1 and model_view["declared"] == 1 and model_view.get("declared") == 1
    assert "declared" in model_view and bool(align.tune)


@pytest.mark.parametrize("read", [
    lambda v: v.tune.get("num_samples"),
    lambda v: v.tune.get("num_samples", 3),
    lambda v: v.tune.fixed.get("augment"),
])
def test_get_of_an_undeclared_key_raises_naming_it(align, read) -> None:
    with pytest.raises(UndeclaredParam, match=r"'tune\.(num_samples|fixed\.augment)'"):
        read(align)


def test_in_of_an_undeclared_key_raises(align, model_view) -> None:
    with pytest.raises(UndeclaredParam, match=r"'tune\.num_samples'"):
        "num_samples" in align.tune  # noqa: B015 - the test is that it raises
    with pytest.raises(UndeclaredParam, match=r"'knobs\.hidden'"):
        "hidden" in model_view  # noqa: B015


@pytest.mark.parametrize("read", [
    lambda v: v.tune.keys(),
    lambda v: list(v.tune),
    lambda v: v.tune.items(),
    lambda v: v.tune.values(),
    lambda v: len(v.tune),
    lambda v: dict(v.tune),
])
def test_reading_every_key_of_a_partly_declared_section_raises(align, read) -> None:
    with pytest.raises(UndeclaredParam, match=r"every key of 'tune'.*declares only \['tune\.fixed\.input_norm'\]"):
        read(align)


@pytest.mark.parametrize("read", [
    lambda v: v.model_dump(),
    lambda v: v.model_dump_json(),
    lambda v: v.model_copy(),
    lambda v: v.model_copy(update={"declared": 3}).hidden,
])
def test_a_whole_copy_or_dump_of_a_partly_declared_section_raises(align, model_view, read) -> None:
    for view in (model_view, align.tune):
        with pytest.raises(UndeclaredParam, match="every key of"):
            read(view)


def test_a_property_of_a_partly_declared_model_raises(model_view) -> None:
    with pytest.raises(UndeclaredParam, match=r"'knobs\.total'.*property or method"):
        model_view.total  # noqa: B018 - the test is that it raises
    with pytest.raises(UndeclaredParam, match=r"'knobs\.hidden'"):
        model_view.hidden  # noqa: B018
    with pytest.raises(UndeclaredParam, match=r"'knobs\.hidden'"):
        model_view["hidden"]
    with pytest.raises(UndeclaredParam, match=r"'knobs\.hidden'"):
        model_view.get("hidden")
