"""Neighbour ranking from prior stores: each student-train object's most prior-similar same-category objects.

The hard-group batch sampler (:class:`captionless3d.training.sampler.HardGroupBatchSampler`) fills batches with an
object and some of these neighbours; :meth:`captionless3d.training.datamodule.PointViewDataModule.attach` computes
them from the run's prior stores.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from captionless3d.errors import ConfigError, DataError

__all__ = ["neighbours_from_prior"]


def neighbours_from_prior(priors: Any, train_indices: np.ndarray | Sequence[int], k: int) -> np.ndarray:
    """Per train object, its ``k`` most prior-similar *same-category train* objects, as dataset positions.

    Args:
        priors: a :class:`~captionless3d.mining.PriorStore` (or a sequence of them, e.g. AVG's [i2i, i2l2]; or
            anything with ``categories``, ``category_members(label)`` and ``category_matrix(label)``, such as a
            :class:`~captionless3d.mining.guard.FalseNegativeGuard`, which delegates these to the store it wraps).
        train_indices: ``(n,)`` global object indices of the train dataset in dataset order (the datamodule's
            ``collection.indices(train_split)``); position ``p`` of the result refers to ``train_indices[p]``.
        k: neighbours per object.

    Returns:
        ``(n, k)`` int64 of dataset positions into ``train_indices``, most similar first (ties: smaller position
        first), ``-1``-padded where the category has fewer than ``k + 1`` train members or the object has no prior.

    Ranking: one store ranks by its prior ``l``. Several stores rank by the mean of their row-normalised priors
    ``l_ij / m_i`` (``m_i`` = mean of ``l_ij`` over the other same-category train objects), the within-category
    analogue of AVG's averaged row-normalised weights. All stores must have the same members per category.
    """
    if hasattr(priors, "category_members"):
        priors = [priors]
    priors = list(priors)
    if not priors:
        raise ConfigError("neighbours_from_prior: no prior store given (the sampler needs mining priors)")
    if isinstance(k, bool) or int(k) < 1:
        raise ConfigError(f"data.loader.sampler.topk must be >= 1, got {k!r}")
    k = int(k)
    train = np.asarray(train_indices, dtype=np.int64).reshape(-1)
    n = train.size
    if np.unique(train).size != n:
        raise DataError("neighbours_from_prior: train_indices has repeated objects")
    out = np.full((n, k), -1, dtype=np.int64)
    if n == 0:
        return out
    order = np.argsort(train, kind="stable")
    sorted_train = train[order]
    labels = list(priors[0].categories)
    for other in priors[1:]:
        if list(other.categories) != labels:
            raise DataError("neighbours_from_prior: the prior stores cover different categories")
    for label in labels:
        members = np.asarray(priors[0].category_members(label), dtype=np.int64)
        for other in priors[1:]:
            if not np.array_equal(np.asarray(other.category_members(label)), members):
                raise DataError(f"neighbours_from_prior: the prior stores have different members in category {label}")
        loc = np.searchsorted(sorted_train, members)
        loc = np.minimum(loc, n - 1)
        keep = sorted_train[loc] == members
        m = int(keep.sum())
        if m < 2:
            continue
        positions = order[loc[keep]]  # dataset positions of the kept members (in member order)
        score = np.zeros((m, m), dtype=np.float32)
        for prior in priors:
            mat = np.asarray(prior.category_matrix(label), dtype=np.float32)[np.ix_(keep, keep)]
            if len(priors) > 1:
                off = mat.sum(axis=1, keepdims=True) - np.diagonal(mat)[:, None]
                mean = off / (m - 1)
                mat = mat / np.where(mean > 0, mean, 1.0)
            score += mat
        np.fill_diagonal(score, -np.inf)
        kk = min(k, m - 1)
        # order by (score desc, position asc): put the columns in position order, then an exact tie-aware top-k
        col_order = np.argsort(positions, kind="stable")
        score = score[:, col_order]
        for start in range(0, m, _ROW_CHUNK):
            top = _topk_rows(score[start : start + _ROW_CHUNK], kk)
            out[positions[start : start + _ROW_CHUNK], :kk] = positions[col_order][top]
    return out


_ROW_CHUNK = 1024


def _topk_rows(score: np.ndarray, kk: int) -> np.ndarray:
    """Column indices ``(r, kk)`` of each row's ``kk`` largest entries, ordered by (value desc, column asc).

    ``argpartition`` finds each row's kk-th best value ``t``; every entry better than ``t`` is taken, and ties at
    ``t`` are taken in column order, so the result does not depend on the partition algorithm.
    """
    r, m = score.shape
    part = np.argpartition(-score, kk - 1, axis=1)[:, :kk]
    t = np.take_along_axis(score, part, axis=1).min(axis=1, keepdims=True)
    better = score > t
    tie = score == t
    quota = kk - better.sum(axis=1, keepdims=True)
    selected = better | (tie & (np.cumsum(tie, axis=1) <= quota))
    cols = np.nonzero(selected)[1].reshape(r, kk)  # column-ascending within each row
    vals = np.take_along_axis(score, cols, axis=1)
    return np.take_along_axis(cols, np.argsort(-vals, axis=1, kind="stable"), axis=1)
