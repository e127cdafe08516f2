"""Serve a saved model over HTTP on a local Ray Serve: `POST /predict` and `GET /healthz` (multimodal.shipping.serving).

    python -m stages.serve --model models/best                   # http://127.0.0.1:8000, PyTorch
    python -m stages.serve --onnx exported/onnx --port 8080      # the exported bundle on onnxruntime

    curl -F image=@digit.png -F audio=@digit.wav -F text="seven" http://127.0.0.1:8000/predict

Ray starts locally and offline (multimodal.pipeline.ray_cluster); Serve's HTTP proxy listens on --host only.
Request bounds are params.yaml's `validate.max_file_mb` and `validate.modalities.<m>`. Stops on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from multimodal.data.params import VALIDATE
from multimodal.pipeline.params import ParamsError, load_keys
from multimodal.pipeline.ray_cluster import join_ray
from multimodal.pipeline.runtime import go_offline, setup_logging

KEYS = ("validate.max_file_mb", "validate.modalities")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a model folder written by tune (models/best), run on PyTorch")
    source.add_argument("--onnx", type=Path, help="a bundle written by `python -m stages.export`, run on onnxruntime")
    parser.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="where the request bounds are read (validate section; default params.yaml)")
    parser.add_argument("--threads", type=int, default=None, help="torch / onnxruntime threads of the replica")
    args = parser.parse_args(argv)
    setup_logging()
    go_offline()
    try:
        validate = load_keys(args.params, VALIDATE, KEYS).validate
    except (FileNotFoundError, ParamsError) as err:
        sys.exit(f"serve: {err}")
    root = Path.cwd().resolve()
    # Serve's replicas are Ray workers: they import the project from here.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    join_ray(None, root, num_cpus=os.cpu_count() or 1, object_store_memory=200 * 2**20)
    from ray import serve

    from multimodal.shipping.serving import Bounds, ModelServer

    bounds = Bounds.from_validate(validate.max_file_mb, dict(validate.modalities))
    serve.start(http_options={"host": args.host, "port": args.port})
    model = str(args.model.resolve()) if args.model else None
    onnx = str(args.onnx.resolve()) if args.onnx else None
    serve.run(ModelServer.bind(model, onnx, bounds, args.threads), name="model", route_prefix="/")
    print(f"serving {args.model or args.onnx} on http://{args.host}:{args.port} (POST /predict, GET /healthz)",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    serve.shutdown()


if __name__ == "__main__":
    main()
