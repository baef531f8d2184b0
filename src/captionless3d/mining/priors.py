"""Pairwise prior scores ``l_ij`` between 3D objects, computed from frozen-CLIP embeddings (docs/method.md, Priors).

Every function here is pure, works on numpy arrays or torch tensors (the result has the same kind as the first
argument; torch results stay on the input's device), and computes in float32 (fp16 feature caches are upcast).

Shapes: ``n`` objects of one category, ``V`` rendered views, ``D`` CLIP joint-space dimension, ``L`` landmark
sentences of that category.

- I2I:    ``l_ij = (cos(ē_i, ē_j) + 1) / 2`` with ``ē`` the per-object mean view embedding.
- (I2L)²: ``p_i = [cos(ē_i, t_k)]_k`` (the I2L profile of object i against the category's landmarks) and
  ``l_ij = 1 / (1 + ‖p_i − p_j‖₂)``.
- AVG is not a prior: the loss averages the two *row-normalised weight matrices*, see
  :class:`captionless3d.losses.WeightedDenominatorLoss`.

The defaults are this repository's choices where the paper is not specific (docs/method.md, Choices); the
alternatives are options, documented per function.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from captionless3d.errors import ConfigError, DataError

ArrayLike = np.ndarray | torch.Tensor

#: δ, the prior ``l_ij`` of a pair without one (objects of different categories, or an object without a prior, e.g. a
#: val/test object): the method's default (docs/method.md). Stores apply it at lookup; it is not part of their cache
#: key, so changing ``mining.delta`` rebuilds nothing.
DEFAULT_DELTA = 0.25

AGGREGATES = ("mean_embedding", "mean_pairwise_cosine")
METRICS = ("l2", "l1", "js")
PROFILE_NORMS = ("none", "l2")

__all__ = [
    "DEFAULT_DELTA",
    "check_delta",
    "AGGREGATES",
    "METRICS",
    "PROFILE_NORMS",
    "mean_view_embedding",
    "i2i_prior",
    "i2l_profiles",
    "i2l2_prior",
]


def check_delta(delta: Any) -> float:
    """``delta`` as a float; :class:`ConfigError` naming ``mining.delta`` unless it is a finite number >= 0."""
    try:
        value = float(delta)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"mining.delta: must be a number, got {delta!r}") from exc
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"mining.delta: must be finite and >= 0, got {delta!r}")
    return value


def _to_torch(x: ArrayLike, name: str, ndim: int) -> tuple[torch.Tensor, bool]:
    """(float32 tensor, was_numpy). Raises DataError on a wrong rank or non-finite values."""
    was_numpy = not isinstance(x, torch.Tensor)
    t = torch.from_numpy(np.asarray(x)) if was_numpy else x.detach()
    if t.ndim != ndim:
        raise DataError(f"{name}: expected a {ndim}-d array, got shape {tuple(t.shape)}")
    t = t.to(torch.float32)
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise DataError(f"{name}: contains NaN or Inf")
    return t, was_numpy


def _back(t: torch.Tensor, as_numpy: bool) -> ArrayLike:
    return t.cpu().numpy() if as_numpy else t


def mean_view_embedding(
    view_emb: ArrayLike, aggregate: Literal["mean_embedding", "mean_pairwise_cosine"] = "mean_embedding"
) -> ArrayLike:
    """Per-object aggregate of the V view embeddings: ``(n, V, D) -> (n, D)`` float32.

    Each view embedding is L2-normalised first, then the V views are averaged.

    - ``"mean_embedding"`` (default, docs/method.md choice 1): the average is L2-normalised again, so
      ``ē_a · ē_b = cos(ē_a, ē_b)``.
    - ``"mean_pairwise_cosine"``: the average is *not* re-normalised. Then
      ``ē_a · ē_b = (1/V²) Σ_{v,w} cos(e_{a,v}, e_{b,w})``, i.e. exactly the mean cosine over all V×V view pairs
      (the alternative), and :func:`i2i_prior` of these vectors is ``(mean pairwise cosine + 1)/2``. The self
      pair is then < 1, which does not matter: the store sets ``l_ii = 1``. (For :func:`i2l_profiles` the vectors
      are normalised again, so both aggregates give the same I2L profiles.)
    """
    if aggregate not in AGGREGATES:
        raise ConfigError(f"mining.aggregate: unknown value {aggregate!r}, expected one of {AGGREGATES}")
    v, as_np = _to_torch(view_emb, "view_emb", 3)
    if v.shape[1] == 0:
        raise DataError("view_emb: zero views per object")
    mean = F.normalize(v, dim=-1).mean(dim=1)
    if aggregate == "mean_embedding":
        mean = F.normalize(mean, dim=-1)
    return _back(mean, as_np)


def i2i_prior(mean_emb: ArrayLike) -> ArrayLike:
    """I2I prior ``(n, D) -> (n, n)``: ``l_ij = (ē_i · ē_j + 1) / 2`` in [0, 1] (docs/method.md, Priors).

    With unit-norm ``ē`` (``aggregate="mean_embedding"``) the dot product is the cosine. Values are clipped into
    [0, 1] against rounding. The diagonal is left as computed (≈1); :class:`PriorStore` sets it to exactly 1.
    """
    e, as_np = _to_torch(mean_emb, "mean_emb", 2)
    sim = e @ e.T
    out = ((sim + 1.0) * 0.5).clamp_(0.0, 1.0)
    return _back(out, as_np)


def i2l_profiles(
    mean_emb: ArrayLike,
    landmark_emb: ArrayLike,
    softmax_temperature: float | None = None,
    profile_norm: Literal["none", "l2"] = "none",
) -> ArrayLike:
    """I2L profiles ``(n, D), (L, D) -> (n, L)``: ``p_ik = cos(ē_i, t_k)`` (default: raw cosines, docs/method.md choice
    2).

    Options (the paper's choice is not known):

    - ``softmax_temperature=T``: return ``softmax(cos / T)`` over the L landmarks instead (a probability profile;
      CLIP's own logit scale corresponds to ``T = 0.01``). Needed for ``metric="js"``.
    - ``profile_norm="l2"``: L2-normalise each profile (after the optional softmax). Worth trying if raw
      profile distances are so small that every ``1/(1+d)`` is nearly equal.
    """
    if profile_norm not in PROFILE_NORMS:
        raise ConfigError(f"mining.profile_norm: unknown value {profile_norm!r}, expected one of {PROFILE_NORMS}")
    e, as_np = _to_torch(mean_emb, "mean_emb", 2)
    t, _ = _to_torch(landmark_emb, "landmark_emb", 2)
    if t.shape[0] == 0:
        raise DataError("landmark_emb: no landmarks")
    if t.shape[1] != e.shape[1]:
        raise DataError(f"landmark_emb: dimension {t.shape[1]} differs from the image embeddings' {e.shape[1]}")
    t = t.to(e.device)
    prof = F.normalize(e, dim=-1) @ F.normalize(t, dim=-1).T
    if softmax_temperature is not None:
        if not softmax_temperature > 0:
            raise ConfigError(f"mining.softmax_temperature: must be > 0, got {softmax_temperature!r}")
        prof = torch.softmax(prof / float(softmax_temperature), dim=-1)
    if profile_norm == "l2":
        prof = F.normalize(prof, dim=-1)
    return _back(prof, as_np)


def _pairwise_js(p: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Jensen-Shannon divergence (natural log, in [0, ln 2]) between all rows of a row-stochastic ``p`` (n, L)."""
    n = p.shape[0]
    out = torch.empty(n, n, dtype=p.dtype, device=p.device)
    # x log x with 0 log 0 = 0
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-38)), torch.zeros_like(p)).sum(-1)  # (n,)
    for start in range(0, n, chunk):  # chunks over rows only: memory O(chunk * n * L), not a loop over pairs
        a = p[start : start + chunk, None, :]  # (c, 1, L)
        m = 0.5 * (a + p[None, :, :])  # (c, n, L)
        mlogm = torch.where(m > 0, m * torch.log(m.clamp_min(1e-38)), torch.zeros_like(m)).sum(-1)  # (c, n)
        # JS = H(m) - (H(a) + H(b))/2 = ½ Σ a log a + ½ Σ b log b − Σ m log m
        out[start : start + chunk] = 0.5 * plogp[start : start + chunk, None] + 0.5 * plogp[None, :] - mlogm
    return out.clamp_min_(0.0)


