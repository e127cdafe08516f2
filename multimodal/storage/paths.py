"""Paths a manifest names: resolved inside the dataset folder, never outside it (absolute, `..`, symlinks)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


class ManifestError(ValueError):
    """A manifest that breaks the contract; the message names the file, column or row."""


def resolve_inside(root: Path, cell: str) -> Path:
    """Resolve a manifest path cell against `root`; refuse absolute paths and anything escaping `root`."""
    rel = PurePosixPath(cell.replace("\\", "/"))
    if rel.is_absolute() or cell.startswith(("/", "\\")) or (len(cell) > 1 and cell[1] == ":"):
        raise ManifestError(f"path {cell!r} is absolute; manifest paths must be relative to the manifest folder")
    root = root.resolve()
    # The written form on its own, not joined to root: `a/../../<folder name>/x` leaves the folder and comes back
    # only by the folder's name, which a copy of the dataset does not share; refuse it like any `..` escape.
    if _lexical(cell).parts[:1] == ("..",):
        raise ManifestError(f"path {cell!r} escapes the dataset folder {root}")
    # resolve() follows symlinks, so a link pointing outside the folder is caught here.
    full = (root / rel).resolve()
    if not full.is_relative_to(root):
        raise ManifestError(f"path {cell!r} escapes the dataset folder {root} through a symlink")
    return full


def _lexical(cell: str) -> Path:
    """The cell normalised as written (`a/./b/../c` -> `a/c`), symlinks not followed."""
    return Path(os.path.normpath(cell.replace("\\", "/")))


def relative_target(cell: str) -> Path:
    """Where a path cell's file lives under a copied dataset folder: the cell, normalised, symlinks not followed.

    A copy placed there is what `resolve_inside(copy, cell)` finds. Refuses what `resolve_inside` refuses in writing.
    """
    target = _lexical(cell)
    if target.is_absolute() or target.parts[:1] == ("..",):
        raise ManifestError(f"path {cell!r} escapes the dataset folder")
    return target
