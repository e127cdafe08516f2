"""Ray's private parts are used in one module only, checked against one Ray version that the tune stage insists on."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from multimodal.tuning import ray_private
from multimodal.tuning.ray_private import CHECKED_VERSION, UncheckedRay, check_ray_version, require_checked_ray

REPO = Path(__file__).resolve().parents[3]
OWN = {REPO / "multimodal/tuning/ray_private.py", Path(__file__).resolve()}
CODE = ("multimodal", "stages", "flows", "bench", "tests", "scripts")  # every folder of the project's Python


@pytest.mark.parametrize("installed", ["2.61.0", "2.59.2", "3.0.0"])
def test_another_ray_is_refused_naming_the_installed_and_the_checked_version(installed) -> None:
    with pytest.raises(UncheckedRay) as refused:
        check_ray_version(installed)
    message = str(refused.value)
    assert f"Ray {installed} is installed" in message and f"checked against Ray {CHECKED_VERSION}" in message
    assert "multimodal/tuning/ray_private.py" in message and "requirements.lock" in message


@pytest.mark.parametrize("installed", [CHECKED_VERSION, "2.60.3"])
def test_the_checked_series_is_accepted(installed) -> None:
    check_ray_version(installed)


def test_the_installed_ray_is_the_checked_one() -> None:
    require_checked_ray()  # requirements.lock pins the version ray_private.py was read against


def test_the_pyproject_range_is_the_checked_series() -> None:
    [spec] = re.findall(r'"ray\[[^\]]*\]([^"]*)"', (REPO / "pyproject.toml").read_text())
    major, minor = map(int, ray_private.CHECKED_SERIES.split("."))
    assert spec == f">={major}.{minor},<{major}.{minor + 1}"


def test_the_search_refuses_another_ray_before_starting_one(monkeypatch, tmp_path) -> None:
    import ray

    from multimodal.tuning.search import run_search

    monkeypatch.setattr(ray_private, "version", lambda package: "2.61.0")
    params = SimpleNamespace(tune=SimpleNamespace(address=None))  # the check comes before anything reads more
    with pytest.raises(UncheckedRay, match="Ray 2.61.0 is installed"):
        run_search(params, tmp_path, tmp_path / "results")
    assert not ray.is_initialized() and not (tmp_path / ".ray").exists()


# A Ray module or attribute whose name starts with one underscore (ray._private, ray.train._internal, ...); the
# private attributes of Ray objects the code reaches into (ASHA's and its bracket's); a function trainable's mixins.
PRIVATE_MODULE = re.compile(r"\bray(\.[A-Za-z]\w*)*\._(?!_)\w+")


def private_names() -> set[str]:
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(time_attr="epoch", metric="m", mode="max", max_t=8, grace_period=1)
    objects = (asha, vars(asha)["_brackets"][0])
    return {name for obj in objects for name in vars(obj) if name.startswith("_")} | {"__mixins__"}


def test_no_module_but_ray_private_touches_rays_private_parts() -> None:
    names = private_names()
    assert {"_brackets", "_rungs", "_time_attr", "_metric"} <= names  # the list holds what resume.py once used
    attribute = re.compile(r"\.(" + "|".join(sorted(map(re.escape, names))) + r")\b")
    found = []
    for path in sorted(p for folder in CODE for p in (REPO / folder).rglob("*.py")):
        if path in OWN:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if PRIVATE_MODULE.search(line) or attribute.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "Ray's private parts outside multimodal/tuning/ray_private.py:\n" + "\n".join(found)


def test_the_check_finds_a_private_use() -> None:
    """The patterns above match the uses this module gathered (the check has teeth)."""
    text = (REPO / "multimodal/tuning/ray_private.py").read_text()
    assert PRIVATE_MODULE.search(text) and re.search(r"\._brackets\b", text) and "__mixins__" in text
