"""Check every section of params.yaml at once, as the stages that read them will (no stage runs).

    python -m stages.check_params [params.yaml]

Each stage checks the keys it declares when it runs, so a typo in `tune` would otherwise surface only when `tune`
starts, after the stages before it. This command gives every problem now, with the key and the closest valid name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.params import FLOW
from multimodal.pipeline.params import ParamsError, Schema, load_keys, validate_params
from multimodal.pipeline.stage_params import Section
from stages.align import PARAMS as ALIGN
from stages.baseline import PARAMS as BASELINE
from stages.compress import PARAMS as COMPRESS
from stages.demo import PARAMS as DEMO
from stages.ensemble import PARAMS as ENSEMBLE
from stages.evaluate import PARAMS as EVALUATE
from stages.ingest import PARAMS as INGEST
from stages.preprocess import PARAMS as PREPROCESS
from stages.report import PARAMS as REPORT
from stages.tune import PARAMS as TUNE
from stages.validate import PARAMS as VALIDATE

# Every section, typed as the stage reading it types it (the report stage reads nearly all of them), and the Prefect
# flow's own section, which no stage reads.
ALL: Schema = (DEMO | INGEST | VALIDATE | PREPROCESS | BASELINE | ALIGN | TUNE | ENSEMBLE | EVALUATE | COMPRESS | REPORT
                | FLOW)


def load_all(path: str | Path = "params.yaml") -> Section:
    """Every section of `path`, validated (tests and benchmarks read the whole params through this)."""
    return load_keys(path, ALL, whole=True)


def check_all(raw: dict) -> Section:
    """Every section of params already read (a test's edited copy of params.yaml), validated."""
    return validate_params(raw, tuple(ALL.types), ALL, whole=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", nargs="?", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        load_all(args.params)
    except ParamsError as err:
        sys.exit(str(err))
    print(f"{args.params}: every section is valid")


if __name__ == "__main__":
    main()
