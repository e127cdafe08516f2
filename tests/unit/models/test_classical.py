"""A saved classical model: its features are the fitted recipes' (the TF-IDF as scikit-learn computes it, from the
train rows only), and reloaded it predicts what the scikit-learn pipeline predicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from multimodal.models.classical import ClassicalModel, design_matrix
from multimodal.models.classical_features import PixelFeatures, TokenTfidf, fit_recipe
from tests.unit.conftest import TINY_SPECS


def test_token_tfidf_is_scikit_learns_with_the_vocabulary_and_idf_of_the_fit_rows():
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(1, 12, (10, 7)))
    ids[8:, :3] = 99  # a token only the rows outside the fit set hold
    mask = torch.from_numpy(rng.random((10, 7)) < 0.8).long()
    tensors = {"input_ids": ids, "attention_mask": mask}
    fit_rows = np.arange(10) < 8
    recipe = TokenTfidf.fit(tensors, fit_rows, max_tokens=50)
    assert 99 not in recipe.vocab and list(recipe.vocab) == sorted(recipe.vocab)
    counts = np.zeros((10, len(recipe.vocab)))
    for row, col in zip(*np.nonzero(mask.numpy())):
        token = int(ids[row, col])
        if token in recipe.vocab:
            counts[row, np.searchsorted(recipe.vocab, token)] += 1
    expected = TfidfTransformer(sublinear_tf=True).fit(counts[fit_rows]).transform(counts).toarray()
    np.testing.assert_allclose(recipe.apply(tensors), expected, rtol=0, atol=1e-12)
    # Applied to the rows alone (as predict does), each row's features are unchanged: nothing is refitted.
    np.testing.assert_allclose(recipe.apply({k: v[8:] for k, v in tensors.items()}), expected[8:], atol=1e-12)
    assert len(TokenTfidf.fit(tensors, fit_rows, max_tokens=3).vocab) == 3


@pytest.mark.parametrize("n_classes", [2, 3])
def test_a_reloaded_model_predicts_as_the_pipeline(tmp_path, n_classes):
    """Binary (one logit) and multinomial regressions, early-fused with a missing modality, saved and reloaded:
    scikit-learn's probabilities to 1e-12, a class without train rows at 0."""
    gen = torch.Generator().manual_seed(0)
    n = 40
    y = np.arange(n) % n_classes
    tensors = {"image": {"pixel_values": torch.from_numpy(y).float()[:, None, None, None]
                         + torch.randn(n, 3, 10, 10, generator=gen)},
               "audio": {"input_values": torch.randn(n, 6, 5, generator=gen)}}
    masks = {"image": np.ones(n, bool), "audio": np.arange(n) % 4 != 0}
    recipes, features = {}, {}
    cfg = type("Cfg", (), {"image_size": 4, "n_mfcc": 3, "max_tokens": 10})()
    for m, columns in tensors.items():
        recipes[m], features[m] = fit_recipe(m, columns, np.ones(n, bool), cfg)
    assert isinstance(recipes["image"], PixelFeatures)
    x = design_matrix(features, masks, early_fusion=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=500)).fit(x, y)
    labels = ["a", "b", "c", "d"]  # "d" has no train row
    model = ClassicalModel.from_pipeline(pipeline, labels, recipes, {m: f.shape[1] for m, f in features.items()},
                                         True, 0.5)
    model.save(tmp_path / "m", TINY_SPECS)
    again = ClassicalModel.load(tmp_path / "m")
    proba = again.predict_proba(tensors, masks)
    np.testing.assert_allclose(proba[:, :n_classes], pipeline.predict_proba(x), rtol=0, atol=1e-12)
    assert (proba[:, n_classes:] == 0).all()
    # A batch without audio at all still has its columns (zeros, missing indicator on).
    no_audio = again.predict_proba({"image": tensors["image"], "audio": {}},
                                   {"image": masks["image"], "audio": np.zeros(n, bool)})
    x_no_audio = design_matrix({**features, "audio": np.zeros_like(features["audio"])},
                               {**masks, "audio": np.zeros(n, bool)}, early_fusion=True)
    np.testing.assert_allclose(no_audio[:, :n_classes], pipeline.predict_proba(x_no_audio), atol=1e-12)
