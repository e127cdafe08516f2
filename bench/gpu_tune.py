"""The tune stage on CUDA: fp32 or bf16, one GPU or a fraction per trial; samples/s, trials/minute, GPU utilisation.

A scratch project gets a synthetic, learnable image + audio dataset written straight into the shard format
`preprocess` writes (class patterns plus noise: 3x28x28 pixel values, 128x64 log-mel frames), so no demo is built
(its speech needs espeak-ng). Then `python -m stages.align` once and `python -m stages.tune` once per
`--gpus-per-trial` value (`tune.max_concurrent_trials` = 1 / that fraction) and, within it, per `--precision`
(`tune.fixed.precision`), each timed while `nvidia-smi` samples utilisation and memory every 500 ms. Last, the
same training loop (`multimodal.training.train.fit`, a fused model, the `full` strategy) is timed outside Ray with
precision bf16 (autocast) and fp32.

    python bench/gpu_tune.py --out /tmp/gpu_tune              # CUDA: N=3000, 1, 0.5 and 0.25 GPU/trial, fp32
    python bench/gpu_tune.py --out /tmp/g --gpus-per-trial 1 0.25 --precision fp32 bf16 --loop-epochs 0
    python bench/gpu_tune.py --device cpu --n 240 --num-samples 2 --max-epochs 2 --gpus-per-trial 1 --out /tmp/g

Writes `<out>/gpu_tune.json` (after every step, so a cut-off run keeps what it measured), `<out>/stages.log` (the
stages' output) and `<out>/smi.csv` (every nvidia-smi sample, labelled with its run). Ray's epoch times
(`time_this_iter_s`) include the validation pass, the checkpoint and the report, as a trial spends them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: make `multimodal` importable
import multimodal.training.train as train_module
from flows.workspace import project_env, set_params
from multimodal.data.manifest import SPLITS
from multimodal.storage.io import write_json
from multimodal.storage.shards import ShardWriter

CLASSES = 10
SPLIT_SHARES = {"train": 0.7, "val": 0.15, "test": 0.15}
AST_PADDING = 0.4670  # an AST extractor's value for padded frames: (0 - mean) / (2 std) with its AudioSet defaults
LOOP_KNOBS = {"lr": 1e-3, "fusion": "concat", "dropout": 0.1}  # the searched knobs, fixed for the loop timing


# --- 1. the scratch project ----------------------------------------------------------------------------------

def class_patterns(rng: np.random.Generator, channels: int, size: tuple[int, int], coarse: tuple[int, int]):
    """(CLASSES, channels, *size): a smooth random pattern per class (a coarse grid upsampled), unit std."""
    base = torch.from_numpy(rng.standard_normal((CLASSES, channels, *coarse)).astype(np.float32))
    up = torch.nn.functional.interpolate(base, size=size, mode="bilinear", align_corners=False)
    return up / up.std(dim=(1, 2, 3), keepdim=True)


def jitter(patterns: torch.Tensor, dims: tuple[int, int], most: tuple[int, int], generator: torch.Generator):
    """Each sample's pattern shifted (circularly, up to `most` along `dims`) and scaled by 0.5-1.5: classes vary."""
    out = torch.empty_like(patterns)
    shifts = [torch.randint(-m, m + 1, (len(patterns),), generator=generator) for m in most]
    for i in range(len(patterns)):
        out[i] = patterns[i].roll((int(shifts[0][i]), int(shifts[1][i])), dims=(dims[0] - 1, dims[1] - 1))
    return out * (0.5 + torch.rand((len(patterns), 1, 1, 1), generator=generator))


