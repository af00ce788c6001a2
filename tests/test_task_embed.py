"""Feature extraction: pooling ignores padding, cosine and AUC by hand, real MiniLM vectors make sense."""

from __future__ import annotations

import numpy as np
import pytest

from bertkit.tasks.embed import best_threshold, cosine_similarity, embed, load, roc_auc


def test_cosine_auc_threshold_by_hand():
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0]))[0] == pytest.approx(2**-0.5)
    assert cosine_similarity(np.zeros((1, 2)), np.ones((1, 2)))[0] == 0.0
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs won 3 of 4
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1])) == pytest.approx(0.75)
    assert best_threshold(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.5, 0.1])) == pytest.approx(0.8)


def test_real_minilm_vectors(minilm_dir):
    model, tok = load(minilm_dir)
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    vectors = embed(model, tok, texts)
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    similar = cosine_similarity(vectors[0], vectors[1])[0]
    unrelated = cosine_similarity(vectors[0], vectors[2])[0]
    assert similar > 0.6 and unrelated < 0.2
    # mean pooling ignores padding: one text alone == the same text in a padded batch
    alone = embed(model, tok, [texts[1]])
    assert np.allclose(alone[0], vectors[1], atol=1e-5)
    for pooling in ("cls", "pooler"):
        assert embed(model, tok, texts[:1], pooling).shape == (1, 384)
    with pytest.raises(ValueError, match="pooling must be one of"):
        embed(model, tok, texts, "max")
