"""Compare the DVC experiments of this project in a table that fits the terminal.

    python -m stages.compare [--metric FILE:KEY ...] [--all]

One row per run of `dvc exp show` (the commit `*`, its experiments), best first by the validation metric tune
selects on; columns: the name, the params that differ between the runs (short names), the validation metric,
then the test figures: fused accuracy, fused minus the best unimodal model, the classical baseline.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from pathlib import Path

from multimodal.pipeline.params import Schema, load_keys
from multimodal.reporting.experiments import Metric, comparison, exp_show, headline_metrics, ranking_for, render
from multimodal.tuning.params import Tune

LEGEND = ("{val}: the validation figure tune selected on (runs are ranked by it); test_fused: the fused model's "
          "test accuracy; fused-unimodal: minus the best unimodal model's (chosen on validation); baseline: "
          "the classical baseline's; * the commit the experiments start from")


def metric_option(text: str) -> Metric:
    path, sep, key = text.rpartition(":")
    if not sep or not path or not key:
        raise argparse.ArgumentTypeError(f"expected FILE:KEY (e.g. metrics/headline.json:fused_accuracy_ci95_lo), "
                                         f"got {text!r}")
    return Metric(path, key, key.split(".")[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metric", type=metric_option, action="append",
                        help="a metric to show instead of the test figures, as FILE:KEY of a DVC metrics file "
                             "(repeatable); the validation metric always comes first")
    parser.add_argument("--all", action="store_true",
                        help="experiments of every commit (`dvc exp show -A`), not only those of HEAD")
    parser.add_argument("--width", type=int, default=None,
                        help="table width in characters (default: the terminal's, 100 when unknown)")
    args = parser.parse_args(argv)
    params = load_keys("params.yaml", Schema({"tune": Tune}), keys=("tune.metric", "tune.mode"))
    ranking = ranking_for(params.base.paths.metrics, params.tune.metric, params.tune.mode)
    try:
        runs = exp_show(Path.cwd(), all_commits=args.all)
    except RuntimeError as err:
        sys.exit(f"compare: {err}")
    if not runs:
        sys.exit("compare: `dvc exp show` lists no runs; run `dvc repro` and `dvc exp run` first")
    width = args.width or shutil.get_terminal_size((100, 24)).columns
    table = comparison(runs, ranking, args.metric or headline_metrics(params.base.paths.metrics))
    print(render(table, width))
    if not args.metric:
        print(textwrap.fill(LEGEND.format(val=ranking.metric.label), width))


if __name__ == "__main__":
    main()
