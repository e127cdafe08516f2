"""Robustness of the saved models at test time: modalities removed, and inputs corrupted step by step.

- Missing modalities: the fused model with each modality and each pair removed (masked as missing, which every
  fusion handles), scored on the rows the complete model sees; a row left with no modality counts as wrong.
  Nothing removed is the plain fused prediction, by the same code path.
- Corruption curves: for each modality and each kind of corruption its module offers (`CORRUPTIONS`), accuracy
  of the fused model and of that modality's unimodal model as the level grows, both on the rows that have the
  modality (the others are untouched). Corruptions act on the processor outputs the models read (pixel_values,
  log-mel input_values, token ids). A model that reads a modality as features cached by `align` gets the corrupted
  inputs encoded again by the encoder that computed those features, as align saved it (`bundle.load_encoders`),
  after a check that it reproduces them on clean inputs; where it does not, that modality's curves are skipped and
  say why. Level 0 is the clean input itself (the cached features, not a re-encoding), so it equals the clean
  accuracy exactly.
  Draws are seeded from `base.seed` per modality, kind and row (its sample id), the same draw at every level:
  curves are smooth, and a row's corruption does not depend on the rows read with it. The rows having the
  modality are read, corrupted, re-encoded and scored a chunk at a time (`CHUNK_BYTES` of inputs): the split is
  never in memory whole, and the curves are the same for any chunk size.

Each model's encoders run once on the clean rows (`Pooled`); a removal or a corruption then re-runs only what it
changes. Nothing removed and level 0 are the model's own predictions on its test inputs, the ones `evaluate` scores.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from multimodal.evaluation.evaluate import FUSED, NOTHING, ModelOnTestSplit, with_masked
from multimodal.evaluation.scoring import paired_difference, rng_for
from multimodal.modalities import get_modality
from multimodal.modalities.base import FeatureInput
from multimodal.storage.dataset import SplitData
from multimodal.training.align import encode_present

logger = logging.getLogger(__name__)

CHECK_ROWS = 64  # rows re-encoded to check that a cached-feature modality's encoder is the one align used
CHUNK_BYTES = 32 * 2**20  # a modality's inputs corrupted at once (decoded): bounds memory whatever the split's size

Corruption = Callable[[dict[str, torch.Tensor], float, torch.Generator], dict[str, torch.Tensor]]


def corruptions_of(modality: str) -> dict[str, Corruption]:
    """The modality's corruptions (`Modality.corruptions`, kind -> function); {} for a modality that offers none."""
    return dict(get_modality(modality).corruptions)  # an unknown modality fails here, naming the known ones


def check_corruptions(levels: Mapping[str, Mapping[str, list[float]]], modalities: list[str]) -> None:
    """Every kind params `evaluate.corruptions` names must exist in its modality module (checked before any work)."""
    problems = [f"evaluate.corruptions.{m}.{kind}: the {m} modality has no such corruption; known: "
                f"{sorted(corruptions_of(m))}"
                for m, kinds in levels.items() if m in modalities for kind in kinds if kind not in corruptions_of(m)]
    if problems:
        raise ValueError("; ".join(problems))


def removal_sets(modalities: list[str]) -> list[tuple[str, ...]]:
    """Nothing, each modality, each pair: at most two removed and at least one kept."""
    sizes = range(min(2, len(modalities) - 1) + 1)
    return [removed for k in sizes for removed in itertools.combinations(modalities, k)]


