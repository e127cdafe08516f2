"""Throughput of `python -m stages.predict` on CPU: samples/s over a manifest, and where the time goes.

    python bench/predict_throughput.py --model models/best --manifest data/demo/manifest.csv [--batch-size 64]

Runs `predict_manifest` (the real path: decode, processors, every encoder incl. the bundled frozen ones, fusion,
CSV) once, then the same batches again split into reading (decode + processor) and the model, and prints both.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from multimodal.data.manifest import read_manifest
from multimodal.pipeline.runtime import go_offline
from multimodal.shipping.backends import TorchBackend
from multimodal.shipping.predict import REQUIRED, build_readers, predict_batch, predict_manifest, read_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    go_offline()
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = predict_manifest(args.model, args.manifest, Path(tmp) / "p.csv", args.batch_size, cpu)
        total = time.perf_counter() - start
    backend = TorchBackend.load(args.model, cpu)
    readers = build_readers(backend)
    frame = read_manifest(args.manifest, required=REQUIRED)
    reading = modelling = 0.0
    for begin in range(0, len(frame), args.batch_size):
        t0 = time.perf_counter()
        data, errors = read_batch(frame.iloc[begin : begin + args.batch_size], readers, args.manifest.parent)
        t1 = time.perf_counter()
        predict_batch(backend, data, errors)
        reading, modelling = reading + t1 - t0, modelling + time.perf_counter() - t1
    n = summary.rows
    print(f"{n} rows, batch {args.batch_size}, {torch.get_num_threads()} torch threads: {total:.1f} s end to end "
          f"(model load included), {n / total:.1f} samples/s; accuracy {summary.accuracy}")
    print(f"split: reading (decode + processors) {reading:.1f} s = {n / reading:.1f} samples/s; model (encoders, "
          f"fusion) {modelling:.1f} s = {n / modelling:.1f} samples/s")


if __name__ == "__main__":
    main()