def i2l2_prior(profiles: ArrayLike, metric: Literal["l2", "l1", "js"] = "l2") -> ArrayLike:
    """(I2L)² prior ``(n, L) -> (n, n)``: ``l_ij = 1 / (1 + d(p_i, p_j))`` (the released code's conversion).

    ``metric``: ``"l2"`` (default, docs/method.md choice 2) Euclidean distance; ``"l1"`` Manhattan distance; ``"js"``
    Jensen-Shannon divergence (natural log) between probability profiles, which requires row-stochastic profiles,
    i.e. :func:`i2l_profiles` with ``softmax_temperature`` set (raises :class:`DataError` otherwise).
    """
    if metric not in METRICS:
        raise ConfigError(f"mining.metric: unknown value {metric!r}, expected one of {METRICS}")
    p, as_np = _to_torch(profiles, "profiles", 2)
    if metric == "l2":
        # float64 matmul form: in fp32 the cancellation in |a|²+|b|²-2ab would blur near-duplicate distances
        p64 = p.double()
        d = torch.cdist(p64, p64, p=2.0, compute_mode="use_mm_for_euclid_dist").float()
    elif metric == "l1":
        d = torch.cdist(p, p, p=1.0)
    else:
        if p.numel() and (bool((p < 0).any())
                          or not torch.allclose(p.sum(-1), torch.ones(p.shape[0], device=p.device), atol=1e-4)):
            raise DataError("profiles: metric 'js' needs probability profiles (use "
                            "i2l_profiles(softmax_temperature=T))")
        d = _pairwise_js(p)
    d.fill_diagonal_(0.0)
    out = 1.0 / (1.0 + d)
    return _back(out, as_np)


def chunked_mean_view_embedding(view_emb: Any, members: np.ndarray, aggregate: str = "mean_embedding",
                                chunk: int = 1024) -> torch.Tensor:
    """:func:`mean_view_embedding` of ``view_emb[members]`` (``(N, V, D)`` array, memmap or tensor), reading ``chunk``
    objects at a time so a memory-mapped store is never loaded whole. Returns float32 ``(len(members), D)``."""
    parts = []
    for s in range(0, members.size, chunk):
        idx = members[s : s + chunk]
        if isinstance(view_emb, torch.Tensor):
            block = view_emb[torch.from_numpy(idx).to(view_emb.device)].detach().cpu().float()
        else:
            block = torch.from_numpy(np.asarray(view_emb[idx], dtype=np.float32))
        parts.append(mean_view_embedding(block, aggregate))
    return torch.cat(parts, dim=0) if parts else torch.zeros(0, int(view_emb.shape[-1]))
