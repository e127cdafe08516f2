"""Contrastive alignment: the pair loss, retrieval recall, training on synthetic paired features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal.modalities import get_modality
from multimodal.modalities.base import FeatureInput
from multimodal.models.bundle import load_encoders
from multimodal.models.model import Embedder
from multimodal.storage.dataset import SplitData
from multimodal.training.align import (
    AlignConfig,
    build_encoders,
    encode_present,
    load_cached_features,
    pair_loss,
    retrieval_recall,
    train_alignment,
)
from tests.unit.conftest import TINY_SPECS, align_config, repo_params, write_aligned

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")


def paired(n: int, dim: int = 8, seed: int = 0, missing_b: list[int] | None = None) -> SplitData:
    """Modality b is a fixed linear map of modality a plus a little noise: a learnable pairing."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=torch.Generator().manual_seed(99))
    a = torch.randn(n, dim, generator=gen)
    b = a @ mixing + 0.05 * torch.randn(n, dim, generator=gen)
    masks = {"a": torch.ones(n, dtype=torch.bool), "b": torch.ones(n, dtype=torch.bool)}
    if missing_b:
        masks["b"][missing_b] = False
        b[missing_b] = 0.0
    return SplitData([str(i) for i in range(n)], torch.zeros(n, dtype=torch.long),
                     {"a": {"features": a}, "b": {"features": b}}, masks)


def mirrored_embedder(dim: int = 8, out: int = 6) -> Embedder:
    """Two cached-feature modalities whose projections are identical: equal features -> equal embeddings."""
    torch.manual_seed(0)
    embedder = Embedder({"a": FeatureInput(dim), "b": FeatureInput(dim)}, out)
    embedder.projections["b"].load_state_dict(embedder.projections["a"].state_dict())
    return embedder


def test_pair_loss_prefers_aligned_pairs():
    gen = torch.Generator().manual_seed(0)
    za = torch.randn(16, 8, generator=gen)
    zb = za + 0.1 * torch.randn(16, 8, generator=gen)
    masks = {"a": torch.ones(16, dtype=torch.bool), "b": torch.ones(16, dtype=torch.bool)}
    aligned = pair_loss({"a": za, "b": zb}, masks, temperature=0.1)
    shuffled = pair_loss({"a": za, "b": zb[torch.randperm(16, generator=gen)]}, masks, temperature=0.1)
    assert aligned.item() < 0.1
    assert shuffled.item() > 1.0
    # Symmetric in its two modalities.
    assert pair_loss({"b": zb, "a": za}, masks, 0.1).item() == pytest.approx(aligned.item(), rel=1e-5)


def test_pair_loss_uses_only_rows_with_both_modalities():
    gen = torch.Generator().manual_seed(0)
    za = torch.randn(10, 8, generator=gen)
    zb = za.clone()
    zb[7:] = torch.randn(3, 8, generator=gen)  # garbage where b is absent
    masks = {"a": torch.ones(10, dtype=torch.bool), "b": torch.arange(10) < 7}
    masked = pair_loss({"a": za, "b": zb}, masks, 0.1)
    reference = pair_loss({"a": za[:7], "b": zb[:7]}, {"a": masks["a"][:7], "b": masks["b"][:7]}, 0.1)
    assert masked.item() == pytest.approx(reference.item(), rel=1e-6)
    # Fewer than two shared rows: no pair term, a zero that still supports backward().
    lonely = {"a": masks["a"], "b": torch.arange(10) == 0}
    empty = pair_loss({"a": za, "b": zb}, lonely, 0.1)
    assert empty.item() == 0.0 and empty.requires_grad
    empty.backward()


def test_pair_loss_averages_over_all_pairs():
    gen = torch.Generator().manual_seed(0)
    z = {m: torch.randn(12, 4, generator=gen) for m in "abc"}
    masks = {m: torch.ones(12, dtype=torch.bool) for m in "abc"}
    pairs = [pair_loss({x: z[x], y: z[y]}, masks, 0.2).item() for x, y in (("a", "b"), ("a", "c"), ("b", "c"))]
    assert pair_loss(z, masks, 0.2).item() == pytest.approx(sum(pairs) / 3, rel=1e-5)