def write_dataset(project: Path, n: int, signal: float, seed: int, shard_size: int) -> dict[str, int]:
    """What `validate` and `preprocess` would leave for image + audio, every sample having both modalities."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % CLASSES)
    bounds = np.cumsum([round(share * n) for share in SPLIT_SHARES.values()])[:-1]
    split = np.array(list(SPLIT_SHARES))[np.searchsorted(bounds, np.arange(n), side="right")]
    ids = [f"s{i:06d}" for i in range(n)]
    image = class_patterns(rng, 3, (28, 28), (7, 7))
    audio = class_patterns(rng, 1, (128, 64), (8, 8))[:, 0]
    generator = torch.Generator().manual_seed(seed)
    for name in SPLITS:
        index = np.flatnonzero(split == name)
        y = torch.from_numpy(labels[index])
        pixels = signal * jitter(image[y], (2, 3), (4, 4), generator) + torch.randn((len(index), 3, 28, 28),
                                                                                   generator=generator)
        pixels = (0.5 * pixels).clamp(-1, 1)  # the processor's range: (x - 0.5) / 0.5 for x in [0, 1]
        # Half the amplitude: 128x64 frames hold 3.5 times an image's values, hence as much more evidence.
        mel = 0.5 * signal * jitter(audio[y][:, None], (2, 3), (16, 2), generator)[:, 0]
        mel = 0.25 * (mel + torch.randn((len(index), 128, 64), generator=generator)) - 0.3
        frames = torch.randint(96, 129, (len(index),), generator=generator)  # clip lengths; the rest is padding
        mel[torch.arange(128)[None, :] >= frames[:, None]] = AST_PADDING
        sample_ids = [ids[i] for i in index]
        for modality, tensors in (("image", {"pixel_values": pixels}), ("audio", {"input_values": mel})):
            writer = ShardWriter(project / "data" / "preprocessed" / modality, name, shard_size)
            writer.add(sample_ids, tensors)
            writer.flush()
    validated = project / "data" / "validated"
    validated.mkdir(parents=True)
    # Modality cells name no real file: align and tune read only the shards, the split and the label.
    pd.DataFrame({"sample_id": ids, "label": [f"c{v}" for v in labels], "split": split,
                  "image": [f"synthetic/{i}.png" for i in ids], "audio": [f"synthetic/{i}.wav" for i in ids]}
                 ).to_csv(validated / "manifest.csv", index=False)
    write_json(validated / "labels.json", [f"c{v}" for v in range(CLASSES)])
    return {s: int((split == s).sum()) for s in SPLITS}


def make_project(project: Path, args: argparse.Namespace) -> dict[str, int]:
    """params.yaml (the repo's, with this benchmark's settings), dvc.yaml (the stages' params guard reads it), data."""
    project.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, project / name)
    set_params(project, {
        ("base", "device"): args.device,
        ("preprocess", "modalities"): ["image", "audio"],
        ("align", "freeze"): [],
        ("align", "epochs"): args.align_epochs,
        ("tune", "num_samples"): args.num_samples,
        ("tune", "cpus_per_trial"): args.cpus_per_trial,
        ("tune", "scheduler"): "asha",
        ("tune", "asha"): {"max_epochs": args.max_epochs, "grace_period": args.grace_period,
                           "reduction_factor": args.reduction_factor},
        ("tune", "fixed", "strategy"): "full",
    })
    return write_dataset(project, args.n, args.signal, args.seed, args.shard_size)


# --- 2. running a stage while nvidia-smi samples --------------------------------------------------------------

@contextlib.contextmanager
def gpu_samples(path: Path, label: str):
    """Appends `label,time,util %,memory MiB` rows to `path` every 500 ms while the block runs (no-op without
    nvidia-smi); yields a list that holds this block's samples once it ends."""
    samples: list[tuple[float, float, float]] = []
    if shutil.which("nvidia-smi") is None:
        yield samples
        return
    with tempfile.NamedTemporaryFile("w+", suffix=".csv") as raw:
        proc = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used",
                                 "--format=csv,noheader,nounits", "-lms", "500"], stdout=raw, stderr=subprocess.DEVNULL)
        try:
            yield samples
        finally:
            proc.terminate()
            proc.wait()
            raw.seek(0)
            for line in raw.read().splitlines():
                try:  # a sample cut off by terminate(), or "[N/A]", is skipped
                    stamp, util, memory = (part.strip() for part in line.split(","))
                    when = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()
                    samples.append((when, float(util), float(memory)))
                except ValueError:
                    continue
            with path.open("a") as out:
                out.writelines(f"{label},{t:.3f},{u:g},{m:g}\n" for t, u, m in samples)


