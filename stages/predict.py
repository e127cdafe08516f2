"""Predict with a saved model on a new manifest (the dataset contract; `label` optional, `split` ignored).

    python -m stages.predict --model models/best --manifest new/manifest.csv --out predictions.csv
    python -m stages.predict --onnx onnx --manifest new/manifest.csv --out predictions.csv   # on onnxruntime

Reads the model folder (and the manifest's files) only, from any working directory. Writes one row per manifest
row, in order: sample_id, predicted, p_<label> per class (calibrated: softmax(logits / T), T the model's
`temperature.json`), contrib_<modality> per modality of the model (the predicted class's probability minus its
probability with that modality removed; empty where the row lacks it; `--no-contributions` leaves them out),
modalities_used, error.
A cell that cannot be read drops its modality for that row and is named in `error`; a row with no modality left
gets no prediction. With a `label` column, accuracy on the labelled rows is printed at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from multimodal.data.manifest import ManifestError
from multimodal.pipeline.runtime import go_offline, pick_device, setup_logging
from multimodal.shipping.predict import predict_manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path,
                        help="a model folder: tune's (models/best, models/unimodal/<m>), the ensemble (ensemble), "
                             "a classical baseline (data/baseline/models/baseline_<m>)")
    source.add_argument("--onnx", type=Path,
                        help="a bundle written by `python -m stages.export`: the model runs on onnxruntime (CPU)")
    parser.add_argument("--manifest", type=Path, required=True,
                        help="CSV or Parquet manifest; its paths are relative to its folder and may not leave it")
    parser.add_argument("--out", type=Path, required=True, help="the predictions CSV to write")
    parser.add_argument("--batch-size", type=int, default=64, help="rows read and predicted at once (default 64)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto takes CUDA when present (default auto)")
    parser.add_argument("--no-contributions", dest="contributions", action="store_false",
                        help="leave out the contrib_<modality> columns (each costs one more forward pass)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    setup_logging()
    # Offline: a saved model carries its processors (tokenizer, image processor, ...) in its own folder and rebuilds
    # its encoders from their saved configs; no checkpoint name, local or `hub:`, is read again.
    go_offline()
    try:
        summary = predict_manifest(args.model, args.manifest, args.out, args.batch_size, pick_device(args.device),
                                   args.contributions, onnx=args.onnx)
    except (ManifestError, FileNotFoundError, ValueError) as err:
        sys.exit(f"predict: {err}")
    print(f"{summary.rows} rows -> {args.out}: {summary.predicted} predicted, {summary.with_errors} with an error")
    if summary.accuracy is not None or summary.labelled_unpredicted:
        accuracy = "n/a" if summary.accuracy is None else f"{summary.accuracy:.4f}"
        print(f"accuracy on the {summary.labelled} labelled rows with a prediction: {accuracy}"
              f" ({summary.labelled_unpredicted} labelled rows had no readable modality)")


if __name__ == "__main__":
    main()
