"""SparsePriorStore: label-free global priors from exact top-k neighbours, O(N·k) memory.

The dense :class:`~captionless3d.mining.PriorStore` keeps one ``n_c × n_c`` matrix per category (docs/method.md,
Priors). A label-free (global) prior instead keeps, for each member object, only its ``k`` nearest objects over the
*whole* collection (:func:`~captionless3d.mining.topk.topk_similar`), mapped to prior weights:

- ``"i2i"``: ``l = (cos + 1) / 2`` of the mean view embeddings (the paper's I2I mapping), clipped into [0, 1];
- ``"i2l2"``: ``l = 1 / (1 + d)`` with ``d`` the Euclidean distance between I2L profiles (the paper's (I2L)²
  mapping). Without labels the profile runs over *all* landmarks of all categories (``L`` = total landmarks);
- ``"custom"``: the values are already priors.

:meth:`SparsePriorStore.pairs` returns ``1`` where ``rows[r] == cols[c]``, the stored prior where the pair is
stored, and ``delta`` (δ, as the dense store; applied at lookup, not part of the cache key) for every other pair. With
``symmetric=True`` (default) the pair set is the union of both directions (``j ∈ topk(i)`` or ``i ∈ topk(j)``), so ``l``
stays symmetric like the dense priors the loss expects.

Storage: one sorted int64 key array ``row * N + col`` (global indices) and a float32 weight array; a lookup is one
``searchsorted`` over the ``R × C`` query keys (no Python loop over the batch). Save/load go through a manifest
(kind ``"sparse_prior_store"``), so a stale or corrupt store raises :class:`CacheError`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captionless3d.errors import CacheError, ConfigError, DataError
from captionless3d.mining.priors import (
    AGGREGATES,
    DEFAULT_DELTA,
    PROFILE_NORMS,
    check_delta,
    chunked_mean_view_embedding,
    i2l_profiles,
)
from captionless3d.mining.topk import topk_similar
from captionless3d.utils.atomic import atomic_directory, atomic_save_npy
from captionless3d.utils.cache import load_or_build
from captionless3d.utils.manifest import load_cache_arrays, stable_hash, write_manifest

__all__ = ["SparsePriorStore", "build_sparse_prior", "ensure_sparse_prior", "sparse_options", "SPARSE_KINDS",
           "prior_from_values"]

SPARSE_KINDS = ("i2i", "i2l2", "custom")
MANIFEST_KIND = "sparse_prior_store"
FORMAT_VERSION = 1
_RESERVED_KEY_FIELDS = ("prior_kind", "prior_options", "num_objects", "k")
_FILES = ("keys.npy", "weights.npy")


def prior_from_values(kind: str, values: np.ndarray | torch.Tensor) -> np.ndarray:
    """Map top-k ``values`` to prior weights: i2i ``(cos+1)/2`` clipped to [0, 1], i2l2 ``1/(1+d)``, custom as is."""
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    v = v.astype(np.float32, copy=False)
    if kind == "i2i":
        return np.clip((v + 1.0) * 0.5, 0.0, 1.0).astype(np.float32)
    if kind == "i2l2":
        if (v < 0).any():
            raise DataError("SparsePriorStore: i2l2 values are distances and must be >= 0")
        return (1.0 / (1.0 + v)).astype(np.float32)
    if kind == "custom":
        return v.copy()
    raise ConfigError(f"mining.kind: unknown sparse prior kind {kind!r}, expected one of {SPARSE_KINDS}")


class SparsePriorStore:
    """Sparse pairwise priors ``l_ij`` over global object indices with a vectorised :meth:`pairs` lookup.

    Build with :meth:`from_topk` or :func:`build_sparse_prior`, or :meth:`load`. Attributes: ``kind``, ``options``,
    ``delta``, ``num_objects`` (N), ``k``, ``num_pairs``, ``device``.
    """

    def __init__(
        self,
        *,
        kind: str,
        num_objects: int,
        keys: np.ndarray,
        weights: np.ndarray,
        delta: float = DEFAULT_DELTA,
        k: int = 0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Low-level constructor: ``keys`` = sorted unique int64 ``row * N + col``, ``weights`` float32 alike."""
        self.kind = str(kind)
        self.options = dict(options or {})
        self.delta = check_delta(delta)
        self.num_objects = int(num_objects)
        self.k = int(k)
        if self.num_objects < 0 or self.num_objects > 3_037_000_499:  # N² must fit into int64
            raise DataError(f"SparsePriorStore: num_objects={self.num_objects} out of range")
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        weights = np.asarray(weights, dtype=np.float32).reshape(-1)
        if keys.shape != weights.shape:
            raise DataError(f"SparsePriorStore: {keys.size} keys but {weights.size} weights")
        if keys.size:
            if keys.min() < 0 or keys.max() >= self.num_objects**2:
                raise DataError(f"SparsePriorStore: pair keys outside [0, N²) for N={self.num_objects}")
            if (np.diff(keys) <= 0).any():
                raise DataError("SparsePriorStore: pair keys must be sorted and unique")
            if not np.isfinite(weights).all() or (weights < 0).any():
                raise DataError("SparsePriorStore: prior weights must be finite and >= 0")
        self._keys = torch.from_numpy(keys)
        self._weights = torch.from_numpy(weights)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_topk(
        cls,
        values: np.ndarray | torch.Tensor,
        indices: np.ndarray | torch.Tensor,
        *,
        kind: str,
        members: np.ndarray | Sequence[int] | None = None,
        num_objects: int | None = None,
        delta: float = DEFAULT_DELTA,
        symmetric: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> SparsePriorStore:
        """From :func:`topk_similar` output ``values, indices (n, k)`` over the rows of some ``x``.

        ``members`` maps those rows (and the indices) to global object indices (default: the identity, n = N);
        ``num_objects`` is N (default ``n``, or ``max(members) + 1``). ``values`` are mapped with
        :func:`prior_from_values` (``kind``). Self pairs (if present) are dropped: ``pairs`` returns 1 for them.
        With ``symmetric`` the reverse pairs are added (a pair found in both directions keeps the larger weight).
        """
        if kind not in SPARSE_KINDS:
            raise ConfigError(f"mining.kind: unknown sparse prior kind {kind!r}, expected one of {SPARSE_KINDS}")
        idx = indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        idx = idx.astype(np.int64, copy=False)
        if idx.ndim != 2 or np.shape(values) != idx.shape:
            raise DataError(f"SparsePriorStore.from_topk: values {tuple(np.shape(values))} and indices {idx.shape} "
                            "must be the same (n, k)")
        n, k = idx.shape
        w = prior_from_values(kind, values)
        if members is None:
            glob = np.arange(n, dtype=np.int64)
        else:
            glob = np.asarray(members, dtype=np.int64).reshape(-1)
            if glob.size != n:
                raise DataError(f"SparsePriorStore.from_topk: {glob.size} members for {n} top-k rows")
            if glob.size and (glob.min() < 0 or np.unique(glob).size != glob.size):
                raise DataError("SparsePriorStore.from_topk: members must be unique non-negative indices")
        if num_objects is None:
            num_objects = int(glob.max()) + 1 if glob.size else 0
        if glob.size and glob.max() >= num_objects:
            raise DataError(f"SparsePriorStore.from_topk: members outside [0, {num_objects})")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise DataError(f"SparsePriorStore.from_topk: indices outside [0, {n})")
        rows = np.repeat(glob, k)
        cols = glob[idx.reshape(-1)]
        wf = w.reshape(-1)
        if symmetric:
            rows, cols = np.concatenate([rows, cols]), np.concatenate([cols, rows])
            wf = np.concatenate([wf, wf])
        keep = rows != cols
        keys = rows[keep] * np.int64(num_objects) + cols[keep]
        wf = wf[keep]
        # sort by key, then weight descending, keep the first of each key (the larger weight)
        order = np.lexsort((-wf, keys))
        keys, wf = keys[order], wf[order]
        first = np.ones(keys.size, dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        return cls(kind=kind, num_objects=num_objects, keys=keys[first], weights=wf[first], delta=delta, k=k,
                   options=options)

    # ------------------------------------------------------------------ lookup
    def pairs(self, rows: torch.Tensor | np.ndarray | Sequence[int],
              cols: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """``l`` for every (row, col) pair of global object indices: ``(R,), (C,) -> (R, C)`` float32 on the store's
        device: 1 on ``rows[r] == cols[c]``, the stored prior for stored pairs, ``delta`` otherwise."""
        r = self._index(rows, "rows")
        c = self._index(cols, "cols")
        q = r[:, None] * self.num_objects + c[None, :]
        if self._keys.numel() == 0:
            out = torch.full(q.shape, self.delta, dtype=torch.float32, device=q.device)
        else:
            pos = torch.searchsorted(self._keys, q.reshape(-1)).reshape(q.shape)
            pos = pos.clamp_(max=self._keys.numel() - 1)
            hit = self._keys[pos] == q
            out = torch.where(hit, self._weights[pos], torch.full((), self.delta, dtype=torch.float32, device=q.device))
        return torch.where(r[:, None] == c[None, :], torch.ones((), dtype=torch.float32, device=q.device), out)

    __call__ = pairs

    def _index(self, idx: Any, name: str) -> torch.Tensor:
        t = idx if isinstance(idx, torch.Tensor) else torch.as_tensor(np.asarray(idx))
        if t.ndim != 1:
            raise DataError(f"SparsePriorStore.pairs: {name} must be 1-d, got shape {tuple(t.shape)}")
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise DataError(f"SparsePriorStore.pairs: {name} must be integer indices, got {t.dtype}")
        t = t.to(device=self._keys.device, dtype=torch.long)
        if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_objects):
            raise DataError(f"SparsePriorStore.pairs: {name} has indices outside [0, {self.num_objects})")
        return t

    def neighbours(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored neighbours of one object: ``(global indices (m,), weights (m,))``, by weight descending."""
        i = int(index)
        if not 0 <= i < self.num_objects:
            raise DataError(f"SparsePriorStore.neighbours: index {i} outside [0, {self.num_objects})")
        keys = self._keys.cpu()
        lo = int(torch.searchsorted(keys, torch.tensor(i * self.num_objects)))
        hi = int(torch.searchsorted(keys, torch.tensor((i + 1) * self.num_objects)))
        cols = (keys[lo:hi] - i * self.num_objects).numpy()
        w = self._weights[lo:hi].cpu().numpy()
        order = np.lexsort((cols, -w))
        return cols[order], w[order]

    @property
    def num_pairs(self) -> int:
        return int(self._keys.numel())

    @property
    def weights(self) -> np.ndarray:
        """All stored prior weights (a copy), e.g. for a histogram."""
        return self._weights.cpu().numpy().copy()

    @property
    def device(self) -> torch.device:
        return self._keys.device

    @property
    def nbytes(self) -> int:
        return self._keys.numel() * 8 + self._weights.numel() * 4

    def to(self, device: str | torch.device) -> SparsePriorStore:
        """Move the lookup tensors to ``device`` (in place); returns ``self``."""
        self._keys = self._keys.to(device)
        self._weights = self._weights.to(device)
        return self

    def __repr__(self) -> str:
        return (
            f"SparsePriorStore(kind={self.kind!r}, num_objects={self.num_objects}, k={self.k}, pairs={self.num_pairs}, "
            f"delta={self.delta}, options={self.options}, device={self.device})"
        )

    # ------------------------------------------------------------------ persistence
    @staticmethod
    def manifest_key(
        kind: str, options: Mapping[str, Any], k: int, key: Mapping[str, Any] | None = None,
        num_objects: int | None = None
    ) -> dict[str, Any]:
        """The manifest key a store with these settings is saved under (for ``expected_key`` in :meth:`load`); δ is
        not part of it."""
        key = dict(key or {})
        clash = sorted(set(key) & set(_RESERVED_KEY_FIELDS))
        if clash:
            raise ConfigError(f"SparsePriorStore key fields {clash} are reserved (the store records them itself)")
        out = {**key, "prior_kind": kind, "prior_options": dict(options), "k": int(k)}
        if num_objects is not None:
            out["num_objects"] = int(num_objects)
        return out

    def save(self, directory: str | os.PathLike, key: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write ``keys.npy``, ``weights.npy`` atomically, then the manifest (``key`` + the reserved fields)."""
        full_key = self.manifest_key(self.kind, self.options, self.k, key, self.num_objects)
        with atomic_directory(directory) as tmp:  # a failed overwrite leaves the old store loadable
            atomic_save_npy(tmp / "keys.npy", self._keys.cpu().numpy())
            atomic_save_npy(tmp / "weights.npy", self._weights.cpu().numpy())
            manifest = write_manifest(
                tmp, kind=MANIFEST_KIND, version=FORMAT_VERSION, key=full_key, files=list(_FILES),
                extra={"num_pairs": self.num_pairs},
            )
        return manifest

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        expected_key: Mapping[str, Any] | None = None,
        *,
        delta: float = DEFAULT_DELTA,
        device: str | torch.device = "cpu",
        verify_checksums: bool = True,
    ) -> SparsePriorStore:
        """Load a saved store that looks up ``delta`` for the pairs it does not hold; :class:`CacheError` if the
        manifest is missing/stale or a file is corrupt/inconsistent."""
        delta = check_delta(delta)
        directory = Path(directory)
        key, arrays = load_cache_arrays(
            directory, kind=MANIFEST_KIND, version=FORMAT_VERSION, files=_FILES, expected_key=expected_key,
            required_key_fields=_RESERVED_KEY_FIELDS, verify_checksums=verify_checksums,
        )
        try:
            store = cls(
                kind=key["prior_kind"], num_objects=key["num_objects"], keys=arrays["keys.npy"],
                weights=arrays["weights.npy"],
                delta=delta, k=key["k"], options=key["prior_options"],
            )
        except (DataError, ConfigError, TypeError, ValueError) as exc:
            raise CacheError(f"{directory}: inconsistent sparse prior store ({exc})") from exc
        return store.to(device)


def sparse_options(
    kind: str,
    *,
    aggregate: str = "mean_embedding",
    symmetric: bool = True,
    softmax_temperature: float | None = None,
    profile_norm: str = "none",
) -> dict[str, Any]:
    """Validated build options of a global prior, exactly as :func:`build_sparse_prior` records them."""
    if kind not in ("i2i", "i2l2"):
        raise ConfigError(f"mining.kinds: sparse (global) priors support 'i2i' and 'i2l2', got {kind!r}")
    if aggregate not in AGGREGATES:
        raise ConfigError(f"mining.aggregate: unknown value {aggregate!r}, expected one of {AGGREGATES}")
    options: dict[str, Any] = {"aggregate": aggregate, "symmetric": bool(symmetric)}
    if kind == "i2l2":
        if profile_norm not in PROFILE_NORMS:
            raise ConfigError(f"mining.profile_norm: unknown value {profile_norm!r}, expected one of {PROFILE_NORMS}")
        if softmax_temperature is not None:
            if not (isinstance(softmax_temperature, (int, float)) and math.isfinite(softmax_temperature)
                    and softmax_temperature > 0):
                raise ConfigError("mining.softmax_temperature: must be a positive number or null, got "
                                  f"{softmax_temperature!r}")
            softmax_temperature = float(softmax_temperature)
        options.update(softmax_temperature=softmax_temperature, profile_norm=profile_norm, metric="l2")
    return options


def build_sparse_prior(
    kind: str,
    view_emb: Any,
    member_mask: np.ndarray | None = None,
    *,
    k: int = 64,
    landmark_emb: Any = None,
    delta: float = DEFAULT_DELTA,
    symmetric: bool = True,
    block_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = True,
    aggregate: str = "mean_embedding",
    softmax_temperature: float | None = None,
    profile_norm: str = "none",
) -> SparsePriorStore:
    """Label-free global prior over the member objects (default: all) from their view embeddings ``(N, V, D)``.

    - ``"i2i"``: exact top-k cosine neighbours of the mean view embeddings (``aggregate="mean_pairwise_cosine"``
      ranks by the raw inner product of the unnormalised means, i.e. the mean pairwise view cosine).
    - ``"i2l2"``: I2L profiles against **all** ``landmark_emb (L, D)`` (no labels, so no per-category subset), then
      the exact top-k by Euclidean profile distance (``softmax_temperature``/``profile_norm`` as in
      :func:`~captionless3d.mining.priors.i2l_profiles`). Memory: the ``(n, L)`` float32 profiles.

    The options are recorded in ``store.options`` (and so in the saved manifest).
    """
    options = sparse_options(kind, aggregate=aggregate, symmetric=symmetric, softmax_temperature=softmax_temperature,
                             profile_norm=profile_norm)
    if getattr(view_emb, "ndim", None) != 3:
        raise DataError(f"view_emb: expected (N, V, D), got shape {tuple(getattr(view_emb, 'shape', ()))}")
    n_all = int(view_emb.shape[0])
    if member_mask is None:
        members = np.arange(n_all, dtype=np.int64)
    else:
        mask = np.asarray(member_mask).reshape(-1)
        if mask.dtype != bool or mask.size != n_all:
            raise DataError(f"member_mask: expected a bool array of length {n_all}, got {mask.dtype} ({mask.size},)")
        members = np.flatnonzero(mask).astype(np.int64)
    mean = chunked_mean_view_embedding(view_emb, members, aggregate, chunk=4096)
    if kind == "i2i":
        metric = "cosine" if aggregate == "mean_embedding" else "ip"
        values, indices = topk_similar(mean, k, block_size=block_size, metric=metric, device=device, progress=progress)
    else:
        if landmark_emb is None:
            raise ConfigError("mining.kinds: 'i2l2' needs landmark embeddings (the feature store's landmark_emb)")
        lm = (torch.as_tensor(np.asarray(landmark_emb, dtype=np.float32)) if not isinstance(landmark_emb, torch.Tensor)
              else landmark_emb.float())
        profiles = torch.cat(
            [i2l_profiles(mean[s : s + 4096], lm, softmax_temperature, profile_norm)
             for s in range(0, mean.shape[0], 4096)]
        ) if mean.shape[0] else torch.zeros(0, lm.shape[0])
        values, indices = topk_similar(profiles, k, block_size=block_size, metric="l2", device=device,
                                       progress=progress)
    return SparsePriorStore.from_topk(
        values, indices, kind=kind, members=members, num_objects=n_all, delta=delta, symmetric=symmetric,
        options=options
    )


def ensure_sparse_prior(
    cache_root: str | os.PathLike,
    kind: str,
    view_emb: Any,
    member_mask: np.ndarray | None = None,
    *,
    key: Mapping[str, Any],
    k: int = 64,
    landmark_emb: Any = None,
    delta: float = DEFAULT_DELTA,
    block_size: int = 4096,
    device: str | torch.device = "cpu",
    progress: bool = True,
    **options: Any,
) -> SparsePriorStore:
    """Load the global prior from ``cache_root/<kind>-top<k>-<hash>`` if its manifest matches, else build and save it
    (:func:`captionless3d.utils.cache.load_or_build`); the store looks up ``delta`` for the pairs it does not hold.

    ``key``: the identity of the inputs (e.g. ``{"features": stable_hash(features.key), "data": fingerprint,
    "member_split": "train"}``), recorded in the manifest with the prior settings. ``options``: ``aggregate``,
    ``symmetric``, ``softmax_temperature``, ``profile_norm`` (see :func:`build_sparse_prior`).
    """
    opts = sparse_options(kind, **options)
    delta = check_delta(delta)
    expected = SparsePriorStore.manifest_key(kind, opts, int(k), key)
    directory = Path(cache_root) / f"{kind}-top{int(k)}-{stable_hash(expected)}"

    def build() -> SparsePriorStore:
        store = build_sparse_prior(
            kind, view_emb, member_mask, k=k, landmark_emb=landmark_emb, delta=delta, block_size=block_size,
            device=device, progress=progress, **opts_without_metric(opts),
        )
        store.to("cpu").save(directory, key=key)
        return store.to(device) if torch.device(device).type != "cpu" else store

    return load_or_build(directory, lambda: SparsePriorStore.load(directory, expected_key=expected, delta=delta),
                         build, what="global prior store")


def opts_without_metric(opts: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if k != "metric"}