def test_retrieval_recall_is_perfect_for_identical_embeddings():
    data = paired(20)
    data.inputs["b"] = {"features": data.inputs["a"]["features"].clone()}
    recall = retrieval_recall(mirrored_embedder(), data, CPU, ks=(1, 5), batch_size=7)
    assert set(recall) == {"a_to_b_recall@1", "a_to_b_recall@5", "b_to_a_recall@1", "b_to_a_recall@5",
                           "a_to_b_same_label@1", "b_to_a_same_label@1"}
    assert all(v == 1.0 for v in recall.values()), recall


def test_retrieval_recall_ignores_rows_missing_a_modality():
    data = paired(20, missing_b=[3, 8, 15])
    data.inputs["b"] = {"features": data.inputs["a"]["features"].clone()}
    data.inputs["b"]["features"][[3, 8, 15]] = 0.0  # what a dense split holds for absent rows
    recall = retrieval_recall(mirrored_embedder(), data, CPU, ks=(1,))
    assert recall == {"a_to_b_recall@1": 1.0, "b_to_a_recall@1": 1.0, "a_to_b_same_label@1": 1.0,
                      "b_to_a_same_label@1": 1.0}
    # The same rows counted as present would break retrieval: the masks are what protects it.
    data.masks["b"][:] = True
    assert retrieval_recall(mirrored_embedder(), data, CPU, ks=(1,))["a_to_b_recall@1"] < 1.0


def test_retrieval_recall_drops_for_unrelated_embeddings():
    data = paired(40)  # b is a mixing of a: unrelated for an untrained mirrored embedder
    recall = retrieval_recall(mirrored_embedder(), data, CPU, ks=(1, 40))
    assert recall["a_to_b_recall@1"] < 0.5
    assert recall["a_to_b_recall@40"] == 1.0  # k >= number of candidates always retrieves


def test_train_alignment_lowers_loss_and_improves_retrieval():
    train = paired(128, seed=0)
    val = paired(64, seed=1)
    torch.manual_seed(0)
    embedder = Embedder({"a": FeatureInput(8), "b": FeatureInput(8)}, 16)
    before = retrieval_recall(embedder, val, CPU, ks=(1,))["a_to_b_recall@1"]
    history = train_alignment(embedder, train, align_config(dim=16, epochs=6, batch_size=32, lr=1e-2,
                                                           temperature=0.1, seed=0), CPU)
    assert len(history) == 6
    assert history[-1] < 0.5 * history[0]
    after = retrieval_recall(embedder, val, CPU, ks=(1,))["a_to_b_recall@1"]
    assert after > max(0.6, before + 0.3), (before, after)


def test_train_alignment_is_deterministic_and_skips_frozen_parameters():
    train = paired(64, seed=0)
    cfg = align_config(dim=8, epochs=2, batch_size=16, lr=1e-2, seed=4)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        embedder = Embedder({"a": FeatureInput(8), "b": FeatureInput(8)}, 8)
        embedder.projections["a"].requires_grad_(False)
        frozen = {k: v.clone() for k, v in embedder.projections["a"].state_dict().items()}
        runs.append(train_alignment(embedder, train, cfg, CPU))
        assert all(torch.equal(v, embedder.projections["a"].state_dict()[k]) for k, v in frozen.items())
    assert runs[0] == runs[1]


def test_collapsed_embedder_does_not_get_perfect_recall():
    data = paired(20)
    embedder = mirrored_embedder()
    with torch.no_grad():
        for m in ("a", "b"):
            embedder.projections[m][0].weight.zero_()  # constant output whatever the input
            embedder.projections[m][1].bias.fill_(0.5)
    recall = retrieval_recall(embedder, data, CPU, ks=(1,))
    assert recall["a_to_b_recall@1"] <= 0.5


