"""Load test of `python -m stages.serve`: p50/p99 latency and throughput of `POST /predict` at 1, 8 and 32 concurrent
clients (httpx, 127.0.0.1 only), each level bounded in requests and in time.

    python bench/serve_load.py --model models/best --manifest data/raw/manifest.csv [--onnx exported/onnx]

Starts the server itself (its own process group, ended after), then sends the first `--rows` rows of the manifest
that have every modality, round robin: image and audio files and the text field, as a client would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd

LEVELS = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def payloads(manifest: Path, rows: int) -> list[tuple[dict, dict]]:
    frame = pd.read_csv(manifest, keep_default_na=False)
    modalities = [m for m in ("image", "audio", "text") if m in frame]
    full = frame[(frame[modalities] != "").all(axis=1)].head(rows)
    out = []
    for _, row in full.iterrows():
        files = {m: (Path(row[m]).name, (manifest.parent / row[m]).read_bytes()) for m in ("image", "audio")
                 if m in modalities}
        out.append((files, {"text": row["text"]} if "text" in modalities else {}))
    return out


async def level(url: str, bodies: list[tuple[dict, dict]], clients: int, requests: int, seconds: float) -> dict:
    latencies: list[float] = []
    deadline, sent = time.monotonic() + seconds, 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.monotonic() < deadline:
            files, data = bodies[sent % len(bodies)]
            sent += 1
            start = time.perf_counter()
            answer = await http.post(f"{url}/predict", files=files, data=data)
            answer.raise_for_status()
            latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"clients": clients, "requests": len(ordered), "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "throughput_rps": len(ordered) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path)
    source.add_argument("--onnx", type=Path)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=64, help="distinct requests sent round robin (64)")
    parser.add_argument("--requests", type=int, default=400, help="at most this many requests per level (400)")
    parser.add_argument("--seconds", type=float, default=60, help="and at most this long per level (60 s)")
    parser.add_argument("--threads", type=int, default=None, help="torch / onnxruntime threads of the replica")
    args = parser.parse_args()
    port = free_port()
    cmd = [sys.executable, "-m", "stages.serve", "--port", str(port),
           *(["--model", str(args.model)] if args.model else ["--onnx", str(args.onnx)]),
           *(["--threads", str(args.threads)] if args.threads else [])]
    started = time.perf_counter()
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                sys.exit(f"the server exited ({server.returncode}); run {' '.join(cmd)} to see why")
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        print(f"server up in {time.perf_counter() - started:.1f} s ({args.model or args.onnx})")
        bodies = payloads(args.manifest, args.rows)
        asyncio.run(level(url, bodies, 1, 3, 30))  # warm-up, not reported
        print(f"{'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}")
        for clients in LEVELS:
            r = asyncio.run(level(url, bodies, clients, args.requests, args.seconds))
            print(f"{r['clients']:>7} {r['requests']:>8} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                  f"{r['throughput_rps']:>7.1f}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
