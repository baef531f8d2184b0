"""False-negative guard: near-duplicate pairs get a reduced prior (beyond the paper).

The paper has no false-negative handling (docs/method.md): the most CLIP-similar same-category shapes get
the *largest* denominator weights, so near-duplicates (common in ShapeNet) are pushed apart hardest.
:class:`FalseNegativeGuard` wraps any pairwise prior (anything with ``pairs(rows, cols) -> (R, C)``, e.g. a
:class:`~captionless3d.mining.PriorStore`) and replaces ``l_ij`` by ``weight`` wherever ``l_ij > threshold`` and
``rows[r] != cols[c]`` (self pairs keep their prior, 1 for a PriorStore). Everything downstream is unchanged: the loss
row-normalises the guarded ``l`` as usual (``m_i`` includes the replaced values), so

- ``weight = delta`` (the default: the wrapped prior's δ) treats a near-duplicate like a cross-category negative;
- ``weight = 0`` removes it from the denominator (masking; the loss handles ``log 0 = -inf``).

The threshold is on the prior's own scale: I2I ``l = (cos+1)/2`` (near-duplicates ~0.98-1), (I2L)² ``l = 1/(1+d)``
(scale depends on the landmark profile). :func:`guard_priors` accepts one threshold for all priors or one per prior
kind.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from captionless3d.errors import ConfigError, DataError

__all__ = ["FalseNegativeGuard", "guard_priors"]


def _as_index(idx: Any, device: torch.device) -> torch.Tensor:
    t = idx if isinstance(idx, torch.Tensor) else torch.as_tensor(np.asarray(idx))
    if t.ndim != 1:
        raise DataError(f"FalseNegativeGuard.pairs: indices must be 1-d, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.long)


class FalseNegativeGuard:
    """A pairwise prior with near-duplicates down-weighted. See the module docstring.

    Args:
        prior: anything with ``pairs(rows, cols) -> Tensor (R, C)``.
        threshold: pairs (other than self pairs) with prior ``> threshold`` count as near-duplicates.
        weight: the prior they get instead (>= 0); ``None``: the wrapped prior's ``delta``.

    Other attributes (``kind``, ``delta``, ``category_matrix``, ...) are those of the wrapped prior, unguarded.
    ``last_guarded`` is the number of guarded pairs of the last :meth:`pairs` call (a 0-d tensor on the prior's
    device, not synchronised; ``int(...)`` it to log).
    """

    def __init__(self, prior: Any, threshold: float, weight: float | None = None) -> None:
        if not callable(getattr(prior, "pairs", None)):
            raise ConfigError(f"mining.guard: the wrapped prior {type(prior).__name__} has no pairs(rows, cols)")
        if weight is None:
            weight = getattr(prior, "delta", None)
            if weight is None:
                raise ConfigError(f"mining.guard.weight: the wrapped prior {type(prior).__name__} has no delta; "
                                  "give a weight")
        try:
            threshold, weight = float(threshold), float(weight)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"mining.guard: threshold and weight must be numbers, got {threshold!r}, "
                              f"{weight!r}") from exc
        if not math.isfinite(threshold):
            raise ConfigError(f"mining.guard.threshold must be finite, got {threshold!r}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"mining.guard.weight must be finite and >= 0, got {weight!r}")
        self.prior = prior
        self.threshold = threshold
        self.weight = weight
        self.last_guarded: torch.Tensor | None = None

    def pairs(self, rows: Any, cols: Any) -> torch.Tensor:
        """The wrapped prior's ``(R, C)`` pairs with ``l > threshold`` (``rows[r] != cols[c]``) set to ``weight``."""
        l = self.prior.pairs(rows, cols)
        r = _as_index(rows, l.device)
        c = _as_index(cols, l.device)
        if l.shape != (r.numel(), c.numel()):
            raise DataError(f"FalseNegativeGuard: prior returned shape {tuple(l.shape)} "
                            f"for {r.numel()} x {c.numel()} pairs")
        near = (l > self.threshold) & (r[:, None] != c[None, :])
        self.last_guarded = near.sum()
        return torch.where(near, torch.full((), self.weight, dtype=l.dtype, device=l.device), l)

    __call__ = pairs

    def to(self, device: str | torch.device) -> FalseNegativeGuard:
        """Move the wrapped prior (if it can move); returns ``self``."""
        if hasattr(self.prior, "to"):
            moved = self.prior.to(device)
            if moved is not None:
                self.prior = moved
        return self

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found normally; "prior" guard avoids recursion while unpickling
        if name == "prior" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.prior, name)

    def __repr__(self) -> str:
        return f"FalseNegativeGuard({self.prior!r}, threshold={self.threshold}, weight={self.weight})"


def guard_priors(
    priors: Sequence[Any], threshold: float | Mapping[str, float] | None, weight: float | None = None
) -> list[Any]:
    """Wrap every prior in a :class:`FalseNegativeGuard` (``threshold=None``: return them unchanged).

    ``threshold`` is one number for all priors or a mapping ``{kind: threshold}`` (e.g. ``{i2i: 0.98, i2l2: 0.9}``),
    looked up by each prior's ``kind``; a kind missing from the mapping is left unguarded. ``weight``: the prior a
    guarded pair gets (``None``: each prior's own δ).
    """
    priors = list(priors)
    if threshold is None:
        return priors
    out = []
    for prior in priors:
        if isinstance(threshold, Mapping):
            kind = getattr(prior, "kind", None)
            unknown = sorted(set(threshold) - {getattr(p, "kind", None) for p in priors})
            if unknown:
                raise ConfigError(f"mining.guard.threshold: no prior of kind(s) {unknown} (priors: "
                                  f"{[getattr(p, 'kind', None) for p in priors]})")
            out.append(FalseNegativeGuard(prior, threshold[kind], weight) if kind in threshold else prior)
        else:
            out.append(FalseNegativeGuard(prior, threshold, weight))
    return out
