"""Set-up of a fresh clone, pip against uv (empty and warm wheel cache), and what an already set-up environment adds
to each command; prints markdown tables, ratios against the pip set-up measured in the same run.

    python bench/setup_time.py [--repeats 5]      # about 6-8 minutes on two shared cores: pip dominates

In a temporary `git clone` of this repository (committed files only), one after the other, `.venv` removed between:
`source scripts/setup.sh` with SETUP_INSTALLER=pip (the baseline), then with uv and UV_CACHE_DIR an empty folder
(a fresh machine), then with uv again on that cache (warm). pip's own cache is off for all three. After pip and
after the warm uv run: the venv's packages (the same names and versions either way, or the differences are printed),
torch's installed files, and `import torch, ray, prefect, dvc, transformers` timed twice, wall and CPU time (a uv
venv writes its bytecode at the first import; pip compiles it all at install).
Already set up: `source scripts/setup.sh` against `bash -c :` and against the script as it was (the same, then
`eval "$(python -m multimodal.pipeline.offline)"`), alternating, median of `repeats`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPORTS = "import torch, ray, prefect, dvc, transformers"
SOURCED = {
    "`bash -c :` (no set-up)": ":",
    "as before: + `eval \"$(python -m multimodal.pipeline.offline)\"`":
        'source scripts/setup.sh && eval "$(python -m multimodal.pipeline.offline)"',
    "`source scripts/setup.sh` (now)": "source scripts/setup.sh",
}


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the project's venv (the clone must set up its own), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "UV_CACHE_DIR", "SETUP_INSTALLER"}}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(REPO / ".venv")))
    return {**env, "PIP_NO_CACHE_DIR": "1", **extra}


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of `cmd` and its children: CPU time is less moved by other jobs on a shared machine."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime


def set_up(clone: Path, env: dict[str, str]) -> tuple[float, float]:
    subprocess.run(["rm", "-rf", str(clone / ".venv")], check=True)
    return timed(["bash", "-c", "source scripts/setup.sh"], clone, env)


def packages(clone: Path) -> dict[str, str]:
    """{normalized name: version} of the clone's venv, pip, setuptools and torch included."""
    listing = subprocess.run([str(clone / ".venv/bin/python"), "-m", "pip", "list", "--format=freeze"],
                             capture_output=True, text=True, check=True).stdout
    pins = (line.split("==", 1) for line in listing.splitlines() if "==" in line)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def torch_files(clone: Path) -> str:
    """Digest of the files the torch wheel put in the venv: its RECORD less bytecode, launchers, installer marks."""
    [record] = (clone / ".venv" / "lib").glob("python*/site-packages/torch-*.dist-info/RECORD")
    skip = ("__pycache__", ".pyc", "../", "INSTALLER", "REQUESTED", "direct_url.json", "RECORD", "uv_cache.json")
    lines = sorted(line for line in record.read_text().splitlines() if not any(s in line for s in skip))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def imports(clone: Path, env: dict[str, str]) -> list[tuple[float, float]]:
    python = str(clone / ".venv/bin/python")
    return [timed([python, "-c", IMPORTS], clone, env) for _ in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each already-set-up variant (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="setup-time-") as tmp:
        clone, cache = Path(tmp) / "clone", Path(tmp) / "uv-cache"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        runs, lists, torch, first_import = {}, {}, {}, {}
        runs["pip"] = set_up(clone, clean_env(SETUP_INSTALLER="pip"))
        lists["pip"], torch["pip"] = packages(clone), torch_files(clone)
        first_import["pip"] = imports(clone, clean_env())
        uv_env = clean_env(SETUP_INSTALLER="uv", UV_CACHE_DIR=str(cache))
        runs["uv, empty wheel cache (a fresh machine)"] = set_up(clone, uv_env)
        runs["uv, warm wheel cache"] = set_up(clone, uv_env)
        lists["uv"], torch["uv"] = packages(clone), torch_files(clone)
        first_import["uv"] = imports(clone, clean_env())
        samples: dict[str, list[float]] = {label: [] for label in SOURCED}
        for _ in range(args.repeats):
            for label, script in SOURCED.items():
                samples[label].append(timed(["bash", "-c", script], clone, clean_env())[0])
        uv_used = "uv pip-installed into .venv/.uv" if (clone / ".venv/.uv/bin/uv").exists() else "the uv on PATH"

    base, base_cpu = runs["pip"]
    print(f"\nSet-up of a fresh clone ({os.cpu_count()} CPUs; {uv_used}): `source scripts/setup.sh`\n")
    print("| installer | set-up s | vs pip | CPU s | vs pip |")
    print("|---|---:|---:|---:|---:|")
    for label, (seconds, cpu) in runs.items():
        print(f"| {label} | {seconds:.1f} | {seconds / base:.2f}x | {cpu:.1f} | {cpu / base_cpu:.2f}x |")
    differ = sorted(set(lists["pip"].items()) ^ set(lists["uv"].items()))
    print(f"\nPackages: {len(lists['pip'])} with pip, {len(lists['uv'])} with uv, "
          + (f"differing: {differ}" if differ else "same names and versions")
          + f"; torch {lists['uv'].get('torch')}, its installed files "
          + ("identical" if torch["pip"] == torch["uv"] else "DIFFERENT"))
    print(f"\n`{IMPORTS}` after set-up, first / second run, wall (CPU) seconds: "
          + ", ".join(f"{name} venv " + " / ".join(f"{wall:.1f} ({cpu:.1f})" for wall, cpu in runs_)
                      for name, runs_ in first_import.items()))
    print(f"\nAlready set up, per command (median of {args.repeats}, alternating), milliseconds:\n")
    print("| what runs | ms | over `bash -c :` |")
    print("|---|---:|---:|")
    bare = statistics.median(samples[next(iter(SOURCED))])
    for label, values in samples.items():
        med = statistics.median(values)
        print(f"| {label} | {1000 * med:.0f} | {1000 * (med - bare):+.0f} |")


if __name__ == "__main__":
    main()
