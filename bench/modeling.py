"""Fusion types, fine-tuning strategies and single modalities on the default dataset, against a scikit-learn
logistic-regression early-fusion baseline fitted on the same preprocessed inputs in the same run; and the speed-up
of the frozen strategy's cached features over re-encoding with the frozen encoders in every step.

Needs the project's data up to `align` (`dvc repro align`). Every model goes through the product's own code
(`load_splits`, `finetune`, `fit`); hyperparameters are `tune.fixed` plus `--lr` / `--dropout`.

    python bench/modeling.py                      # about 15 minutes on 2 cores
    python bench/modeling.py --skip-grid          # only the baseline and the cached-vs-re-encode ratio
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from multimodal.data.manifest import read_manifest
from multimodal.evaluation.scoring import scores
from multimodal.modalities import PooledEncoder, build_pooled_encoder
from multimodal.models.fusion import fusion_knobs
from multimodal.models.model import Embedder, MultimodalModel
from multimodal.pipeline.runtime import go_offline_for, pick_device
from multimodal.storage.dataset import SplitData, load_split
from multimodal.training.align import load_embedder
from multimodal.training.finetune import finetune
from multimodal.training.load_data import load_labels, load_splits
from multimodal.training.train import fit, predict
from multimodal.tuning.params import FUSIONS, STRATEGIES
from multimodal.tuning.trial import trial_train_config
from stages.check_params import load_all


def early_fusion_matrix(data: SplitData, vocabulary: dict[int, int]) -> np.ndarray:
    """The preprocessed inputs side by side: pixels, log-mel frames, token counts, presence bits."""
    parts = []
    for modality, tensors in data.inputs.items():
        if "input_ids" in tensors:  # text: bag of tokens over the train vocabulary
            counts = np.zeros((len(data), len(vocabulary)), np.float32)
            ids, mask = tensors["input_ids"][:].numpy(), tensors["attention_mask"][:].numpy().astype(bool)
            for row in range(len(data)):
                for token in ids[row][mask[row]]:
                    if token in vocabulary:
                        counts[row, vocabulary[token]] += 1
            parts.append(counts)
        else:
            parts.extend(v[:].flatten(1).numpy() for v in tensors.values())  # lazy columns read whole: demo size
    parts.append(np.stack([data.masks[m].numpy() for m in data.modalities], axis=1).astype(np.float32))
    return np.concatenate(parts, axis=1)


def logistic_baseline(raw: dict[str, SplitData], seed: int) -> dict:
    """Logistic regression on the early-fused preprocessed inputs; C picked on val."""
    start = time.perf_counter()
    vocab_ids = torch.unique(raw["train"].inputs["text"]["input_ids"][:]).tolist() if "text" in raw["train"].inputs else []
    vocabulary = {token: i for i, token in enumerate(vocab_ids)}
    x = {s: early_fusion_matrix(d, vocabulary) for s, d in raw.items()}
    scaler = StandardScaler().fit(x["train"])
    x = {s: scaler.transform(v) for s, v in x.items()}
    y = {s: d.labels.numpy() for s, d in raw.items()}
    best = None
    for c in (0.001, 0.01, 0.1):
        model = LogisticRegression(C=c, max_iter=300, random_state=seed).fit(x["train"], y["train"])
        val = float((model.predict(x["val"]) == y["val"]).mean())
        if best is None or val > best[0]:
            best = (val, c, model)
    val, c, model = best
    return {**scores(y["test"], model.predict(x["test"])), "val_accuracy": val, "seconds": time.perf_counter() - start,
            "note": f"C={c}, {x['train'].shape[1]} features"}


def run_model(params, aligned: Path, labels, device, knobs: dict, modalities=None) -> dict:
    """Train one configuration with the product's loop; test scores and training time."""
    cfg = trial_train_config(params, knobs)
    data = load_splits(params, ("train", "val", "test"), strategy=cfg.strategy)
    start = time.perf_counter()
    model, spec, result = finetune(aligned, labels, data["train"], data["val"], cfg, device, modalities)
    seconds = time.perf_counter() - start
    test = data["test"].only(spec.modalities)
    pred = predict(model, test, 256, device).argmax(1).numpy()
    return {**scores(test.labels.numpy(), pred), "val_accuracy": result.best.val_accuracy, "seconds": seconds,
            "epochs": len(result.history)}


