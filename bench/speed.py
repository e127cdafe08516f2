"""Before/after speed of the paths a user waits on, in one run: the default `dvc repro`, a no-op `dvc repro` and
`dvc status`, one training epoch against its compute floor, and the default test run; prints a markdown table.

    python bench/speed.py --baseline af58f2c                      # every part (about an hour on 2 cores)
    python bench/speed.py --baseline af58f2c --parts repro,noop   # a subset
    python bench/speed.py --baseline af58f2c --parts tests --workdir /tmp/speed

Two clones side by side in `--workdir`: the baseline commit and this checkout's working tree (tracked and untracked
files, as `flows.workspace.copy_project` copies them), both run with this interpreter's environment, one after the
other, part by part, so that load from other jobs on a shared machine falls on both. The set-up time has its own
benchmark (bench/setup_time.py), the Prefect flow's no-op its own (bench/flow_overhead.py).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.workspace import copy_project, project_env  # noqa: E402

PARTS = ("repro", "noop", "epoch", "tests")


def timed(cmd: list[str], cwd: Path, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=cwd, env=project_env(), capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done


def clones(workdir: Path, baseline: str) -> dict[str, Path]:
    """{"before": the baseline commit, "after": this working tree}, each a fresh git repo in `workdir`."""
    before, after = workdir / "before", workdir / "after"
    if not before.exists():
        subprocess.run(["git", "clone", "-q", str(REPO), str(before)], check=True)
        subprocess.run(["git", "checkout", "-q", baseline], cwd=before, check=True)
    if not after.exists():
        copy_project(after)
    return {"before": before, "after": after}


def headline(project: Path) -> str:
    path = project / "metrics" / "headline.json"
    if not path.exists():
        return "-"
    h = json.loads(path.read_text())
    return (f"fused {h['fused_accuracy']:.3f} [{h['fused_accuracy_ci95_lo']:.3f}, {h['fused_accuracy_ci95_hi']:.3f}], "
            f"vs baseline {100 * h['fused_minus_baseline']:+.1f} points")


def part_repro(projects: dict[str, Path]) -> list[tuple[str, float, float, str]]:
    seconds = {name: timed(["dvc", "repro"], p)[0] for name, p in projects.items()}
    return [("default `dvc repro` (s)", seconds["before"], seconds["after"],
             f"before: {headline(projects['before'])}; after: {headline(projects['after'])}")]


def part_noop(projects: dict[str, Path], repeats: int = 3) -> list[tuple[str, float, float, str]]:
    rows = []
    for label, cmd in (("no-op `dvc repro` (s)", ["dvc", "repro"]), ("`dvc status` (s)", ["dvc", "status"])):
        runs: dict[str, list[float]] = {name: [] for name in projects}
        for _ in range(repeats):  # alternating: load on the machine hits both
            for name, project in projects.items():
                seconds, done = timed(cmd, project)
                if cmd[1] == "repro" and "Running stage" in done.stdout:
                    raise SystemExit(f"{name}: the no-op `dvc repro` ran a stage; reproduce the project first")
                runs[name].append(seconds)
        rows.append((label, statistics.median(runs["before"]), statistics.median(runs["after"]),
                     f"median of {repeats}"))
    return rows


def part_epoch(projects: dict[str, Path]) -> list[tuple[str, float, float, str]]:
    """bench/epoch_floor.py of each clone's own code (the baseline gets this checkout's script copied in)."""
    per: dict[str, tuple[float, float]] = {}
    for name, project in projects.items():
        script = project / "bench" / "epoch_floor.py"
        if not script.exists():
            script.write_text((REPO / "bench" / "epoch_floor.py").read_text())
        _, done = timed([sys.executable, str(script), "--project", str(project), "--repeats", "3"], project)
        cells = {line.split("|")[1].strip().strip("*"): line.split("|")[2].strip().strip("*")
                 for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line}
        per[name] = (float(cells["a trial's epoch (epoch + checkpoint)"]),
                     float(cells["floor (fwd+bwd+step, in memory)"]))
    return [("one trial epoch (s)", per["before"][0], per["after"][0],
             f"compute floor before {per['before'][1]:.2f} s ({per['before'][0] / per['before'][1]:.2f}x), "
             f"after {per['after'][1]:.2f} s ({per['after'][0] / per['after'][1]:.2f}x)")]


def suite_command(project: Path) -> list[str]:
    """The pytest command of the clone's README test command (its scripts/test.sh, less the set-up), run with this
    interpreter: the baseline's may be serial, this checkout's runs two pytest-xdist workers."""
    [line] = [line for line in (project / "scripts" / "test.sh").read_text().splitlines()
              if line.startswith("python -m pytest")]
    words = shlex.split(line.replace("${TEST_WORKERS:-2}", "2").replace('"$@"', ""))
    return [sys.executable, *words[1:], "-q", "-p", "no:cacheprovider"]


def part_tests(projects: dict[str, Path]) -> list[tuple[str, float, float, str]]:
    counts, seconds = {}, {}
    for name, project in projects.items():
        seconds[name], done = timed(suite_command(project), project, check=False)
        tail = (done.stdout.strip().splitlines() or ["?"])[-1]
        counts[name] = tail.strip("= ")
    return [("default test run (s)", seconds["before"], seconds["after"],
             f"before: {counts['before']}; after: {counts['after']}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the commit to compare against (e.g. the last release)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/speed-bench"),
                        help="where the two clones live (kept: a second call reuses them)")
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {', '.join(PARTS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    projects = clones(args.workdir, args.baseline)
    runners = {"repro": part_repro, "noop": part_noop, "epoch": part_epoch, "tests": part_tests}
    rows = []
    for part in PARTS:  # this order: noop and epoch need the reproduced projects
        if part in parts:
            rows += runners[part](projects)
            print(f"{part} done", file=sys.stderr)
    print(f"| path | before ({args.baseline}) | after | after / before | notes |")
    print("|---|---:|---:|---:|---|")
    for label, before, after, notes in rows:
        print(f"| {label} | {before:.1f} | {after:.1f} | {after / before:.2f}x | {notes} |")


if __name__ == "__main__":
    main()
