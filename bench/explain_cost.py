"""What calibration and explanations add to a run, on the default architecture (params.yaml) with random weights:
timings only, accuracy means nothing here.

    python bench/explain_cost.py [--val-rows 450] [--threads 2]

- tune: fitting one temperature = one forward pass over the validation rows + LBFGS on (N, C) logits;
- predict: a batch of 64 with and without the `contrib_<m>` columns (encoders once, fusion + head per modality);
- evaluate: Integrated Gradients of `evaluate.explain.rows` rows at `evaluate.explain.steps` points, image and audio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from multimodal.modalities.base import FeatureInput
from multimodal.models.explain import integrated_gradients, probabilities, with_contributions
from multimodal.models.model import Embedder, MultimodalModel
from multimodal.models.temperature import fit_temperature
from multimodal.pipeline.params import load_keys
from multimodal.storage.dataset import SplitData
from multimodal.training.align import build_encoders
from multimodal.training.train import predict_logits
from stages.check_params import ALL

REPO = Path(__file__).resolve().parents[1]


def default_model(params) -> MultimodalModel:
    """The default fused model: image and audio ResNets from params, text as MiniLM's cached 384-d features."""
    fixed = params.tune.fixed
    encoders = build_encoders(params.modalities, ["image", "audio"], [], dict(fixed.input_norm))
    encoders["text"] = FeatureInput(384)
    knobs = {"attention_heads": fixed.attention_heads, "attention_layers": fixed.attention_layers}
    return MultimodalModel(Embedder(encoders, params.align.dim), "attention", 10, 0.1, knobs).eval()


def rows(n: int, params) -> SplitData:
    image, audio = params.modalities["image"], params.modalities["audio"]
    side, frames, bins = int(image.options["image_size"]), int(audio.options["max_length"]), \
        int(audio.options["num_mel_bins"])
    inputs = {"image": {"pixel_values": torch.randn(n, 3, side, side)},
              "audio": {"input_values": torch.randn(n, frames, bins)}, "text": {"features": torch.randn(n, 384)}}
    return SplitData([str(i) for i in range(n)], torch.randint(0, 10, (n,)), inputs,
                     {m: torch.ones(n, dtype=torch.bool) for m in inputs})


def timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val-rows", type=int, default=450, help="the default demo: 3,000 x 0.15")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    params = load_keys(REPO / "params.yaml", ALL)
    model, cpu = default_model(params), torch.device("cpu")
    val = rows(args.val_rows, params)

    def calibrate() -> None:
        logits = predict_logits(model, val, 64, cpu)
        fit_temperature(logits, val.labels)

    batch = rows(64, params)
    plain = timed(lambda: probabilities(model, batch, 1.3, 64, cpu))
    with_contrib = timed(lambda: with_contributions(model, batch, 1.3, 64, cpu))
    cfg = params.evaluate.explain
    explained = rows(cfg.rows, params)
    target = probabilities(model, explained, 1.3, 64, cpu).argmax(1)
    ig = timed(lambda: [integrated_gradients(model, explained, m, k, target, 1.3, cfg.steps)
                        for m, k in (("image", "pixel_values"), ("audio", "input_values"))], repeats=1)
    print(f"{args.threads} torch threads")
    print(f"tune, one temperature on {args.val_rows} validation rows: {timed(calibrate):.2f} s per saved model")
    print(f"predict, a batch of 64: {plain * 1000:.0f} ms plain, {with_contrib * 1000:.0f} ms with contributions "
          f"({with_contrib / plain:.2f}x)")
    print(f"evaluate, Integrated Gradients of {cfg.rows} rows x {cfg.steps} steps, image + audio: {ig:.2f} s")


if __name__ == "__main__":
    main()
