"""Did a fresh run reproduce the committed one within tolerance? (Another CPU cannot reproduce it bit for bit.)

The tolerance is the committed run's own uncertainty: each headline metric with a 95% bootstrap interval in
`metrics/evaluate.json` (`<key>_ci95_lo`, `<key>_ci95_hi`) must land inside that interval in the fresh run.

    dvc repro && python -m multimodal.evaluation.reproducibility          # compares with HEAD's metrics/evaluate.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

METRICS = "metrics/evaluate.json"


def drift(committed: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """One line per headline metric of `fresh` outside the committed 95% interval (or missing)."""
    problems = []
    for key in sorted(k.removesuffix("_ci95_lo") for k in committed if k.endswith("_ci95_lo")):
        lo, hi = committed[f"{key}_ci95_lo"], committed.get(f"{key}_ci95_hi")
        if key not in committed or hi is None or lo is None:
            continue
        value = fresh.get(key)
        if value is None:
            problems.append(f"{key}: missing in the fresh run")
        elif not lo <= value <= hi:
            problems.append(f"{key}: {value:.4f} outside the committed 95% interval [{lo:.4f}, {hi:.4f}] "
                            f"(committed {committed[key]:.4f})")
    return problems


def main(argv: list[str] | None = None) -> None:
    rev = (argv or sys.argv[1:] or ["HEAD"])[0]
    committed = json.loads(subprocess.run(["git", "show", f"{rev}:{METRICS}"], capture_output=True, text=True,
                                          check=True).stdout)
    problems = drift(committed, json.loads(Path(METRICS).read_text()))
    print("\n".join(problems) or f"{METRICS}: every headline metric within {rev}'s 95% intervals")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
