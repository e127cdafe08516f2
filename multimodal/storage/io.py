"""Atomic file output: every stage output is written to a temporary sibling, then renamed into place.

A reader (DVC, the next stage, a person) sees the old output or the new one, never a half-written one, and never
nothing where there was something: a folder is swapped with the old one in one step (Linux `renameat2`), then the
old one is deleted (elsewhere: the old one is renamed aside, the new one in, the old one deleted). A process killed
at any point leaves hidden siblings named after the target and the writer's PID (`.<name>.tmp-<pid>-...`,
`.<name>.old-<pid>-...`); the next write of the same target removes those of dead writers, and puts an aside copy
back if the kill came between the two renames. Protection is against a killed process, not against power loss
(no fsync).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import pandas as pd


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _leftovers(target: Path, kind: str) -> list[Path]:
    """Siblings a dead writer of `target` left (`kind`: "tmp" or "old"), oldest first."""
    prefix = f".{target.name}.{kind}-"
    found = []
    for path in target.parent.glob(f"{glob.escape(prefix)}*"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(target: str | Path) -> None:
    """Clean up after a writer of `target` that was killed: restore its aside copy if the target is missing,
    remove its temporary and aside siblings."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for path in _leftovers(target, "tmp"):
        _remove(path)
    asides = _leftovers(target, "old")
    kept = [a / target.name for a in asides if (a / target.name).exists()]
    if kept and not target.exists() and not target.is_symlink():
        os.replace(kept[-1], target)  # killed between the two renames: the old output is still the output
    for path in asides:
        _remove(path)


def _sibling(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{os.getpid()}-"


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=_sibling(target, "tmp"), dir=target.parent))
    try:
        yield tmp
        _swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux `renameat2(RENAME_EXCHANGE)`); False where the OS or filesystem cannot."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _swap_in(new: Path, target: Path) -> None:
    """Put `new` at `target`. An existing target is exchanged with `new` in one step and then deleted; where the
    system cannot exchange, it is renamed aside first (a gap of one rename) and deleted last."""
    if not target.exists() and not target.is_symlink():
        os.replace(new, target)
        return
    if _exchange(new, target):
        _remove(new)  # `new` now names the old output
        return
    aside = Path(tempfile.mkdtemp(prefix=_sibling(target, "old"), dir=target.parent))
    os.replace(target, aside / target.name)  # into a fresh folder: rename cannot replace a non-empty folder
    os.replace(new, target)
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    fd, tmp = tempfile.mkstemp(prefix=_sibling(path, "tmp"), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_text(path: str | Path, newline: str | None = None) -> Iterator[TextIO]:
    """A UTF-8 text stream (written as it comes) whose file replaces `path` only if the block succeeds.
    `newline=""` for `csv.writer`."""
    with atomic_file(path) as tmp:
        with tmp.open("w", encoding="utf-8", newline=newline) as handle:
            yield handle


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv_atomic(path: str | Path, frame: pd.DataFrame, **to_csv: Any) -> None:
    """`frame.to_csv(path, index=False, **to_csv)`, atomically."""
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, **{"index": False, **to_csv})


def write_json(path: str | Path, obj: Any, sort_keys: bool = True) -> None:
    """`sort_keys=False` keeps the caller's order (headline metrics first, for whoever opens the file)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
