"""Benchmark: `validate_dataset` throughput and peak memory at 1k and 10k samples; cost should grow linearly.

Writes one synthetic demo-like dataset of the largest size (28x28 L-mode PNGs, 16 kHz mono 1.0 s WAVs, short English
hints, 10 classes, ~10% missing per modality, every file distinct so the unique-content checks stay on), one
manifest per size over the same files, then validates each size in a fresh subprocess (Data Docs included, as the
stage runs it) and reports wall time, samples/second and peak RSS (`resource.getrusage`), with the 10k/1k ratios.

    python bench/validate_scaling.py [--sizes 1000 10000] [--workdir DIR]

Memory is reported twice: peak RSS of the process, and its growth over the RSS after imports (Great Expectations,
pandas, Pillow, soundfile): the growth is what the dataset costs, the rest is a fixed ~baseline.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

RATE = 16000
HINTS = ("an even number", "an odd digit", "in the lower half", "a closed loop", "a prime, spoken softly")
SPLITS = ["train"] * 14 + ["val"] * 3 + ["test"] * 3  # 70 / 15 / 15 by block of 10 rows (one of each label)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_dataset(root: Path, sizes: list[int], seed: int = 0) -> None:
    """max(sizes) samples of distinct files under `root`, and `manifest_<n>.csv` (the first n rows) per size."""
    import numpy as np
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(exist_ok=True)
    t = np.arange(RATE) / RATE
    rows = []
    for i in range(max(sizes)):
        label = i % 10
        missing = rng.random(3) < 0.1
        if missing.all():  # never all three, as in the demo
            missing[rng.integers(3)] = False
        image = audio = text = ""
        if not missing[0]:
            image = f"images/{i:06d}.png"
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(root / image)
        if not missing[1]:
            audio = f"audio/{i:06d}.wav"
            wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * label) * t) + 0.05 * rng.standard_normal(RATE)
            sf.write(root / audio, wave.astype(np.float32), RATE, subtype="PCM_16")
        if not missing[2]:
            text = f"{HINTS[i % len(HINTS)]}, sample {i}"
        rows.append((f"s{i:06d}", str(label), SPLITS[(i // 10) % len(SPLITS)], image, audio, text))
    for size in sizes:
        _write_manifest(root / f"manifest_{size}.csv", rows[:size])


def _write_manifest(path: Path, rows: list[tuple[str, ...]]) -> None:
    import pandas as pd

    pd.DataFrame(rows, columns=["sample_id", "label", "split", "image", "audio", "text"]).to_csv(path, index=False)


def worker(root: Path, n: int) -> dict[str, float]:
    """In a fresh process: validate `manifest_<n>.csv` once; time, peak RSS and RSS after imports."""
    start = time.perf_counter()
    import yaml

    import multimodal.data.validation as validation
    from multimodal.data.manifest import read_manifest
    from multimodal.data.params import Validate

    thresholds = Validate.model_validate(yaml.safe_load((REPO / "params.yaml").read_text())["validate"])

    profile_s = []
    profile_samples = validation.profile_samples

    def timed_profile(*args, **kwargs):  # splits the time: per-sample file work vs the GX runs + Data Docs
        begin = time.perf_counter()
        out = profile_samples(*args, **kwargs)
        profile_s.append(time.perf_counter() - begin)
        return out

    validation.profile_samples = timed_profile
    validation._gx()  # the ~6 s import is a fixed cost, not the dataset's: kept out of the timing
    import_s = time.perf_counter() - start
    baseline = _rss_mb()
    frame = read_manifest(root / f"manifest_{n}.csv")
    with tempfile.TemporaryDirectory() as docs:
        start = time.perf_counter()
        result = validation.validate_dataset(frame, root, thresholds, docs_dir=Path(docs))
        seconds = time.perf_counter() - start
    if not result.success:
        raise SystemExit(f"the synthetic dataset should pass: {result.dataset_failures} {result.failing_rows[:3]}")
    return {"n": n, "seconds": seconds, "profile_s": profile_s[0], "import_s": import_s, "peak_rss_mb": _rss_mb(),
            "baseline_rss_mb": baseline}


def measure(root: Path, n: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", str(n), "--workdir", str(root)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"worker for n={n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: list[dict[str, float]]) -> str:
    lines = [
        "| samples | validate s | of which profile s | of which GX + Data Docs s | samples/s | peak RSS MiB "
        "| RSS growth MiB | GX import s (excluded) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        growth = r["peak_rss_mb"] - r["baseline_rss_mb"]
        lines.append(f"| {r['n']:,} | {r['seconds']:.1f} | {r['profile_s']:.1f} | {r['seconds'] - r['profile_s']:.1f} "
                     f"| {r['n'] / r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | {growth:.0f} | {r['import_s']:.1f} |")
    small, large = results[0], results[-1]
    size = large["n"] / small["n"]
    growth = [r["peak_rss_mb"] - r["baseline_rss_mb"] for r in (small, large)]
    lines += [
        "",
        f"ratio {large['n']:,}/{small['n']:,} ({size:.0f}x samples): time {large['seconds'] / small['seconds']:.2f}x "
        f"(profile {large['profile_s'] / small['profile_s']:.2f}x), "
        f"peak RSS {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x, "
        f"RSS growth {growth[1] / max(growth[0], 1.0):.2f}x",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workdir", type=Path, help="dataset folder (kept); default: a temporary one")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.workdir, args.worker)))
        return
    sizes = sorted(args.sizes)
    with tempfile.TemporaryDirectory(prefix="validate-bench-") as tmp:
        root = args.workdir or Path(tmp)
        if not all((root / f"manifest_{n}.csv").exists() for n in sizes):
            start = time.perf_counter()
            make_dataset(root, sizes)
            print(f"wrote {sizes[-1]:,} samples to {root} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        results = [measure(root, n) for n in sizes]
    print(report(results))


if __name__ == "__main__":
    main()
