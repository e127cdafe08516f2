"""Stage `ingest`: a dataset folder (`ingest.dataset`: the demo's, or yours) into `paths.raw` as `manifest.csv` +
files, with the split, and per modality a listing of the files' md5 (`multimodal.data.listing`: what the stages
after it depend on)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from multimodal.data.listing import reserved, write_listings
from multimodal.data.manifest import (
    MANIFEST_NAME,
    SPLITS,
    ManifestError,
    assign_splits,
    carve_val,
    file_columns,
    read_manifest,
    relative_target,
    resolve_inside,
    write_manifest,
)
from multimodal.data.params import INGEST, Ingest
from multimodal.pipeline.params import Base, Schema, load_params
from multimodal.pipeline.runtime import go_offline, setup_logging
from multimodal.storage.io import atomic_dir

logger = logging.getLogger(__name__)

PARAMS = Schema({"base": Base}) | INGEST


def _place(source: Path, target: Path) -> None:
    """Hard-link `source` to `target` (copy across filesystems); a file named twice is placed once."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def user_files(frame: pd.DataFrame, src_root: Path) -> list[tuple[str, Path, Path]]:
    """(where, source, target) of every referenced file: `where` names its manifest row and column, `target` is
    the cell's own (normalised) path, not a symlink's target, so the manifest's cells stay valid under the copy.
    Refuses escapes and the paths ingest writes itself (`manifest.csv`, `.contents/`), naming the row; reads no
    file and writes nothing. Missing files and non-files are skipped: `validate` reports them with their row."""
    out = []
    for column in file_columns(frame):
        for index, cell in enumerate(frame[column]):
            if not cell:
                continue
            where = f"manifest row {index + 2}, column {column!r}"  # as a spreadsheet shows it: the header is row 1
            try:
                source, target = resolve_inside(src_root, cell), relative_target(cell)
                if why := reserved(target):
                    raise ManifestError(f"path {cell!r} cannot be copied: {why}; rename it in the dataset")
                if source.is_file():
                    out.append((where, source, target))
            except ManifestError as err:
                raise ManifestError(f"{where}: {err}") from None
    return out


def copy_user_files(files: list[tuple[str, Path, Path]], dest: Path) -> None:
    """Copy (hard-link where possible) each of `user_files` to its target under `dest`."""
    for where, source, target in files:
        try:
            _place(source, dest / target)
        except OSError as err:
            raise ManifestError(f"{where}: cannot copy {str(target)!r}: {err}") from None


def with_splits(frame: pd.DataFrame, cfg: Ingest, seed: int) -> pd.DataFrame:
    """The manifest with its `split`: the given one (val carved out of train on request), else one that keeps
    groups whole (`assign_splits`)."""
    if "split" in frame and (frame["split"] != "").all():
        bad = frame.index[~frame["split"].isin(SPLITS)].tolist()
        if bad:
            raise ManifestError(f"rows {[i + 2 for i in bad[:10]]} have a split outside {list(SPLITS)}")
        if cfg.carve_val_groups is None:
            return frame
        return frame.assign(split=carve_val(frame, cfg.carve_val_groups, seed))
    if "split" in frame and (frame["split"] != "").any():
        empty = frame.index[frame["split"] == ""].tolist()
        raise ManifestError(f"`split` is filled for some rows but empty for rows {[i + 2 for i in empty[:10]]}")
    if cfg.carve_val_groups is not None:
        # Not an error: the same params serve manifests with and without a split column.
        logger.warning("ingest.carve_val_groups is ignored: the manifest has no `split` column, and the split made "
                       "for it (ingest.split) already keeps groups whole")
    return frame.assign(split=assign_splits(frame, cfg.split.model_dump(), seed))


def ingest(cfg: Ingest, out_dir: Path, seed: int) -> pd.DataFrame:
    """Write `out_dir/manifest.csv`, the files it names and their listings (`out_dir/.contents/<modality>.json`),
    from the manifest `cfg.manifest` in `cfg.dataset`."""
    dataset = Path(cfg.dataset)
    if not dataset.is_dir():
        raise ManifestError(f"ingest.dataset {str(dataset)!r} is not a folder; it must hold the manifest and its files")
    manifest = resolve_inside(dataset, cfg.manifest)
    # Everything that may refuse the manifest runs first: a refused one leaves no trace, not even out_dir's parent.
    # Cells that are not UTF-8 are kept (byte for byte) for `validate` to report with their rows.
    frame = read_manifest(manifest, errors="surrogateescape", max_rows=cfg.max_rows)
    files = user_files(frame, manifest.parent)
    frame = with_splits(frame, cfg, seed)
    with atomic_dir(out_dir) as tmp:
        copy_user_files(files, tmp)
        write_listings(frame, tmp)
        write_manifest(frame, tmp / MANIFEST_NAME)
    logger.info("ingested %d samples into %s (%s)", len(frame), out_dir, frame["split"].value_counts().to_dict())
    return frame


def main() -> None:
    setup_logging()
    go_offline()
    params = load_params(stage="ingest", schema=PARAMS)
    try:
        ingest(params.ingest, Path(params.base.paths.raw), params.base.seed)
    except ManifestError as err:
        raise SystemExit(f"ingest: {err}") from None


if __name__ == "__main__":
    main()
