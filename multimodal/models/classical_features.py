"""The classical baselines' features: one fitted "recipe" per modality, the same code at fit time (the `baseline`
stage) and at prediction time (a saved classical model in `predict`).

A recipe is chosen by the processor's output key (not by modality name), so a modality brought by a user gets a
baseline as soon as its processor emits a key listed in `RECIPES`; or by the modality's own `baseline_features`.
`fit_recipe` fits what a recipe learns (the TF-IDF vocabulary and IDF weights) on the train rows only; `apply`
turns processor tensors (lazy columns or plain tensors, `multimodal.storage.columns`) into an (N, d) float64
matrix. `settings()` (JSON) and `arrays()` (safetensors) are what a saved model keeps of it; `restore` undoes them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.fft import dct
from scipy.sparse import csr_matrix

from multimodal.modalities import get_modality
from multimodal.storage.dataset import Column, in_row_chunks

logger = logging.getLogger(__name__)

ROW_CHECK = 4  # rows a modality's own features are recomputed on, alone, to check they are row-wise


@dataclass(frozen=True)
class PixelFeatures:
    """Pixels of `pixel_values` (N, C, H, W), average-pooled to at most `image_size` a side, flattened."""

    kind: ClassVar[str] = "pixels"
    image_size: int

    def apply(self, tensors: Mapping[str, Column]) -> np.ndarray:
        def pooled(chunk: dict[str, torch.Tensor]) -> np.ndarray:
            pixels = chunk["pixel_values"].float()
            if max(pixels.shape[-2:]) > self.image_size:
                pixels = torch.nn.functional.adaptive_avg_pool2d(pixels, self.image_size)
            return pixels.flatten(1).numpy().astype(np.float64)

        return in_row_chunks(tensors, pooled)


def mfcc_statistics(log_mel: np.ndarray, n_mfcc: int) -> np.ndarray:
    """MFCCs (DCT-II of each frame's log-mel), then their mean and standard deviation over frames."""
    mfcc = dct(log_mel.astype(np.float64), type=2, norm="ortho", axis=-1)[..., :n_mfcc]
    return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)], axis=1)


@dataclass(frozen=True)
class LogMelFeatures:
    """MFCC mean/std of a frames-by-mel spectrogram (`input_values` of ASTFeatureExtractor: (N, frames, mel))."""

    kind: ClassVar[str] = "log_mel"
    n_mfcc: int

    def apply(self, tensors: Mapping[str, Column]) -> np.ndarray:
        return in_row_chunks(tensors, lambda chunk: mfcc_statistics(chunk["input_values"].numpy(), self.n_mfcc))


@dataclass(frozen=True)
class MelByFrameFeatures:
    """The same for mel-by-frames spectrograms (`input_features` of Whisper-style extractors: (N, mel, frames))."""

    kind: ClassVar[str] = "mel_by_frame"
    n_mfcc: int

    def apply(self, tensors: Mapping[str, Column]) -> np.ndarray:
        return in_row_chunks(tensors, lambda chunk: mfcc_statistics(
            chunk["input_features"].numpy().transpose(0, 2, 1), self.n_mfcc))


def token_counts(tensors: Mapping[str, Column]) -> tuple[np.ndarray, np.ndarray]:
    """(row, token id) of every attended token of `input_ids` (padding left out by `attention_mask`). The ids are
    read whole: (N, max_length) integers, small beside pixels."""
    ids = tensors["input_ids"][:].numpy()
    mask = tensors.get("attention_mask")
    attended = mask[:].numpy().astype(bool) if mask is not None else np.ones_like(ids, bool)
    rows, cols = np.nonzero(attended)
    return rows, ids[rows, cols]


@dataclass(frozen=True, eq=False)
class TokenTfidf:
    """TF-IDF of the tokenizer's ids over a fixed vocabulary `vocab` (sorted ids) with weights `idf`, as
    scikit-learn's `TfidfTransformer(sublinear_tf=True)` (smooth IDF, L2-normalised rows) computes it."""

    kind: ClassVar[str] = "token_tfidf"
    vocab: np.ndarray  # (V,) int64, sorted
    idf: np.ndarray  # (V,) float64
    sublinear_tf: bool = True

    @classmethod
    def fit(cls, tensors: Mapping[str, Column], fit_rows: np.ndarray, max_tokens: int) -> TokenTfidf:
        """Vocabulary: the `max_tokens` ids in most `fit_rows` documents (ties to the smaller id); IDF on them."""
        rows, tokens = token_counts(tensors)
        in_fit = fit_rows[rows]
        # Document frequency on the fit rows: each (row, token) pair counted once.
        seen = np.unique(np.stack([rows[in_fit], tokens[in_fit]]), axis=1)
        ids, df = np.unique(seen[1], return_counts=True)
        top = np.argsort(-df, kind="stable")[:max_tokens]
        order = np.argsort(ids[top])
        vocab, df = ids[top][order], df[top][order]
        n = int(fit_rows.sum())
        idf = np.log((1.0 + n) / (1.0 + df)) + 1.0  # scikit-learn's smooth_idf
        return cls(vocab.astype(np.int64), idf.astype(np.float64))

    def apply(self, tensors: Mapping[str, Column]) -> np.ndarray:
        rows, tokens = token_counts(tensors)
        n = len(tensors["input_ids"])
        keep = np.isin(tokens, self.vocab)
        counts = csr_matrix((np.ones(keep.sum()), (rows[keep], np.searchsorted(self.vocab, tokens[keep]))),
                            shape=(n, len(self.vocab)))  # duplicates are summed: term counts
        tf = counts.toarray()
        if self.sublinear_tf:
            present = tf > 0
            tf[present] = np.log(tf[present]) + 1.0
        x = tf * self.idf
        norm = np.sqrt((x * x).sum(axis=1, keepdims=True))
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)

    def settings(self) -> dict[str, Any]:
        return {"sublinear_tf": self.sublinear_tf, "max_tokens": len(self.vocab)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"vocab": self.vocab, "idf": self.idf}


