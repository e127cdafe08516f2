"""What `ingest` placed, per modality: each file's path in the ingested folder and the md5 of its bytes.

`ingest` writes one small JSON file per modality, `<paths.raw>/.contents/<modality>.json` (sorted, one
`"path": "md5"` per line; `{}` for an inline modality such as text, or one the manifest lacks), beside
`manifest.csv` and the files. The stages after it depend on these files and the manifest instead of the whole
folder (`dvc.yaml`): `validate` on `manifest.csv` + `.contents/`, `preprocess@<m>` on `.contents/<m>.json`. They
still read the files from the folder; the folder changes only when `ingest` runs (DVC re-runs it when its output
is touched), and then the bytes of every file it placed are in a listing. So a changed file re-runs `validate` and
the `preprocess` of its own modality, nothing else, and a no-op `dvc status` hashes the dataset's files once fewer
times for each stage that reads them. The md5 is the name DVC gives the same bytes in its cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from multimodal.data.manifest import MANIFEST_NAME, file_columns, relative_target
from multimodal.modalities import names

LISTING_DIR = ".contents"
_CHUNK = 1 << 20


def listing_path(root: str | Path, modality: str) -> Path:
    """Where the listing of `modality` lives under an ingested folder `root`."""
    return Path(root) / LISTING_DIR / f"{modality}.json"


def reserved(target: Path) -> str | None:
    """Why a file may not be placed at `target` (relative to the ingested folder): the manifest and the listings
    live there; None where it may."""
    if target == Path(MANIFEST_NAME):
        return f"{MANIFEST_NAME!r} is where ingest writes the manifest"
    if target.parts[:1] == (LISTING_DIR,):
        return f"{LISTING_DIR!r} is where ingest writes its listing of the files"
    return None


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def listings(frame: pd.DataFrame, root: Path) -> dict[str, dict[str, str]]:
    """{modality: {path: md5}} of the files the manifest's cells name under `root`, for every registered modality
    (empty for an inline one, or one the manifest lacks). A file named twice is read once; a cell naming no file
    there (missing: `validate` reports it) is left out. Paths are the cells normalised, `/`-separated."""
    hashed: dict[Path, str] = {}
    out: dict[str, dict[str, str]] = {modality: {} for modality in names()}
    for column in file_columns(frame):
        for cell in frame[column]:
            if not cell:
                continue
            target = relative_target(cell)
            if target not in hashed:
                path = root / target
                if not path.is_file():
                    continue
                hashed[target] = file_md5(path)
            out[column][target.as_posix()] = hashed[target]
    return out


def listing_text(files: dict[str, str]) -> str:
    """A listing as written: sorted, one entry a line, ASCII (other characters escaped), so the same files give
    the same bytes."""
    return json.dumps(dict(sorted(files.items())), indent=0) + "\n"


def write_listings(frame: pd.DataFrame, root: Path) -> dict[str, dict[str, str]]:
    """Hash the files `frame` names under `root` and write each modality's listing there; returns them."""
    found = listings(frame, root)
    (root / LISTING_DIR).mkdir(exist_ok=True)
    for modality, files in found.items():
        listing_path(root, modality).write_text(listing_text(files), encoding="ascii")
    return found


def read_listing(root: str | Path, modality: str) -> dict[str, str]:
    return json.loads(listing_path(root, modality).read_text(encoding="ascii"))
