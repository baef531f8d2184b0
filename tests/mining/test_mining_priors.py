"""Prior functions (docs/method.md, Priors) against direct per-element formulas."""
import math

import numpy as np
import pytest
import torch

from captionless3d.errors import ConfigError, DataError
from captionless3d.mining import i2i_prior, i2l2_prior, i2l_profiles, mean_view_embedding


def _unit(x):
    return x / np.linalg.norm(x)


@pytest.fixture
def views():
    return np.random.default_rng(0).normal(size=(7, 5, 6)).astype(np.float32)


def test_mean_view_embedding_matches_formula_and_keeps_array_kind(views):
    out = mean_view_embedding(views)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (7, 6)
    for i in range(7):
        expect = _unit(np.mean([_unit(views[i, v].astype(np.float64)) for v in range(5)], axis=0))
        np.testing.assert_allclose(out[i], expect, atol=1e-6)
    t = mean_view_embedding(torch.from_numpy(views).half())
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), out, atol=2e-3)  # fp16 input


def test_mean_pairwise_cosine_gives_mean_of_all_view_pair_cosines(views):
    e = mean_view_embedding(views, aggregate="mean_pairwise_cosine")
    l = i2i_prior(e)
    for a in range(7):
        for b in range(7):
            cos = np.mean([_unit(views[a, v]) @ _unit(views[b, w]) for v in range(5) for w in range(5)])
            assert l[a, b] == pytest.approx((cos + 1) / 2, abs=1e-5)


def test_i2i_prior_is_half_cos_plus_one(views):
    e = mean_view_embedding(views)
    l = i2i_prior(e)
    assert l.shape == (7, 7) and (l >= 0).all() and (l <= 1).all()
    np.testing.assert_allclose(l, l.T, atol=1e-7)
    np.testing.assert_allclose(np.diag(l), 1.0, atol=1e-6)
    assert l[1, 3] == pytest.approx((float(e[1] @ e[3]) + 1) / 2, abs=1e-6)


def test_i2l_profiles_raw_softmax_and_norm(views):
    rng = np.random.default_rng(1)
    e = mean_view_embedding(views)
    t = rng.normal(size=(4, 6))
    p = i2l_profiles(e, t)
    assert p.shape == (7, 4)
    assert p[2, 1] == pytest.approx(float(e[2] @ _unit(t[1])), abs=1e-6)
    ps = i2l_profiles(e, t, softmax_temperature=0.5)
    np.testing.assert_allclose(ps.sum(1), 1.0, atol=1e-6)
    raw = np.array([e[2] @ _unit(t[k]) for k in range(4)]) / 0.5
    np.testing.assert_allclose(ps[2], np.exp(raw) / np.exp(raw).sum(), atol=1e-6)
    pn = i2l_profiles(e, t, profile_norm="l2")
    np.testing.assert_allclose(np.linalg.norm(pn, axis=1), 1.0, atol=1e-6)
    with pytest.raises(DataError):
        i2l_profiles(e, rng.normal(size=(4, 5)))
    with pytest.raises(ConfigError):
        i2l_profiles(e, t, softmax_temperature=0.0)


@pytest.mark.parametrize("metric", ["l2", "l1", "js"])
def test_i2l2_prior_metrics(metric):
    rng = np.random.default_rng(2)
    p = rng.random((6, 5)).astype(np.float32)
    if metric == "js":
        p = p / p.sum(1, keepdims=True)
    l = i2l2_prior(p, metric=metric)
    for i in range(6):
        for j in range(6):
            a, b = p[i].astype(np.float64), p[j].astype(np.float64)
            if metric == "l2":
                d = math.sqrt(((a - b) ** 2).sum())
            elif metric == "l1":
                d = np.abs(a - b).sum()
            else:
                m = (a + b) / 2
                d = 0.5 * (a * np.log(a / m)).sum() + 0.5 * (b * np.log(b / m)).sum()
            assert l[i, j] == pytest.approx(1 / (1 + d), abs=1e-5)
    np.testing.assert_array_equal(np.diag(l), 1.0)


def test_js_needs_probability_profiles_and_unknown_options_fail():
    with pytest.raises(DataError):
        i2l2_prior(np.random.default_rng(0).normal(size=(3, 4)), metric="js")
    with pytest.raises(ConfigError):
        i2l2_prior(np.ones((3, 4)), metric="cosine")
    with pytest.raises(ConfigError):
        mean_view_embedding(np.ones((2, 3, 4)), aggregate="max")
    with pytest.raises(DataError):
        mean_view_embedding(np.ones((3, 4)))
    with pytest.raises(DataError):
        i2i_prior(np.full((2, 3), np.nan))
