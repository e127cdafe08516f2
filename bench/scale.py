"""Scale (issue 15): wall time, peak RSS and disk per sample of each stage at N = 1k, 10k, 100k samples.

The default demo dataset is built once (`python -m stages.demo`, 3,000 samples). For each N a scratch project gets
a manifest of N rows over the demo's files: row i is demo row i mod 3000 under a new sample id, its group the demo
speaker plus the block index i // 3000 (so speaker groups grow with N and the group-disjoint split stays valid).
The manifest sits inside the demo folder and `ingest.dataset` points there, so ingest hard-links the 3,000 files
once, whatever N. Every stage then runs as the real entry point in its own process, in the environment dvc gives
it (`flows.workspace.project_env`: `python -m multimodal.pipeline.offline`'s switches): `ingest`, `validate`,
`preprocess <m>` per modality (one process each, as `preprocess@<m>`), `align`, and one tune trial: what a Ray
trial runs (`multimodal.tuning.trial.prepare_trial` + `multimodal.training.train.fit`, the fixed knobs plus
TRIAL_KNOBS, one epoch
over the train split via `epoch_limit`) in a process of its own, without Ray, so its RSS is the trial's own. Then
`baseline`, `tune` (one trial of one epoch, OVERRIDES: it is there to leave the models evaluate reads; its Ray
workers are not its children, so its peak RSS is the driver's), `evaluate` (every curve of params.yaml's
`evaluate.corruptions`) and `report`.

Peak RSS is `ru_maxrss` from `os.wait4` on the stage's process: the largest of that process and any children it
waited for (none of these stages starts one today). samples/s is N over the stage's wall time for every stage
(preprocess@<m> processes only the rows having <m>). Params for the benchmark go into each project's params.yaml
(OVERRIDES): 224x224 images as the issue asks, `validate.unique_content` off (rows reuse files on purpose), one
align epoch, text frozen in align (MiniLM features cached once: keeps 100k within hours on 2 cores).

    python bench/scale.py                                   # 1k, 10k, 100k (disk: see --help; hours on 2 cores)
    python bench/scale.py --sizes 1000 10000 --workdir /big/disk/scale --keep --out /tmp/scale.json

Writes the JSON of the raw figures (`--out`, after every stage, so a cut-off run keeps what it measured) and the
markdown table beside it (same name, `.md`), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: make `multimodal` importable

IMAGE_SIZE = 224
OVERRIDES = {
    ("modalities", "image", "image_size"): IMAGE_SIZE,
    ("validate", "unique_content"): False,
    ("align", "epochs"): 1,
    ("align", "freeze"): ["text"],
    # The tune stage only leaves the models evaluate and report read: one trial, one epoch, one at a time.
    ("tune", "num_samples"): 1,
    ("tune", "max_concurrent_trials"): 1,
    ("tune", "scheduler"): "fifo",
    ("tune", "asha"): {"max_epochs": 1, "grace_period": 1, "reduction_factor": 2},
    # Efficiency is timed on fixed batches (its cost does not grow with N): timed once, on small ones.
    ("evaluate", "efficiency"): {"batch_sizes": [1, 4], "warmup": 0, "repeats": 1},
}
TRIAL_KNOBS = {"lr": 1e-3, "fusion": "concat", "dropout": 0.1}  # the searched knobs, fixed for the one trial
MB = 2**20
TAIL = 4000  # characters of a failed stage's log shown


def scaled_manifest(demo, n: int):
    """N rows over the demo's files: row i = demo row i mod len(demo), new sample id, group = demo group + block."""
    import numpy as np

    size = len(demo)
    index = np.arange(n)
    frame = demo.iloc[index % size].reset_index(drop=True)
    frame["sample_id"] = [f"x{i:07d}" for i in index]
    frame["group"] = frame["group"] + "-b" + [str(b) for b in index // size]
    return frame


def stages(modalities: list[str]) -> list[tuple[str, list[str]]]:
    """(name, command) of each measured stage, in pipeline order."""
    py = sys.executable
    return [("ingest", [py, "-m", "stages.ingest"]), ("validate", [py, "-m", "stages.validate"]),
            *[(f"preprocess@{m}", [py, "-m", "stages.preprocess", m]) for m in modalities],
            ("align", [py, "-m", "stages.align"]), ("trial", [py, "bench/scale.py", "--trial"]),
            *[(name, [py, "-m", f"stages.{name}"]) for name in ("baseline", "tune", "evaluate", "report")]]


def measure(name: str, cmd: list[str], project: Path) -> dict[str, float]:
    """Run one stage process in `project`; wall s, CPU s and peak RSS MB; exits naming the stage on failure."""
    from flows.workspace import project_env

    log = project / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=project, env=project_env(), stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if proc.returncode:
        tail = log.read_text(errors="replace")[-TAIL:]
        raise SystemExit(f"stage {name} failed (exit {proc.returncode}) in {project}; end of {log}:\n{tail}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def disk_per_sample(project: Path, modalities: list[str], n: int) -> dict[str, float]:
    """Bytes per sample of each modality's shards and of align's cached features."""
    data = project / "data"
    out = {f"preprocessed/{m}": folder_bytes(data / "preprocessed" / m) / n for m in modalities}
    out["aligned/features"] = folder_bytes(data / "aligned" / "features") / n
    return out


def run_size(workdir: Path, demo_dir: Path, n: int, results: dict, save) -> None:
    """One scratch project of N samples, every stage measured in turn."""
    from flows.workspace import copy_project
    from multimodal.data.manifest import read_manifest, write_manifest
    from stages.check_params import load_all

    name = f"scale-{n}.csv"
    write_manifest(scaled_manifest(read_manifest(demo_dir / "manifest.csv"), n), demo_dir / name)
    project = workdir / f"n{n}"
    shutil.rmtree(project, ignore_errors=True)
    overrides = {**OVERRIDES, ("ingest", "dataset"): str(demo_dir), ("ingest", "manifest"): name,
                 ("ingest", "max_rows"): n}
    copy_project(project, overrides)
    modalities = load_all(project / "params.yaml").preprocess.modalities
    entry = results.setdefault(str(n), {"n": n, "stages": {}})
    for stage, cmd in stages(modalities):
        print(f"[N={n:,}] {stage} ...", end=" ", file=sys.stderr, flush=True)
        entry["stages"][stage] = figures = measure(stage, cmd, project)
        if stage == "trial":  # its last line: rows trained and validated on
            figures.update(json.loads((project / "logs" / "trial.log").read_text().strip().splitlines()[-1]))
        print(f"{figures['wall_s']:.1f} s, {figures['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
        save()
    entry["disk_bytes_per_sample"] = disk_per_sample(project, modalities, n)
    save()


def trial() -> None:
    """In the project: exactly what one Ray trial runs (`run_trial` minus Ray's report), one epoch."""
    from dataclasses import replace

    import torch

    from multimodal.pipeline.params import load_params
    from multimodal.pipeline.runtime import go_offline, pick_device, seed_everything, setup_logging
    from multimodal.training.train import fit
    from multimodal.tuning.params import TUNE
    from multimodal.tuning.trial import prepare_trial, trial_train_config

    setup_logging()
    go_offline()  # as the tune stage, whose trials these are
    params = load_params(stage="tune", schema=TUNE)
    torch.set_num_threads(max(1, int(params.tune.cpus_per_trial)))
    cfg = replace(trial_train_config(params, TRIAL_KNOBS), epoch_limit=1)
    seed_everything(cfg.seed)
    model, spec, train, val = prepare_trial(params, cfg)
    result = fit(model, train, val, cfg, pick_device(params.base.device))
    print(json.dumps({"train": len(train), "val": len(val), "val_accuracy": result.best.val_accuracy}))


def table(results: dict) -> str:
    """The markdown table: per N and stage, then the largest/smallest ratios and disk per sample."""
    runs = sorted(results["sizes"].values(), key=lambda r: r["n"])
    lines = ["| N | stage | wall s | CPU s | peak RSS MB | samples/s |", "|---:|---|---:|---:|---:|---:|"]
    for run in runs:
        for stage, f in run["stages"].items():
            lines.append(f"| {run['n']:,} | {stage} | {f['wall_s']:.1f} | {f['cpu_s']:.1f} | {f['peak_rss_mb']:.0f} "
                         f"| {run['n'] / f['wall_s']:.0f} |")
    done = [r for r in runs if r["stages"]]
    if len(done) > 1:
        small, large = done[0], done[-1]
        label = f"{large['n'] / 1000:g}k/{small['n'] / 1000:g}k"
        lines += ["", f"| stage ({large['n'] // small['n']}x samples) | wall time {label} | CPU time {label} "
                  f"| peak RSS {label} |", "|---|---:|---:|---:|"]
        for stage in [s for s in large["stages"] if s in small["stages"]]:
            big, little = large["stages"][stage], small["stages"][stage]
            lines.append(f"| {stage} | {big['wall_s'] / little['wall_s']:.2f}x | {big['cpu_s'] / little['cpu_s']:.2f}x "
                         f"| {big['peak_rss_mb'] / little['peak_rss_mb']:.2f}x |")
    disks = [r for r in runs if "disk_bytes_per_sample" in r]
    if disks:
        keys = list(disks[0]["disk_bytes_per_sample"])
        lines += ["", "| N | " + " | ".join(f"{k} KB/sample" for k in keys) + " |", "|---:|" + "---:|" * len(keys)]
        for r in disks:
            lines.append(f"| {r['n']:,} | " + " | ".join(f"{r['disk_bytes_per_sample'][k] / 1024:.1f}" for k in keys)
                         + " |")
    return "\n".join(lines)


def report(results: dict, out: Path) -> None:
    text = table(results)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


def biggest_disk() -> Path:
    """The candidate temp root with the most free space."""
    roots = {Path(tempfile.gettempdir()), Path("/var/tmp"), Path.home(), REPO.parent}
    return max((r for r in roots if r.is_dir() and os.access(r, os.W_OK)), key=lambda r: shutil.disk_usage(r).free)


def disk_needed(sizes: list[int], keep: bool) -> int:
    """Bytes of today's shards (float32 pixels dominate: 3 x 224 x 224 x 4 per image), an upper bound."""
    per_sample = 3 * IMAGE_SIZE**2 * 4 + 128 * 64 * 4 + 4096
    return per_sample * (sum(sizes) if keep else max(sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp dir on the biggest disk)")
    parser.add_argument("--keep", action="store_true", help="keep every project (default: each is removed after it)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale.json")
    parser.add_argument("--report", action="store_true", help="only print (and write) the table of --out's JSON")
    parser.add_argument("--trial", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        return trial()
    if args.report:
        return report(json.loads(args.out.read_text()), args.out)
    sizes = sorted(args.sizes)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scale-bench-", dir=biggest_disk()))
    workdir.mkdir(parents=True, exist_ok=True)
    need, free = disk_needed(sizes, args.keep), shutil.disk_usage(workdir).free
    print(f"workdir {workdir}: needs up to {need / 2**30:.1f} GiB (today's float32 shards), {free / 2**30:.1f} GiB "
          f"free", file=sys.stderr)
    if need > free:
        print("warning: not enough free disk for the largest size; pick --workdir on a bigger disk", file=sys.stderr)
    results = {"sizes": {}, "overrides": {".".join(k): v for k, v in OVERRIDES.items()}, "trial_knobs": TRIAL_KNOBS}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    demo_dir = build_demo(workdir, results)
    save()
    for n in sizes:
        run_size(workdir, demo_dir, n, results["sizes"], save)
        if not args.keep:
            shutil.rmtree(workdir / f"n{n}")
    report(results, args.out)
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir)


def build_demo(workdir: Path, results: dict) -> Path:
    """The default demo dataset, once per workdir (kept when there: a re-run with --workdir reuses it)."""
    from flows.workspace import copy_project

    project = workdir / "demo"
    if not (project / "data" / "demo" / "manifest.csv").exists():
        shutil.rmtree(project, ignore_errors=True)
        copy_project(project)
        print("demo ...", end=" ", file=sys.stderr, flush=True)
        results["demo"] = measure("demo", [sys.executable, "-m", "stages.demo"], project)
        print(f"{results['demo']['wall_s']:.1f} s", file=sys.stderr)
    return project / "data" / "demo"


if __name__ == "__main__":
    main()