class FrozenEncoder(nn.Module):
    """A frozen encoder run on every batch (the path the cached features avoid): eval mode, no gradients."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder, self.out_dim = encoder.eval().requires_grad_(False), encoder.out_dim

    def train(self, mode: bool = True):  # stays in eval mode: batch norm statistics must not move
        return self

    def forward(self, **inputs):
        with torch.no_grad():
            return self.encoder(**inputs)


def cached_vs_reencoded(params, aligned: Path, labels, raw: dict[str, SplitData], device, knobs: dict,
                        epochs: int) -> tuple[float, float]:
    """Seconds of the same frozen-strategy trial (`epochs` epochs) on cached features and re-encoding each step."""
    cfg = replace(trial_train_config(params, {**knobs, "strategy": "frozen"}), max_epochs=epochs, patience=epochs)
    cached = load_splits(params, ("train", "val"), strategy="frozen")
    start = time.perf_counter()
    finetune(aligned, labels, cached["train"], cached["val"], cfg, device)
    cached_s = time.perf_counter() - start
    # The same model, but every encoder (the aligned ones, and the text encoder align had cached) runs each step.
    embedder, _ = load_embedder(aligned)
    encoders = {}
    for m, encoder in embedder.encoders.items():
        if not isinstance(encoder, PooledEncoder):
            encoder = build_pooled_encoder(m, params.modalities[m])
        encoders[m] = FrozenEncoder(encoder)
    reencode = Embedder(encoders, embedder.projections[next(iter(encoders))][0].out_features)
    reencode.projections.load_state_dict(embedder.projections.state_dict())
    torch.manual_seed(cfg.seed)
    model = MultimodalModel(reencode, cfg.fusion, len(labels), cfg.dropout, fusion_knobs(cfg.fusion, asdict(cfg)))
    start = time.perf_counter()
    fit(model, raw["train"], raw["val"], cfg, device)
    return cached_s, time.perf_counter() - start


def row(name: str, r: dict) -> str:
    return (f"| {name} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['val_accuracy']:.3f} | {r['seconds']:.1f} | "
            f"{r.get('epochs', r.get('note', ''))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--ratio-epochs", type=int, default=3, help="epochs of the cached-vs-re-encode trials")
    parser.add_argument("--skip-grid", action="store_true", help="only the baseline and the cached-features ratio")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_all()
    go_offline_for(params.modalities)
    torch.set_num_threads(max(1, int(params.tune.cpus_per_trial)))
    device = pick_device(params.base.device)
    aligned, labels = Path(params.base.paths.aligned), load_labels(params)
    frame = read_manifest(Path(params.base.paths.validated) / "manifest.csv")
    raw = {s: load_split(frame, s, labels, Path(params.base.paths.preprocessed), params.preprocess.modalities)
           for s in ("train", "val", "test")}
    default = {**params.tune.fixed.model_dump(), "lr": args.lr, "dropout": args.dropout, "fusion": "concat"}
    print(f"device {device}; default knobs: strategy {default['strategy']}, lr {args.lr}, dropout {args.dropout}")

    print("\n| model | test acc | test macro-F1 | val acc | train s | epochs / note |\n|---|---|---|---|---|---|")
    baseline = logistic_baseline(raw, params.base.seed)
    print(row("sklearn logistic regression, early fusion of preprocessed inputs", baseline), flush=True)
    results = {}
    if not args.skip_grid:
        for fusion in FUSIONS:
            results[f"fusion {fusion}, {default['strategy']}"] = run_model(params, aligned, labels, device,
                                                                           {**default, "fusion": fusion})
            print(row(f"fusion **{fusion}**, strategy {default['strategy']}", results[f"fusion {fusion}, {default['strategy']}"]), flush=True)
        for strategy in STRATEGIES:
            if strategy != default["strategy"]:
                results[f"concat, {strategy}"] = run_model(params, aligned, labels, device,
                                                           {**default, "strategy": strategy})
                print(row(f"fusion concat, strategy **{strategy}**", results[f"concat, {strategy}"]), flush=True)
        for fusion in FUSIONS:
            if fusion != "concat":
                results[f"{fusion}, frozen"] = run_model(params, aligned, labels, device,
                                                         {**default, "fusion": fusion, "strategy": "frozen"})
                print(row(f"fusion {fusion}, strategy frozen", results[f"{fusion}, frozen"]), flush=True)
        for modality in params.preprocess.modalities:
            results[f"unimodal {modality}"] = run_model(params, aligned, labels, device, default, [modality])
            print(row(f"unimodal **{modality}** ({default['strategy']})", results[f"unimodal {modality}"]), flush=True)
        fused = {k: v for k, v in results.items() if not k.startswith("unimodal")}
        # "Best" is chosen on validation accuracy, as tune would; the test split only reports.
        best_fused = max(fused, key=lambda k: fused[k]["val_accuracy"])
        best_single = max((k for k in results if k.startswith("unimodal")), key=lambda k: results[k]["val_accuracy"])
        print(f"\nbest fused (by val): {best_fused} {fused[best_fused]['accuracy']:.3f}; best single modality (by val): {best_single} "
              f"{results[best_single]['accuracy']:.3f} (+{100 * (fused[best_fused]['accuracy'] - results[best_single]['accuracy']):.1f} "
              f"points); logistic baseline {baseline['accuracy']:.3f} "
              f"({100 * (fused[best_fused]['accuracy'] - baseline['accuracy']):+.1f} points)")

    cached_s, reencode_s = cached_vs_reencoded(params, aligned, labels, raw, device, default, args.ratio_epochs)
    print(f"\nfrozen-strategy trial of {args.ratio_epochs} epochs: cached features {cached_s:.1f} s, re-encoding every "
          f"step {reencode_s:.1f} s: **{reencode_s / cached_s:.0f}x** faster with the cache")


if __name__ == "__main__":
    main()
