"""The supervised loop on synthetic cached-feature modalities: learning, early stopping, determinism, knobs."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from multimodal.models.model import ModelSpec, build_model
from multimodal.storage.dataset import SplitData
from multimodal.training.train import drop_modalities, fit, predict, warmup_cosine
from tests.unit.conftest import knobs, train_config

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")
LABELS = ["x", "y", "z"]


def new_model(fusion: str = "concat", dropout: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    spec = ModelSpec(["a", "b"], {"a": {"features": 8}, "b": {"features": 8}}, LABELS, dim=16, fusion=fusion,
                     dropout=dropout, fusion_knobs=knobs(fusion), input_norm={})
    return build_model(spec)


def stuck_val(n: int = 6) -> SplitData:
    """Identical inputs with evenly spread labels: accuracy is exactly 1/3 whatever the model does."""
    inputs = {m: {"features": torch.ones(n, 8)} for m in ("a", "b")}
    masks = {m: torch.ones(n, dtype=torch.bool) for m in ("a", "b")}
    return SplitData([str(i) for i in range(n)], torch.arange(n) % 3, inputs, masks)


@pytest.mark.parametrize("fusion", ["concat", "gated", "attention"])
def test_fit_learns_a_separable_task(make_split, fusion):
    train = make_split(240, missing=0.2, seed=0)
    val = make_split(90, missing=0.2, seed=1)
    model = new_model(fusion)
    cfg = train_config(lr=1e-2, fusion=fusion, dropout=0.0, batch_size=32, max_epochs=6, patience=6, seed=0)
    result = fit(model, train, val, cfg, CPU)
    losses = [m.train_loss for m in result.history]
    assert len(losses) == 6
    assert losses[-1] < 0.5 * losses[0]
    assert result.best is not None and result.best.val_accuracy >= 0.9
    # The model is left holding the best-on-val weights.
    probs = predict(model, val, 64, CPU)
    assert probs.shape == (90, 3)
    assert torch.allclose(probs.sum(dim=1), torch.ones(90), atol=1e-5)
    assert (probs.argmax(dim=1) == val.labels).float().mean().item() == pytest.approx(result.best.val_accuracy)


def test_early_stopping_and_best_weights_restored(make_split):
    train = make_split(60, seed=0)
    model = new_model()
    snapshots = []
    cfg = train_config(lr=1e-2, dropout=0.0, batch_size=16, max_epochs=20, patience=2, seed=0)
    result = fit(model, train, stuck_val(), cfg, CPU,
                 on_epoch=lambda m, mod, _: snapshots.append({k: v.clone() for k, v in mod.state_dict().items()}))
    assert [m.epoch for m in result.history] == [1, 2, 3]
    assert [m.improved for m in result.history] == [True, False, False]
    assert all(m.val_accuracy == pytest.approx(1 / 3) for m in result.history)
    assert result.best.epoch == 1 and len(snapshots) == 3
    # Weights changed after epoch 1, yet the model ends with epoch 1's weights.
    state = model.state_dict()
    assert any(not torch.equal(snapshots[0][k], snapshots[2][k]) for k in state)
    assert all(torch.equal(state[k], snapshots[0][k]) for k in state)
    assert all(torch.equal(state[k], result.best_state[k]) for k in state)


def test_same_seed_same_history(make_split):
    train = make_split(64, missing=0.3, seed=0)
    val = make_split(30, seed=1)
    # Dropout and modality dropout on: both must be driven by the seed.
    cfg = train_config(lr=5e-3, dropout=0.3, modality_dropout=0.3, batch_size=16, max_epochs=3, seed=11)
    runs = []
    for _ in range(2):
        model = new_model(dropout=0.3)
        result = fit(model, train, val, cfg, CPU)
        runs.append(([(m.train_loss, m.val_loss, m.val_accuracy) for m in result.history], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    # A different seed really changes the run (the check above is not vacuous).
    other = fit(new_model(dropout=0.3), train, val, replace(cfg, seed=12), CPU)
    assert [m.train_loss for m in other.history] != [t for t, _, _ in runs[0][0]]


def test_grad_accumulation_matches_a_bigger_batch(make_split):
    """accum=2 over batches of 8 is the same optimisation as batches of 16 (no dropout, same shuffles)."""
    train = make_split(96, seed=0)
    val = make_split(30, seed=1)
    common = dict(lr=1e-2, dropout=0.0, modality_dropout=0.0, max_epochs=2, patience=5, seed=3)
    accum = fit(new_model(), train, val, train_config(batch_size=8, grad_accum_steps=2, **common), CPU)
    big = fit(new_model(), train, val, train_config(batch_size=16, grad_accum_steps=1, **common), CPU)
    assert len(accum.history) == 2
    for a, b in zip(accum.history, big.history):
        assert math.isfinite(a.train_loss)
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4)
    # ...and differs from plain batches of 8 (twice as many optimizer steps).
    small = fit(new_model(), train, val, train_config(batch_size=8, grad_accum_steps=1, **common), CPU)
    assert small.history[1].train_loss != pytest.approx(accum.history[1].train_loss, rel=1e-4)


def test_grad_accumulation_with_a_partial_last_group(make_split):
    train = make_split(40, seed=0)  # 5 batches of 8 -> optimizer steps after batches 2, 4 and 5
    val = make_split(30, seed=1)
    result = fit(new_model(), train, val, train_config(lr=1e-2, batch_size=8, grad_accum_steps=2, max_epochs=3), CPU)
    assert len(result.history) == 3
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_drop_modalities_never_empties_a_row():
    gen = torch.Generator().manual_seed(0)
    n = 2000
    present = torch.rand(n, 3, generator=gen) < 0.7
    present[:50] = False  # rows that never had anything stay empty
    masks = {m: present[:, i] for i, m in enumerate("abc")}
    out = drop_modalities(masks, 0.6, gen)
    after = torch.stack([out[m] for m in "abc"], dim=1)
    assert not (after & ~present).any()                  # only hides, never invents
    assert torch.equal(after.any(dim=1), present.any(dim=1))  # a row that had one keeps one
    dropped = (present & ~after).sum().item() / present.sum().item()
    # Hidden share: below the rate, since rows that lost everything get all their modalities back.
    assert 0.2 < dropped < 0.6
    # Rate 0 and a single modality are left alone.
    assert drop_modalities(masks, 0.0, gen) is masks
    single = {"a": masks["a"]}
    assert drop_modalities(single, 0.9, gen) is single


def test_warmup_cosine_shape():
    factor = warmup_cosine(100, 0.1)
    values = [factor(s) for s in range(101)]
    assert values[0] == pytest.approx(0.1)
    assert values[9] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(values[:9], values[1:10]))      # rises during warm-up
    assert all(b <= a for a, b in zip(values[9:], values[10:]))      # then never rises
    assert values[55] == pytest.approx(0.5, abs=0.02)                 # cosine midpoint
    assert values[99] < 0.01 and values[100] == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(10, 0.0)(0) == 1.0  # no warm-up: starts at the full rate


class Interrupted(Exception):
    pass


def test_resume_after_interruption_is_bit_identical(make_split, tmp_path):
    train = make_split(64, missing=0.3, seed=0)
    val = make_split(30, missing=0.3, seed=1)
    # Dropout, modality dropout and accumulation on: every RNG and the optimizer state must carry over.
    cfg = train_config(lr=5e-3, dropout=0.3, modality_dropout=0.3, batch_size=16, grad_accum_steps=2,
                      max_epochs=5, patience=5, seed=4)
    uninterrupted_model = new_model("gated", dropout=0.3)
    uninterrupted = fit(uninterrupted_model, train, val, cfg, CPU)

    def stop_after_two(metrics, model, save_state):
        save_state(tmp_path / "state")
        if metrics.epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(new_model("gated", dropout=0.3), train, val, cfg, CPU, on_epoch=stop_after_two)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["state.json", "state.safetensors"]
    epochs_seen = []
    resumed_model = new_model("gated", dropout=0.3, seed=99)  # its own weights are replaced by the saved ones
    resumed = fit(resumed_model, train, val, cfg, CPU, on_epoch=lambda m, model, save: epochs_seen.append(m.epoch),
                  resume_from=tmp_path / "state")
    assert epochs_seen == [3, 4, 5]
    assert resumed.history == uninterrupted.history
    assert resumed.best == uninterrupted.best
    final, expected = resumed_model.state_dict(), uninterrupted_model.state_dict()
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_resume_keeps_an_early_stop_decided_before_the_interruption(make_split, tmp_path):
    def interrupt(metrics, model, save_state):
        save_state(tmp_path / "state")
        if metrics.epoch == 3:
            raise Interrupted

    cfg = train_config(lr=1e-2, dropout=0.0, batch_size=16, max_epochs=20, patience=2, seed=0)
    with pytest.raises(Interrupted):
        fit(new_model(), make_split(60, seed=0), stuck_val(), cfg, CPU, on_epoch=interrupt)
    resumed = fit(new_model(), make_split(60, seed=0), stuck_val(), cfg, CPU, resume_from=tmp_path / "state")
    assert [m.epoch for m in resumed.history] == [1, 2, 3]  # epoch 3 was already two without improvement


def test_epoch_limit_stops_early_on_the_same_schedule(make_split):
    train, val = make_split(64, seed=0), make_split(30, seed=1)
    common = dict(lr=5e-3, dropout=0.0, batch_size=16, max_epochs=6, patience=6, seed=2)
    full = fit(new_model(), train, val, train_config(**common), CPU)
    limited = fit(new_model(), train, val, train_config(epoch_limit=3, **common), CPU)
    assert [m.epoch for m in limited.history] == [1, 2, 3]
    # Same LR schedule (laid out over max_epochs): the first three epochs are the same run.
    assert limited.history == full.history[:3]
    shorter = fit(new_model(), train, val, train_config(**{**common, "max_epochs": 3}), CPU)
    assert shorter.history != limited.history


def test_a_unimodal_model_is_validated_only_on_rows_that_have_its_modality(make_split):
    # Half the val rows lack modality `a`: a model of `a` alone is judged on the other half, as it is scored.
    train, val = make_split(120, seed=0).only(["a"]), make_split(60, seed=1).only(["a"])
    val.masks["a"][::2] = False
    torch.manual_seed(0)
    spec = ModelSpec(["a"], {"a": {"features": 8}}, LABELS, dim=16, fusion="concat", dropout=0.0,
                     fusion_knobs=knobs("concat"), input_norm={})
    model = build_model(spec)
    cfg = train_config(lr=1e-2, batch_size=32, max_epochs=2, patience=2, seed=0)
    result = fit(model, train, val, cfg, CPU)
    present = val.take(val.masks["a"].nonzero().flatten())
    accuracy = (predict(model, present, 64, CPU).argmax(1) == present.labels).float().mean().item()
    assert result.best.val_accuracy == pytest.approx(accuracy)
    everywhere = (predict(model, val, 64, CPU).argmax(1) == val.labels).float().mean().item()
    assert everywhere != pytest.approx(accuracy)  # the old, all-rows figure differs
