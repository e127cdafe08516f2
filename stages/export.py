"""Export a saved model as an ONNX bundle (graph, input description, processors), checked against PyTorch with
onnxruntime on every test row of the project before it is written (multimodal.shipping.export).

    python -m stages.export --model models/best --out exported/onnx

The check reads the test split the pipeline preprocessed (`base.paths.validated`, `base.paths.preprocessed` and
`preprocess.modalities` of params.yaml); its figures go to `<out>/parity.json`. A command, not a DVC stage: only
those who ship the model pay for it (about a minute on two cores for the default model), and `tune` owns `models/`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from multimodal.data.manifest import ManifestError, read_manifest
from multimodal.modalities.params import LISTED
from multimodal.pipeline.params import Base, ParamsError, Schema, load_keys
from multimodal.pipeline.runtime import go_offline, setup_logging
from multimodal.shipping.export import export_bundle
from multimodal.storage.dataset import load_split
from multimodal.storage.io import read_json

PARAMS = Schema({"base": Base}) | LISTED
KEYS = ("base.paths", "preprocess.modalities")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder written by tune (models/best)")
    parser.add_argument("--out", type=Path, required=True, help="the bundle folder to write (replaced if it exists)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the project whose test split checks the export (default params.yaml)")
    parser.add_argument("--batch-size", type=int, default=64, help="test rows run at once by each backend (64)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    setup_logging()
    go_offline()  # the model is rebuilt from its saved configs and weights; nothing is downloaded
    try:
        params = load_keys(args.params, PARAMS, KEYS)
        root, paths = args.params.parent, params.base.paths
        frame = read_manifest(root / paths.validated / "manifest.csv")
        labels = [str(v) for v in read_json(root / paths.validated / "labels.json")]
        test = load_split(frame, "test", labels, root / paths.preprocessed, params.preprocess.modalities)
        report = export_bundle(args.model, args.out, test, args.batch_size)
    except (FileNotFoundError, ManifestError, ParamsError, ValueError) as err:
        sys.exit(f"export: {err}")
    print(f"{args.out}: onnxruntime vs PyTorch on {report['rows']} test rows: max |dp| {report['max_abs_diff']:.2e} "
          f"(allowed {report['tolerance']:g}), predictions identical: {report['predictions_identical']}")


if __name__ == "__main__":
    main()