class Pooled:
    """A reader whose encoders ran once on the clean rows. A robustness check then runs only the encoder of the
    modality it changes: the others are read as these pooled outputs through the same projections, fusion and
    head, so a point of a curve costs one encoder pass instead of the whole model.

    `clean`: the model's own predictions on its test inputs (`ModelOnTestSplit.predict`, as `evaluate` scores
    them): nothing removed and corruption level 0 are these, not a second pass.
    """

    def __init__(self, reader: ModelOnTestSplit, clean: np.ndarray, batch_size: int, device: torch.device):
        self.reader, self.clean = reader, clean
        own = reader.spec.feature_modalities
        self.outputs = {m: reader.data.inputs[m]["features"] if m in own
                        else encode_present(reader.model.embedder.encoders[m], reader.data, m, batch_size, device)
                        for m in reader.spec.modalities}

    def changing(self, modality: str | None = None, inputs: dict[str, torch.Tensor] | None = None,
                 rows: torch.Tensor | None = None) -> ModelOnTestSplit:
        """The reader with `modality` fed `inputs` (raw for an encoder the model runs, `features` for a cached
        one) and every other modality its pooled outputs; `modality=None`: all pooled. With `rows`, only those
        rows of the split (`inputs` then holds those rows only)."""
        reader, spec = self.reader, self.reader.spec
        replaced = [m for m in spec.modalities if m != modality and m not in spec.feature_modalities]
        fed = {m: {"features": self.outputs[m]} for m in spec.modalities if m != modality}
        data = SplitData(reader.data.sample_ids, reader.data.labels, fed, reader.data.masks)
        if rows is not None:
            data = data.take(rows)
        if modality is not None:
            data.inputs[modality] = inputs
        return ModelOnTestSplit(_reading_features(reader.model, replaced), spec, data)


def _reading_features(model: nn.Module, modalities: list[str]) -> nn.Module:
    """A view of `model` whose encoders of `modalities` are cached-feature inputs; every other part is shared."""
    view = copy.copy(model)
    view._modules = dict(model._modules)  # a copy's own module table: setting `embedder` leaves `model` alone
    embedder = copy.copy(model.embedder)
    embedder._modules = dict(model.embedder._modules)
    embedder.encoders = nn.ModuleDict({m: FeatureInput(e.out_dim) if m in modalities else e
                                       for m, e in model.embedder.encoders.items()})
    view.embedder = embedder
    return view


def missing_modality(fused: Pooled, y: np.ndarray, batch_size: int, device: torch.device, resamples: int,
                     seed: int) -> list[dict]:
    """One row per removal set: accuracy on the rows the complete model sees, its difference to nothing removed
    (paired bootstrap interval), and how many rows were left with no modality (counted wrong). Nothing removed
    is the model's clean prediction."""
    seen = fused.reader.data.any_present().numpy()
    pooled = fused.changing()
    clean = fused.clean[seen] == y[seen]
    rows = []
    for removed in removal_sets(fused.reader.spec.modalities):
        masked = with_masked(pooled.data, list(removed))
        pred = pooled.predict(masked, batch_size, device) if removed else fused.clean
        correct = pred[seen] == y[seen]  # ABSTAIN never equals a label
        name = "+".join(removed) or NOTHING
        diff = paired_difference(correct, clean, resamples, rng_for(seed, f"missing/{name}"))
        low, high = diff["ci95"] or (None, None)
        rows.append({"removed": name, "accuracy": float(correct.mean()) if len(correct) else None,
                     "minus_clean": diff["difference"], "ci95_lo": low, "ci95_hi": high, "n": int(seen.sum()),
                     "n_left_empty": int((seen & ~masked.any_present().numpy()).sum())})
    return rows


def row_seeds(draw: int, sample_ids: list[str]) -> list[int]:
    """A seed per row from a curve's draw and the row's sample id: the row's corruption is the same whatever
    rows it is corrupted with, and whatever rows the split gains or loses."""
    return [int.from_bytes(hashlib.blake2b(f"{draw}/{s}".encode(), digest_size=8).digest(), "little") >> 1
            for s in sample_ids]


