"""A no-op `dvc status` / `dvc repro` at 1k, 10k and 100k samples: the data deps before the listings vs now.

    python bench/noop_repro.py [--sizes 1000 10000 100000] [--repeats 3] [--workdir DIR] [--keep]
    python bench/noop_repro.py --compare OLD_PROJECT NEW_PROJECT    # two reproduced projects, same method

Per N, a synthetic dataset of real files (an 8x8 PNG and a 50 ms WAV per sample, each for 90% of the samples, as
the demo lacks a modality in 10% of them; text inline) is what the `demo` stage's output would hold, and the real
`ingest` (this repo's code) places it into `data/raw` with its listings. Two scratch copies of this project get the
same data (hard links) and a shared DVC cache:

- `old`: this dvc.yaml with the data deps as they were (validate and each preprocess@<m> on the whole `data/raw`,
  preprocess on the whole `data/validated`), and no listings in `data/raw`;
- `new`: this dvc.yaml (validate on `data/raw/manifest.csv` + `data/raw/.contents`, preprocess@<m> on
  `data/raw/.contents/<m>.json` + `data/validated/manifest.csv`).

Every other output is a placeholder (as `tests/integration/test_stage_contract.py`'s `committed` fixture makes
them), then `dvc commit -f`: every stage is up to date, nothing runs. Timed: `dvc status` and `dvc repro` as
child processes, wall and CPU (user + system, `os.wait4`), `repeats` times alternating old/new so load from other
jobs hits both, median reported; a `repro` that runs a stage fails the benchmark. Counted, once per layout: the
paths DVC looks up in its state database (one per file, each time a folder holding it is a dep or an out) and the
cache checks (one per file of each cached output folder); counts do not depend on the machine's load.

Writes `bench/results/noop_repro.json` (`--out`) and the markdown beside it, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: make `flows`, `multimodal`, `stages` importable

# The data deps this change replaced, and what replaced them (dvc.yaml, as written).
OLD_DEPS = {
    "      - ${base.paths.raw}/manifest.csv\n      - ${base.paths.raw}/.contents\n": "      - ${base.paths.raw}\n",
    "        - ${base.paths.raw}/.contents/${item}.json\n        - ${base.paths.validated}/manifest.csv\n":
        "        - ${base.paths.raw}\n        - ${base.paths.validated}\n",
}


def old_layout(dvc_yaml: str) -> str:
    for new, old in OLD_DEPS.items():
        if new not in dvc_yaml:
            raise SystemExit(f"dvc.yaml no longer holds {new!r}: update OLD_DEPS in {__file__}")
        dvc_yaml = dvc_yaml.replace(new, old)
    return dvc_yaml


def synth_dataset(root: Path, n: int) -> int:
    """`root/manifest.csv` + N samples' files (PNG 8x8, WAV 50 ms at 16 kHz, unique bytes); returns the file count."""
    import numpy as np
    import pandas as pd
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    rows, files = [], 0
    for i in range(n):
        folder = f"{i // 1000:03d}"
        image = f"images/{folder}/{i:07d}.png" if i % 10 != 1 else ""
        audio = f"audio/{folder}/{i:07d}.wav" if i % 10 != 2 else ""
        if image:
            (root / image).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L").save(root / image)
        if audio:
            (root / audio).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / audio, rng.uniform(-0.5, 0.5, 800).astype(np.float32), 16000, subtype="PCM_16")
        files += bool(image) + bool(audio)
        rows.append({"sample_id": f"s{i:07d}", "label": str(i % 10), "group": f"g{i % 300}", "image": image,
                     "audio": audio, "text": f"sample {i} says {i % 10}"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return files


def commit_placeholders(project: Path) -> None:
    """Stand-ins for every output not there (and every dep inside one), then `dvc commit -f`: all up to date."""
    from flows.workspace import run

    code = (
        "from pathlib import Path\n"
        "from dvc.repo import Repo\n"
        "with Repo('.') as repo:\n"
        "    for item in [*repo.index.outs, *repo.index.deps]:\n"
        "        path = Path(item.fs_path)\n"
        "        if path.exists() or not path.is_relative_to(Path.cwd()):\n"
        "            continue\n"
        "        if path.suffix:\n"
        "            path.parent.mkdir(parents=True, exist_ok=True)\n"
        "            path.write_text('{}\\n')\n"
        "        else:\n"
        "            path.mkdir(parents=True)\n"
        "            (path / 'placeholder').write_text('x')\n"
    )
    run([sys.executable, "-c", code], project)
    run(["dvc", "commit", "-f", "-q"], project)


def build(workdir: Path, n: int) -> tuple[dict[str, Path], int]:
    """The two projects for N samples (see the module docstring); returns them and the dataset's file count."""
    from flows.workspace import copy_project, run
    from multimodal.data.listing import LISTING_DIR
    from multimodal.pipeline.params import load_params
    from stages.ingest import PARAMS, ingest

    new, old = copy_project(workdir / "new"), copy_project(workdir / "old")
    (old / "dvc.yaml").write_text(old_layout((old / "dvc.yaml").read_text()))
    run(["git", "commit", "-qam", "dvc.yaml: the data deps before the listings"], old)
    params = load_params(new / "params.yaml", stage="ingest", schema=PARAMS)
    demo, raw = new / params.base.paths.demo, new / params.base.paths.raw
    files = synth_dataset(demo, n)
    ingest(params.ingest.model_copy(update={"dataset": demo}), raw, params.base.seed)
    for name in (params.base.paths.demo, params.base.paths.raw):
        subprocess.run(["cp", "-al", str(new / name), str(old / name)], check=True)  # same files, hard links
    shutil.rmtree(old / params.base.paths.raw / LISTING_DIR)
    for project in (new, old):
        run(["dvc", "cache", "dir", str(workdir / "cache")], project)  # each file is copied to the cache once
        commit_placeholders(project)
    return {"old": old, "new": new}, files


def timed(cmd: list[str], project: Path) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout) of one child process."""
    from flows.workspace import project_env

    with tempfile.TemporaryFile("w+") as out:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=project, env=project_env(), stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {project}:\n{text[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, text


def counted(project: Path) -> dict[str, int]:
    """State look-ups and cache checks of one `dvc status`."""
    _, _, text = timed([sys.executable, str(Path(__file__).resolve()), "--count", "status"], project)
    return json.loads(text.strip().splitlines()[-1])


def measure(projects: dict[str, Path], repeats: int) -> dict[str, dict]:
    """Per layout: counts, and the median wall / CPU of `dvc status` and `dvc repro` (alternating layouts)."""
    dvc = ["dvc"]  # as a user runs it (project_env puts this interpreter's bin first on PATH)
    for project in projects.values():
        timed([*dvc, "status"], project)  # warm: the state database knows every file
    out: dict[str, dict] = {name: {**counted(p), "status": [], "repro": []} for name, p in projects.items()}
    for _ in range(repeats):
        for name, project in projects.items():
            out[name]["status"].append(timed([*dvc, "status"], project)[:2])
            wall, cpu, text = timed([*dvc, "repro"], project)
            if "Running stage" in text or "up to date" not in text:
                raise SystemExit(f"a no-op `dvc repro` ran something in {project}:\n{text[-3000:]}")
            out[name]["repro"].append((wall, cpu))
    for figures in out.values():
        for command in ("status", "repro"):
            runs = figures.pop(command)
            figures[command] = {"wall_s": statistics.median(w for w, _ in runs),
                                "cpu_s": statistics.median(c for _, c in runs), "runs": runs}
    return out


def table(results: dict) -> str:
    lines = ["| N | files | layout | state look-ups | cache checks | `dvc status` s (CPU s) | `dvc repro` s (CPU s) |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    ratios = ["| N | look-ups new/old | `dvc status` new/old (CPU) | `dvc repro` new/old (CPU) |",
              "|---:|---:|---:|---:|"]
    for key, size in results.items():
        n = f"{int(key):,}" if key.isdigit() else key
        for layout in ("old", "new"):
            f = size[layout]
            lines.append(f"| {n} | {size['files']:,} | {layout} | {f['lookups']:,} | {f['cache_checks']:,} | "
                         f"{f['status']['wall_s']:.2f} ({f['status']['cpu_s']:.2f}) | "
                         f"{f['repro']['wall_s']:.2f} ({f['repro']['cpu_s']:.2f}) |")
        old, new = size["old"], size["new"]
        cells = [f"{new[c][k] / old[c][k]:.2f}x" for c in ("status", "repro") for k in ("wall_s", "cpu_s")]
        ratios.append(f"| {n} | {new['lookups'] / old['lookups']:.2f}x | {cells[0]} ({cells[1]}) | "
                      f"{cells[2]} ({cells[3]}) |")
    return "\n".join(lines) + "\n\n" + "\n".join(ratios) + "\n"


def count_main(argv: list[str]) -> None:
    """`--count <dvc args>`: run dvc here, in this process, counting state look-ups and cache checks."""
    from dvc_data.hashfile import state
    from dvc_data.hashfile.db import local

    counts = {"lookups": 0, "cache_checks": 0}
    get_many, check = state.State.get_many, local.LocalHashFileDB.check

    def counting_get_many(self, items, fs, infos):
        for found in get_many(self, items, fs, infos):
            counts["lookups"] += 1
            yield found

    def counting_check(self, *args, **kwargs):
        counts["cache_checks"] += 1
        return check(self, *args, **kwargs)

    state.State.get_many, local.LocalHashFileDB.check = counting_get_many, counting_check
    from dvc.cli import main as dvc_main

    code = dvc_main(argv)
    print(json.dumps(counts))
    sys.exit(code)


def main() -> None:
    if sys.argv[1:2] == ["--count"]:
        count_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the projects (default: removed after each size)")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("OLD", "NEW"),
                        help="time two existing reproduced projects instead of synthetic ones")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "noop_repro.json")
    args = parser.parse_args()

    results: dict[str, dict] = {}
    if args.compare:
        files = sum(1 for p in (args.compare[1] / "data" / "demo").rglob("*") if p.is_file())
        results["reproduced"] = {"files": files, **measure(dict(zip(("old", "new"), args.compare)), args.repeats)}
    for n in [] if args.compare else args.sizes:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="noop-repro-"))
        print(f"[N={n:,}] building ...", end=" ", file=sys.stderr, flush=True)
        start = time.monotonic()
        projects, files = build(workdir / str(n), n)
        print(f"{time.monotonic() - start:.0f} s; timing ...", end=" ", file=sys.stderr, flush=True)
        results[str(n)] = {"files": files, **measure(projects, args.repeats)}
        print("done", file=sys.stderr, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")  # after every size: a cut-off run keeps them
        if not args.keep:
            shutil.rmtree(workdir / str(n))
    text = (f"No-op `dvc status` / `dvc repro`, old data deps vs new ({os.cpu_count()} CPUs; median of "
            f"{args.repeats}, alternating)\n\n" + table(results))
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