def run_stage(project: Path, module: str, log: Path, label: str) -> tuple[float, str]:
    """Run `python -m <module>` in the project as DVC would; returns its wall seconds and its output."""
    env = {**project_env(), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    start = time.time()
    done = subprocess.run([sys.executable, "-m", module], cwd=project, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    seconds, output = time.time() - start, done.stdout
    with log.open("a") as out:
        out.write(f"\n===== {module} [{label}]: exit {done.returncode}, {seconds:.1f} s =====\n{output}")
    if done.returncode != 0:
        raise SystemExit(f"{module} [{label}] failed (exit {done.returncode}):\n{output[-4000:]}")
    return seconds, output


def gpu_summary(samples: list[tuple[float, float, float]], start: float = 0.0, end: float = float("inf")) -> dict:
    inside = [s for s in samples if start <= s[0] <= end]
    if not inside:
        return {}
    return {"samples": len(inside), "util_mean_pct": round(statistics.fmean(s[1] for s in inside), 1),
            "util_peak_pct": max(s[1] for s in inside), "memory_mean_mib": round(statistics.fmean(s[2] for s in inside)),
            "memory_peak_mib": max(s[2] for s in inside)}


# --- 3. what a study did -------------------------------------------------------------------------------------

def search_start(output: str) -> float | None:
    """When the stage launched the study: its log line `each trial takes ...` (logging's asctime, ms)."""
    for line in output.splitlines():
        if "each trial takes" in line:
            try:
                return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                return None
    return None


def study_figures(project: Path, output: str, n_train: int) -> dict:
    """Trials, epochs, search wall time and throughput from Ray's per-trial `result.json` files."""
    files = sorted((project / ".ray" / "results" / "tune").glob("*/result.json"))
    trials = [[json.loads(line) for line in path.read_text().splitlines() if line.strip()] for path in files]
    epochs = [r for reports in trials for r in reports]
    # The controller appends each report to result.json as it gets it: the newest file time ends the search.
    end = max(path.stat().st_mtime for path in files)
    start = search_start(output) or min(r[0]["timestamp"] - r[0]["time_total_s"] for r in trials if r)
    later = [r["time_this_iter_s"] for r in epochs if r["epoch"] > 1]  # the first also loads data, builds the model
    first = [r[0]["time_this_iter_s"] for r in trials if r]
    span = end - start
    return {
        "trials": len(files), "epochs": len(epochs), "search_s": round(span, 1),
        "trials_per_min": round(60 * len(files) / span, 2), "epochs_per_min": round(60 * len(epochs) / span, 1),
        "trial_samples_per_s_median": round(n_train / statistics.median(later), 1) if later else None,
        "trial_epoch_s_median": round(statistics.median(later), 3) if later else None,
        "trial_first_epoch_s_mean": round(statistics.fmean(first), 2) if first else None,
        "aggregate_samples_per_s": round(n_train * len(epochs) / span, 1),
        "best_val_accuracy": max((r["val_accuracy"] for r in epochs), default=None),
        "window": (start, end),
    }


def tune_run(project: Path, out: Path, args: argparse.Namespace, gpus: float, precision: str, n_train: int) -> dict:
    concurrent = max(1, round(1 / gpus)) if args.device != "cpu" else 1
    set_params(project, {("tune", "gpus_per_trial"): gpus, ("tune", "max_concurrent_trials"): concurrent,
                         ("tune", "fixed", "precision"): precision})
    label = f"tune gpus_per_trial={gpus:g} precision={precision}"
    with gpu_samples(out / "smi.csv", label) as samples:
        seconds, output = run_stage(project, "stages.tune", out / "stages.log", label)
    figures = study_figures(project, output, n_train)
    window = figures.pop("window")
    tune_json = json.loads((project / "metrics" / "tune.json").read_text())
    return {"gpus_per_trial": gpus, "precision": precision, "max_concurrent_trials": concurrent,
            "stage_s": round(seconds, 1), **figures,
            "best_trial_val_accuracy": tune_json.get("best_val_accuracy"),
            "gpu_during_search": gpu_summary(samples, *window), "gpu_whole_stage": gpu_summary(samples)}


# --- 4. the training loop alone: tune.fixed.precision bf16 (autocast on CUDA) vs fp32 --------------------------------------

def loop_throughput(project: Path, device: torch.device, epochs: int, batch_sizes: list[int]) -> list[dict]:
    from multimodal.training.finetune import initial_model
    from multimodal.training.load_data import load_labels, load_splits
    from multimodal.tuning.trial import trial_train_config
    from stages.check_params import load_all

    os.chdir(project)  # params paths are relative to the project
    params = load_all(project / "params.yaml")
    data = load_splits(params, ("train", "val"), strategy="full")
    labels = load_labels(params)
    rows = []
    for name in ("bf16", "fp32"):
        for batch_size in batch_sizes:
            cfg = replace(trial_train_config(params, LOOP_KNOBS), batch_size=batch_size, max_epochs=epochs,
                          patience=epochs, precision=name)  # tune.fixed.precision
            model, _ = initial_model(Path(params.base.paths.aligned), labels, data["train"].modalities, cfg)
            marks: list[float] = []
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            # on_epoch runs after the validation pass, whose `.cpu()` has already waited for the GPU.
            result = train_module.fit(model, data["train"], data["val"], cfg, device,
                                      on_epoch=lambda metrics, model, save: marks.append(time.perf_counter()))
            seconds = np.diff([start, *marks])
            steady = seconds[1:] if len(seconds) > 1 else seconds
            rows.append({"precision": name, "autocast_bf16": name == "bf16" and device.type == "cuda",
                         "batch_size": batch_size, "epochs": len(seconds),
                         "first_epoch_s": round(float(seconds[0]), 3),
                         "epoch_s_median": round(float(np.median(steady)), 3),
                         "samples_per_s": round(len(data["train"]) / float(np.median(steady)), 1),
                         "best_val_accuracy": round(result.best.val_accuracy, 4),
                         "peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20)
                         if device.type == "cuda" else None})
            print(f"loop {rows[-1]}", flush=True)
    return rows


# --- 5. the run ----------------------------------------------------------------------------------------------

def environment(device: str) -> dict:
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "cpus": os.cpu_count(), "device": device}
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        pass
    # From nvidia-smi, not torch: a CUDA context in this process would hold GPU memory through every run.
    if shutil.which("nvidia-smi"):
        info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                      "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
        info |= {"cuda": torch.version.cuda, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                 "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    return info


def expected_s(runs: list[dict], gpus: float) -> float:
    """A tune run's likely stage seconds: the last one at the same GPU fraction, else the longest so far."""
    same = [r["stage_s"] for r in runs if "stage_s" in r and r["gpus_per_trial"] == gpus]
    return same[-1] if same else max((r["stage_s"] for r in runs if "stage_s" in r), default=0.0)


def in_budget(budget_s: float | None, began: float, step_s: float) -> bool:
    """Whether a step as long as `step_s` (the last one of its kind) still ends within the budget."""
    return budget_s is None or time.time() - began + step_s <= budget_s


def print_summary(report: dict) -> None:
    print("\n| GPU per trial | precision | at once | stage s | search s | trials | epochs | trials/min | samples/s per trial "
          "(median epoch) | samples/s all trials | GPU util mean / peak % | GPU memory peak MiB | best val acc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report["tune"]:
        if "error" in r:
            print(f"| {r['gpus_per_trial']:g} | {r['precision']} | failed: {r['error'].splitlines()[0]} |")
            continue
        gpu = r["gpu_during_search"]
        print(f"| {r['gpus_per_trial']:g} | {r['precision']} | {r['max_concurrent_trials']} | {r['stage_s']} | {r['search_s']} | "
              f"{r['trials']} | {r['epochs']} | {r['trials_per_min']} | {r['trial_samples_per_s_median']} | "
              f"{r['aggregate_samples_per_s']} | {gpu.get('util_mean_pct', '-')} / {gpu.get('util_peak_pct', '-')} | "
              f"{gpu.get('memory_peak_mib', '-')} | {r['best_val_accuracy']:.4f} |")
    print("\n| precision | batch | samples/s | median epoch s | first epoch s | peak allocated MiB | best val acc |")
    print("|---|---|---|---|---|---|---|")
    for r in report.get("loop", []):
        print(f"| {r['precision']} | {r['batch_size']} | {r['samples_per_s']} | {r['epoch_s_median']} | "
              f"{r['first_epoch_s']} | {r['peak_allocated_mib']} | {r['best_val_accuracy']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_tune.json, stages.log, smi.csv")
    parser.add_argument("--project", type=Path, help="scratch project folder (default: a new temporary one)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="base.device of the project")
    parser.add_argument("--n", type=int, default=3000, help="samples in the synthetic dataset")
    parser.add_argument("--signal", type=float, default=0.15, help="class pattern amplitude against unit noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--gpus-per-trial", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                        help="tune.fixed.precision of the tune runs, each at every --gpus-per-trial")
    parser.add_argument("--cpus-per-trial", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--reduction-factor", type=int, default=2)
    parser.add_argument("--align-epochs", type=int, default=4)
    parser.add_argument("--loop-epochs", type=int, default=4, help="epochs of each bf16 / fp32 loop timing (0: skip)")
    parser.add_argument("--loop-batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--budget-s", type=float, help="skip a step that would likely end after this many seconds")
    args = parser.parse_args()
    began = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    project = (args.project or Path(tempfile.mkdtemp(prefix="gpu_tune_"))).resolve()
    report: dict = {"environment": environment(args.device), "settings": {k: str(v) if isinstance(v, Path) else v
                                                                          for k, v in vars(args).items()}}
    save = lambda: write_json(args.out / "gpu_tune.json", report, sort_keys=False)  # noqa: E731
    # 1. Data, then align once: every tune run below starts from the same aligned encoders.
    report["splits"] = make_project(project, args)
    with gpu_samples(args.out / "smi.csv", "align") as samples:
        seconds, _ = run_stage(project, "stages.align", args.out / "stages.log", "align")
    report["align"] = {"stage_s": round(seconds, 1), "gpu": gpu_summary(samples),
                       "metrics": json.loads((project / "metrics" / "align.json").read_text())}
    save()
    # 2. The tune stage at each GPU fraction per trial, and at each precision within it.
    report["tune"] = []
    for gpus in args.gpus_per_trial:
        for precision in args.precision:
            run = {"gpus_per_trial": gpus, "precision": precision}
            if not in_budget(args.budget_s, began, expected_s(report["tune"], gpus)):
                run["error"] = "skipped: --budget-s would be exceeded"
            else:
                try:
                    run = tune_run(project, args.out, args, gpus, precision, report["splits"]["train"])
                except (SystemExit, Exception) as failed:  # recorded; the other settings and the loop still run
                    run["error"] = f"{type(failed).__name__}: {failed}"[-3000:]
            report["tune"].append(run)
            print(f"tune {run}", flush=True)
            save()
    # 3. The loop alone, bf16 autocast vs fp32.
    if args.loop_epochs > 0 and in_budget(args.budget_s, began, 30):
        report["loop"] = loop_throughput(project, torch.device(args.device), args.loop_epochs, args.loop_batch_sizes)
        save()
    print_summary(report)


if __name__ == "__main__":
    main()
