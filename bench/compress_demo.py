"""The compress stage's work on another project's reproduced outputs, nothing written into that project.

    python bench/compress_demo.py --project DIR --out OUT [--threads 2] [--distill-epochs N] [--variants int8 pruned]

DIR is a reproduced project (its `models/best`, `data/validated`, `data/preprocessed`, `data/aligned`); the
`compress` and `evaluate` settings come from this repository's params.yaml. The variants go to OUT/variants and the
table to OUT/front.json; the table is printed with the seconds each part took. On a project reproduced after this
stage exists, `dvc repro compress` does the same and is the command to use.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch

from multimodal.compression.compress import build_variants, measure
from multimodal.models.model import ModelSpec
from multimodal.pipeline.params import Paths, load_keys
from multimodal.pipeline.runtime import go_offline, seed_everything, setup_logging
from multimodal.storage.io import read_json, write_json
from stages.compress import PARAMS, load_splits, log_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--distill-epochs", type=int, default=None, help="override compress.distill.epochs")
    parser.add_argument("--variants", nargs="+", default=None, help="override compress.variants")
    args = parser.parse_args()
    setup_logging()
    go_offline()
    torch.set_num_threads(args.threads)
    params = load_keys(REPO / "params.yaml", PARAMS)
    seed_everything(params.base.seed)
    cfg = params.compress
    if args.distill_epochs is not None:
        cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"epochs": args.distill_epochs})})
    if args.variants is not None:
        cfg = cfg.model_copy(update={"variants": args.variants})
    project = args.project.resolve()
    mine = params.base.paths.model_dump()
    paths = Paths(**{k: project / v for k, v in mine.items()})
    best = paths.models / "best"
    started = time.monotonic()
    splits = load_splits(paths, ModelSpec(**read_json(best / "model.json")))
    made = build_variants(best, args.out / "variants", splits, cfg, torch.device("cpu"))
    built = time.monotonic()
    rows = measure(best, made, splits, cfg, params.evaluate.bootstrap, params.evaluate.efficiency, params.base.seed,
                   [torch.device("cpu")], torch.device("cpu"))
    write_json(args.out / "front.json", rows, sort_keys=False)
    log_table(rows)
    print(json.dumps({"build_s": round(built - started, 1), "measure_s": round(time.monotonic() - built, 1),
                      "threads": args.threads}))


if __name__ == "__main__":
    main()