def corrupted(inputs: dict[str, torch.Tensor], corrupt: Corruption, level: float, seeds: list[int],
              context: Mapping[str, object] | None = None) -> dict[str, torch.Tensor]:
    """`corrupt` applied to each row of `inputs` (one modality, in memory) with that row's own generator
    (`seeds[i]`) and `context` (`Modality.corruption_context`): a row comes out the same in any chunk."""
    out = {k: v.clone() for k, v in inputs.items()}
    for i, seed in enumerate(seeds):
        changed = corrupt({k: v[i : i + 1] for k, v in inputs.items()}, level, torch.Generator().manual_seed(seed),
                          **(context or {}))
        for key, value in out.items():
            value[i] = changed[key][0]
    return out


def chunk_rows(inputs: Mapping[str, object], batch_size: int) -> int:
    """Rows of `inputs` (one modality's columns) in `CHUNK_BYTES` once decoded; at least one batch."""
    row_bytes = sum(math.prod(v.shape[1:]) * v.dtype.itemsize for v in inputs.values())
    return max(batch_size, CHUNK_BYTES // max(row_bytes, 1))


def in_chunks(raw: SplitData, modality: str, rows: int) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """(row index, that modality's inputs read) of the rows having `modality`, `rows` at a time."""
    present = raw.masks[modality].nonzero().flatten()
    for start in range(0, len(present), rows):
        index = present[start : start + rows]
        yield index, {k: v[index] for k, v in raw.inputs[modality].items()}


@torch.no_grad()
def reencode(encoder: nn.Module, modality: str, inputs: dict[str, torch.Tensor], present: torch.Tensor,
             batch_size: int, device: torch.device) -> torch.Tensor:
    """`align.encode_present` of `inputs` (one modality, every row): pooled outputs on the `present` rows, zeros
    elsewhere. Token sequences (integer tensors as wide as their `attention_mask`) go in batches of similar length
    with the columns no row of the batch attends cut off: the same outputs up to float rounding, at a fraction
    of the cost when texts are much shorter than the tokenizer's max_length."""
    mask = inputs.get("attention_mask")
    if mask is None or any(v.dtype.is_floating_point or v.shape != mask.shape for v in inputs.values()):
        data = SplitData([""] * len(present), torch.zeros(len(present), dtype=torch.long), {modality: inputs},
                         {modality: present})
        return encode_present(encoder, data, modality, batch_size, device)
    encoder.eval().to(device)
    rows = present.nonzero().flatten()
    rows = rows[torch.argsort(mask[rows].sum(dim=1), stable=True)]
    out = torch.zeros(len(present), encoder.out_dim)
    for start in range(0, len(rows), batch_size):
        index = rows[start : start + batch_size]
        attended = mask[index].any(dim=0).nonzero()
        width = int(attended.max()) + 1 if len(attended) else 1
        out[index] = encoder(**{k: v[index][:, :width].to(device) for k, v in inputs.items()}).float().cpu()
    return out


def _reencodes(encoder: nn.Module, raw: SplitData, modality: str, cached: torch.Tensor, batch_size: int,
               device: torch.device) -> str | None:
    """None when `encoder` gives the cached features back on clean inputs (the first `CHECK_ROWS` rows having the
    modality: enough to catch another encoder, at a fraction of the cost); else why not."""
    rows = raw.masks[modality].nonzero().flatten()[:CHECK_ROWS]
    subset = raw.take(rows)
    again = reencode(encoder, modality, subset.inputs[modality], subset.masks[modality], batch_size, device)
    if again.shape == cached[rows].shape and torch.allclose(again, cached[rows], rtol=1e-3, atol=1e-4):
        return None
    gap = f"max difference {float((again - cached[rows]).abs().max()):.3g}" if again.shape == cached[rows].shape \
        else f"width {again.shape[1]}, cached {cached.shape[1]}"
    return (f"its features are cached by align and encoding the clean inputs again does not reproduce them ({gap}; "
            "not the encoder align saved beside them? re-run `align`): not corrupted")


def corruption_curves(models: Mapping[str, Pooled], raw: SplitData, y: np.ndarray,
                      levels: Mapping[str, Mapping[str, list[float]]], encoders: Mapping[str, nn.Module],
                      batch_size: int, device: torch.device, seed: int,
                      rows_per_chunk: int | None = None) -> tuple[list[dict], dict[str, str]]:
    """Accuracy per (modality, kind, level) of the fused model (`models[FUSED]`) and the unimodal model of that
    modality (`models["unimodal_<m>"]`, when saved), on the rows having the modality.

    `encoders[m]`: the encoder of a modality some model takes as cached features. The rows are read and corrupted
    `rows_per_chunk` at a time (default: `chunk_rows`); the curves do not depend on it. Returns the curve rows
    `{modality, corruption, level, fused, unimodal, n}` and `{modality: reason}` for the modalities skipped.
    """
    rows, skipped = [], {}
    for modality in models[FUSED].reader.spec.modalities:
        kinds = {kind: (corruptions_of(modality)[kind], steps) for kind, steps in levels.get(modality, {}).items()}
        involved = {role: p for role, p in (("fused", models[FUSED]), ("unimodal", models.get(f"unimodal_{modality}")))
                    if p is not None}
        cached = {role for role, p in involved.items() if modality in p.reader.spec.feature_modalities}
        if kinds and cached:
            reference = involved[next(iter(cached))].outputs[modality]
            if reason := _reencodes(encoders[modality], raw, modality, reference, batch_size, device):
                skipped[modality] = reason
                logger.warning("corruption curves of %s skipped: %s", modality, reason)
                continue
        has = raw.masks[modality].numpy()
        chunk = rows_per_chunk or chunk_rows(raw.inputs[modality], batch_size)
        preds = _corrupted_predictions(involved, cached, raw, modality, kinds, encoders.get(modality), chunk,
                                       batch_size, device, seed)
        for kind, (_, steps) in kinds.items():
            for level in steps:
                row = {"modality": modality, "corruption": kind, "level": float(level), "n": int(has.sum())}
                for role, pooled in involved.items():
                    # Level 0 is the clean input: the model's predictions `evaluate` scores.
                    pred = pooled.clean if level == 0 else preds[(kind, level, role)]
                    row[role] = float((pred[has] == y[has]).mean()) if has.any() else None
                rows.append(row)
    return rows, skipped


def _corrupted_predictions(involved: Mapping[str, Pooled], cached: set[str], raw: SplitData, modality: str,
                           kinds: Mapping[str, tuple[Corruption, list[float]]], encoder: nn.Module | None,
                           chunk: int, batch_size: int, device: torch.device, seed: int) -> dict[tuple, np.ndarray]:
    """{(kind, level, role): class per row} for every level above 0, filled on the rows having `modality`: each
    chunk of those rows is read once, then corrupted at every level of every kind, re-encoded where a model
    reads cached features, and scored."""
    steps = [(kind, corrupt, level) for kind, (corrupt, levels) in kinds.items() for level in levels if level > 0]
    if not steps:
        return {}
    make = get_modality(modality).corruption_context
    context = make(inputs for _, inputs in in_chunks(raw, modality, chunk)) if make is not None else {}
    draws = {kind: int(rng_for(seed, f"corruption/{modality}/{kind}").integers(2**62)) for kind in kinds}
    preds = {(kind, level, role): np.zeros(len(raw), dtype=np.int64) for kind, _, level in steps for role in involved}
    for index, inputs in in_chunks(raw, modality, chunk):
        ids = [raw.sample_ids[i] for i in index.tolist()]
        seeds = {kind: row_seeds(draw, ids) for kind, draw in draws.items()}
        present = torch.ones(len(index), dtype=torch.bool)
        for kind, corrupt, level in steps:
            new = {"raw": corrupted(inputs, corrupt, level, seeds[kind], context)}
            if cached:
                new["features"] = {"features": reencode(encoder, modality, new["raw"], present, batch_size, device)}
            for role, pooled in involved.items():
                reader = pooled.changing(modality, new["features" if role in cached else "raw"], index)
                preds[(kind, level, role)][index.numpy()] = reader.predict(reader.data, batch_size, device)
    return preds