@dataclass(frozen=True)
class OwnFeatures:
    """A modality's own `baseline_features(tensors, fit_rows, cfg)`, applied to new rows with no fit rows: saved
    only when it is row-wise (checked by `fit_recipe`). `cfg`: the baseline params it was fitted with."""

    kind: ClassVar[str] = "modality"
    modality: str
    cfg: dict[str, Any] = field(default_factory=dict)

    def apply(self, tensors: Mapping[str, Column]) -> np.ndarray:
        n = len(next(iter(tensors.values())))
        fn = get_modality(self.modality).baseline_features
        return np.asarray(fn(tensors, np.zeros(n, dtype=bool), SimpleNamespace(**self.cfg)), dtype=np.float64)


Recipe = PixelFeatures | LogMelFeatures | MelByFrameFeatures | TokenTfidf | OwnFeatures
KINDS: dict[str, type] = {r.kind: r for r in (PixelFeatures, LogMelFeatures, MelByFrameFeatures, TokenTfidf,
                                               OwnFeatures)}


def settings_of(recipe: Recipe) -> dict[str, Any]:
    """What `restore` needs of `recipe` beside its arrays, as JSON."""
    if isinstance(recipe, TokenTfidf):
        return {"kind": recipe.kind, **recipe.settings()}
    return {"kind": recipe.kind, **vars(recipe)}


def arrays_of(recipe: Recipe) -> dict[str, np.ndarray]:
    return recipe.arrays() if isinstance(recipe, TokenTfidf) else {}


def restore(settings: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Recipe:
    """The recipe `settings_of` and `arrays_of` described."""
    kind = settings["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown feature recipe {kind!r}: expected one of {sorted(KINDS)}")
    if kind == TokenTfidf.kind:
        return TokenTfidf(np.asarray(arrays["vocab"], np.int64), np.asarray(arrays["idf"], np.float64),
                          bool(settings["sublinear_tf"]))
    return KINDS[kind](**{k: v for k, v in settings.items() if k != "kind"})


def _builtin(tensors: Mapping[str, Column]) -> str | None:
    """The processor output key that picks a built-in recipe; the first `RECIPE_KEYS` key the tensors hold."""
    for key in RECIPE_KEYS:
        # `input_values` of waveform models (wav2vec2) are raw samples (N, samples), not a spectrogram.
        if key in tensors and (key != "input_values" or len(tensors[key].shape) == 3):
            return key
    return None


def fit_recipe(modality: str, tensors: Mapping[str, Column], fit_rows: np.ndarray,
               cfg: Any) -> tuple[Recipe | None, np.ndarray] | None:
    """(fitted recipe, features on every row) of one modality: its module's own `baseline_features`, else the
    recipe of the first `RECIPE_KEYS` key its tensors hold; None (logged) when neither fits. The recipe is None when
    the modality's own features are not row-wise (they cannot be applied to new rows: the model is not saved).
    `cfg`: the baseline params (`image_size`, `n_mfcc`, `max_tokens`)."""
    own = get_modality(modality).baseline_features
    if own is not None:
        x = np.asarray(own(tensors, fit_rows, cfg), dtype=np.float64)
        dump = cfg.model_dump() if hasattr(cfg, "model_dump") else dict(vars(cfg))
        recipe = OwnFeatures(modality, dump)
        k = min(ROW_CHECK, len(x))
        alone = recipe.apply({key: v[:k] for key, v in tensors.items()}) if k else x[:0]
        if not np.allclose(alone, x[:k], rtol=1e-6, atol=1e-9, equal_nan=True):
            logger.warning("baseline: the %s module's baseline_features depend on rows other than their own (fit "
                           "statistics?): its classical model is fitted but not saved (predict cannot apply it)",
                           modality)
            recipe = None
        return recipe, x
    key = _builtin(tensors)
    if key is None:
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        logger.warning("baseline: no classical features for modality '%s' (tensors %s; known keys %s): left out",
                       modality, shapes, list(RECIPE_KEYS))
        return None
    if key == "pixel_values":
        recipe = PixelFeatures(cfg.image_size)
    elif key == "input_values":
        recipe = LogMelFeatures(cfg.n_mfcc)
    elif key == "input_features":
        recipe = MelByFrameFeatures(cfg.n_mfcc)
    else:
        recipe = TokenTfidf.fit(tensors, fit_rows, cfg.max_tokens)
    return recipe, recipe.apply(tensors)


# Processor output keys with a built-in recipe, for modalities that bring no features of their own.
RECIPE_KEYS = ("pixel_values", "input_values", "input_features", "input_ids")