def test_same_label_retrieval_sees_classes_that_instance_recall_cannot():
    """b holds only its row's class (as the demo hints do): instances tie within a class, classes still match."""
    data = paired(30)
    data.labels = torch.arange(30) % 3
    prototypes = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    data.inputs["a"] = {"features": prototypes[data.labels] + 0.01 * torch.randn(30, 8)}
    data.inputs["b"] = {"features": prototypes[data.labels].clone()}
    recall = retrieval_recall(mirrored_embedder(), data, CPU, ks=(1,))
    assert recall["a_to_b_recall@1"] < 0.2  # ten rows per class tie for every query
    assert recall["a_to_b_same_label@1"] == 1.0


def test_align_config_comes_from_params_and_its_weight_decay_is_used():
    params = repo_params()
    cfg = AlignConfig.from_params(params)
    assert (cfg.dim, cfg.lr, cfg.weight_decay, cfg.seed) == (params.align.dim, params.align.lr,
                                                             params.align.weight_decay, params.base.seed)
    train = paired(64, seed=0)
    finals = []
    for decay in (0.0, 0.5):
        torch.manual_seed(0)
        embedder = Embedder({"a": FeatureInput(8), "b": FeatureInput(8)}, 8)
        train_alignment(embedder, train, align_config(dim=8, epochs=2, batch_size=16, lr=1e-2, weight_decay=decay,
                                                      seed=4), CPU)
        finals.append(embedder.projections["a"][0].weight.detach().clone())
    # AdamW's decoupled decay shrinks the weights: a larger decay gives a smaller norm.
    assert finals[1].norm() < finals[0].norm()


def processed(n: int, modalities: list[str], seed: int) -> SplitData:
    """`n` rows of images, waves and texts through the real processors of TINY_SPECS; row 0 lacks every modality
    but the first."""
    rng = np.random.default_rng(seed)
    items = {"image": [Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)) for _ in range(n)],
             "audio": [(0.3 * np.sin(2 * np.pi * (200 + 90 * i) * np.arange(3000) / 16000)).astype(np.float32)
                       for i in range(n)],
             "text": [" ".join(["red", "green", "blue"][: 1 + i % 3]) for i in range(n)]}
    inputs, masks = {}, {}
    for k, m in enumerate(modalities):
        mod = get_modality(m)
        inputs[m] = mod.process(mod.build_processor(TINY_SPECS[m]), items[m], TINY_SPECS[m])
        masks[m] = torch.arange(n) > 0 if k else torch.ones(n, dtype=torch.bool)
        for v in inputs[m].values():
            v[~masks[m]] = 0
    return SplitData([f"{seed}-{i}" for i in range(n)], torch.arange(n) % 3, inputs, masks)


def test_align_saves_the_encoders_it_ran_and_reloaded_they_give_its_features_bit_for_bit(tmp_path):
    """Frozen (a config-built text encoder: random weights no params can rebuild) and trained ones alike."""
    modalities = ["image", "audio", "text"]
    raw = {s: processed(6, modalities, seed) for seed, s in enumerate(("train", "val", "test"))}
    torch.manual_seed(0)
    norm = {"image": "per_image", "audio": "utterance_bins"}
    encoders = build_encoders(TINY_SPECS, modalities, ["text"], norm)
    before = {m: e.state_dict()["model.embeddings.patch_embeddings.projection.weight"].clone()
              for m, e in encoders.items() if m != "text"}
    write_aligned(tmp_path, raw, encoders, ["text"], TINY_SPECS, dim=8, epochs=1, batch_size=4, input_norm=norm)
    trained = {m for m, w in before.items()
               if not torch.equal(w, encoders[m].state_dict()["model.embeddings.patch_embeddings.projection.weight"])}
    assert trained == {"image", "audio"}  # align trained these: their saved weights are the aligned ones
    loaded = load_encoders(tmp_path, modalities)
    for split, data in raw.items():
        cached = load_cached_features(tmp_path, data, split, modalities)
        for m in modalities:
            ran = encode_present(encoders[m], data, m, 4, CPU)
            again = encode_present(loaded[m], data, m, 4, CPU)
            assert torch.equal(again, ran), (split, m)
            assert torch.equal(again, cached.inputs[m]["features"][:]), (split, m)
