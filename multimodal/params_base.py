"""What every params model shares: strictness, params-style errors, sections checked per modality."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError


# No field below has a default: params.yaml is the one place a knob's value lives, so a missing key is an error
# naming it (tests/unit/test_config.py keeps it that way).
class Strict(BaseModel):
    # Unknown keys are typos far more often than intent: reject them (load_params suggests the closest name).
    model_config = ConfigDict(extra="forbid", frozen=True)


def did_you_mean(key: str, valid: list[str] | tuple[str, ...]) -> str:
    """`; did you mean X?` with the closest valid names, else the list of valid names."""
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else f"; valid: {sorted(valid)}"


def params_error(loc: tuple[str, ...], message: str, value: Any) -> InitErrorDetails:
    """One problem at `loc`, for a validator that reports several at once (`ValidationError.from_exception_data`)."""
    return InitErrorDetails(type=PydanticCustomError("params", message), loc=loc, input=value)


def keyed(value: Any, model_of: str) -> dict[str, Any]:
    """A {modality: section} mapping, each section validated by that modality's own model (`model_of`)."""
    from multimodal.modalities import keyed_sections  # late: the modality modules import this one (and torch)

    sections, errors = keyed_sections(value, model_of)
    if errors:
        raise ValidationError.from_exception_data(model_of, errors)
    return sections
