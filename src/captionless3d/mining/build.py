"""Every prior store of a run from its ``mining`` settings: the one function the pipeline calls.

``mining.scope``: ``category`` (the paper: dense per-category matrices, :class:`~captionless3d.mining.store.PriorStore`)
or ``global`` (label-free sparse top-k, :class:`~captionless3d.mining.sparse.SparsePriorStore`); ``mining.kinds``:
``[]`` (plain InfoNCE), ``[i2i]``, ``[i2l2]`` or both (AVG); ``mining.guard``: the optional false-negative guard
around every store (:mod:`.guard`). Each store is loaded from ``<cache_dir>/priors`` (``priors_global``) when its
manifest matches the feature store, the data and the options, else built there. δ (``mining.delta``) is applied at
lookup and is not part of any cache key.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from captionless3d.errors import ConfigError
from captionless3d.mining.guard import guard_priors
from captionless3d.mining.priors import DEFAULT_DELTA, check_delta
from captionless3d.mining.store import PRIOR_KINDS, ensure_prior_store
from captionless3d.utils.manifest import stable_hash

__all__ = ["MINING_SCOPES", "ensure_prior_stores"]

MINING_SCOPES = ("category", "global")


def ensure_prior_stores(mining: Mapping[str, Any], *, features: Any, collection: Any,
                        cache_dir: str | os.PathLike) -> list[Any]:
    """The prior stores of ``mining`` (a plain mapping: the resolved ``mining`` config) over the collection's
    student-train objects, in ``mining.kinds`` order, guarded when ``mining.guard`` is set.

    Args:
        mining: ``kinds``, ``scope`` (default ``category``), ``delta`` (default :data:`DEFAULT_DELTA`), ``options``
            (build options of the kinds), ``guard`` (``null`` or ``{threshold, weight}``; ``weight`` defaults to each
            store's δ), and for ``scope: global`` also ``k``, ``block_size``, ``device``.
        features: the run's feature store (``key``, ``view_emb``, ``landmark_emb``, ``landmark_labels``).
        collection: the run's collection (``fingerprint``, ``labels``, ``splits``).
        cache_dir: the run's ``paths.cache_dir``.

    Raises :class:`ConfigError` naming the ``mining.*`` key for an unknown kind or scope or a bad δ.
    """
    kinds = list(mining.get("kinds") or [])
    unknown = sorted(set(kinds) - set(PRIOR_KINDS))
    if unknown:
        raise ConfigError(f"mining.kinds has unknown entries {unknown}; known: i2i, i2l2 (AVG = [i2i, i2l2])")
    scope = mining.get("scope", "category")
    if scope not in MINING_SCOPES:
        raise ConfigError("mining.scope must be 'category' (paper: dense per-category) or 'global' (sparse top-k), "
                          f"got {scope!r}")
    delta = check_delta(mining.get("delta", DEFAULT_DELTA))
    options = dict(mining.get("options") or {})
    members = collection.splits == "train"
    key = {"features": stable_hash(features.key), "data": collection.fingerprint, "member_split": "train"}
    stores: list[Any] = []
    for kind in kinds:
        if scope == "global":
            from captionless3d.mining.sparse import ensure_sparse_prior

            stores.append(ensure_sparse_prior(
                Path(cache_dir) / "priors_global", kind, features.view_emb, members, key=key,
                k=int(mining.get("k", 64)), landmark_emb=features.landmark_emb, delta=delta,
                block_size=int(mining.get("block_size", 4096)), device=mining.get("device", "cpu"), **options,
            ))
        else:
            stores.append(ensure_prior_store(Path(cache_dir) / "priors", kind, features, collection.labels, members,
                                             key=key, delta=delta, **options))
    guard = mining.get("guard")
    if guard is None:
        return stores
    if not isinstance(guard, Mapping) or "threshold" not in guard:
        raise ConfigError(f"mining.guard: expected null or {{threshold: ..., weight: ...}}, got {guard!r}")
    return guard_priors(stores, guard["threshold"], guard.get("weight"))
