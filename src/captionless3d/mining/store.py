"""PriorStore: the paper's dense per-category prior matrices, with one vectorised pair lookup (docs/method.md).

Layout (exactly as the paper's ``<synset>_similarity_matrix.npy`` / ``<synset>_distance_matrix.npy``, already
converted to ``l`` in [0, 1]):

- For each category ``c`` present among the *members* (the student-train objects), a dense ``(n_c, n_c)`` float32
  matrix over the members of ``c`` in sorted global-index order. Its diagonal is exactly 1 (``l_ii = 1``, alpha=1).
- All category matrices are concatenated (row-major) into one flat buffer. Three per-object lookup vectors over all
  ``N`` objects of the collection give each object's block ``offset`` (-1 = no prior, e.g. a val/test object), its
  ``position`` inside its category and the category size ``n_c``. Then ``l_ij`` for a same-category member pair is
  ``values[offset_i + position_i * n_c + position_j]``.

:meth:`PriorStore.pairs` returns, for every (row, col) pair of global object indices:

- ``1`` where ``rows[r] == cols[c]`` (the same object);
- the category matrix entry where both objects are members of the same category;
- ``delta`` (δ, :data:`~captionless3d.mining.priors.DEFAULT_DELTA`) otherwise: cross-category pairs and any pair
  involving an object without a prior. δ is applied at lookup: it is a setting of the loaded store, not part of the
  saved data or of its cache key.

Objects are identified by their *global* index into the ShapeCollection (the datamodule's ``index``), so the same
store serves the train, val and test loaders.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from captionless3d.errors import CacheError, ConfigError, DataError
from captionless3d.mining.priors import (
    AGGREGATES,
    DEFAULT_DELTA,
    METRICS,
    PROFILE_NORMS,
    check_delta,
    chunked_mean_view_embedding,
    i2i_prior,
    i2l2_prior,
    i2l_profiles,
)
from captionless3d.utils.atomic import atomic_directory, atomic_save_npy
from captionless3d.utils.cache import load_or_build
from captionless3d.utils.manifest import load_cache_arrays, stable_hash, write_manifest

__all__ = ["PriorStore", "PRIOR_KINDS", "DEFAULT_DELTA", "ensure_prior_store"]

PRIOR_KINDS = ("i2i", "i2l2")
MANIFEST_KIND = "prior_store"
FORMAT_VERSION = 1
_RESERVED_KEY_FIELDS = ("prior_kind", "prior_options", "num_objects")
_FILES = ("values.npy", "member_index.npy", "category_labels.npy", "category_sizes.npy")

_OPTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "i2i": {"aggregate": "mean_embedding"},
    "i2l2": {"aggregate": "mean_embedding", "softmax_temperature": None, "profile_norm": "none", "metric": "l2"},
}


def resolve_options(kind: str, **options: Any) -> dict[str, Any]:
    """Complete ``options`` with the defaults of prior ``kind``; ConfigError on an unknown kind/option/value."""
    if kind not in _OPTION_DEFAULTS:
        raise ConfigError(f"mining.kind: unknown prior kind {kind!r}, expected one of {PRIOR_KINDS}")
    defaults = _OPTION_DEFAULTS[kind]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(f"mining: option(s) {unknown} do not apply to prior kind {kind!r} (valid: "
                          f"{sorted(defaults)})")
    resolved = {**defaults, **options}
    if resolved["aggregate"] not in AGGREGATES:
        raise ConfigError(f"mining.aggregate: unknown value {resolved['aggregate']!r}, expected one of {AGGREGATES}")
    if kind == "i2l2":
        if resolved["metric"] not in METRICS:
            raise ConfigError(f"mining.metric: unknown value {resolved['metric']!r}, expected one of {METRICS}")
        if resolved["profile_norm"] not in PROFILE_NORMS:
            raise ConfigError(f"mining.profile_norm: unknown value {resolved['profile_norm']!r}, expected one of "
                              f"{PROFILE_NORMS}")
        t = resolved["softmax_temperature"]
        if t is not None:
            if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
                raise ConfigError(f"mining.softmax_temperature: must be a positive number or null, got {t!r}")
            resolved["softmax_temperature"] = float(t)
        if resolved["metric"] == "js" and t is None:
            raise ConfigError("mining.metric: 'js' compares probability profiles; set mining.softmax_temperature")
    return resolved


class PriorStore:
    """Dense per-category pairwise priors ``l_ij`` with a vectorised :meth:`pairs` lookup. See the module docstring.

    Build with :meth:`build` (from view/landmark embeddings), :meth:`from_category_matrices` (from ready ``l``
    matrices, e.g. imported ones) or :meth:`load`.

    Attributes: ``kind`` ("i2i", "i2l2" or a caller-chosen name), ``options`` (resolved build options), ``delta``,
    ``num_objects`` (N, the length of the global index space), ``device``.
    """

    def __init__(
        self,
        *,
        kind: str,
        num_objects: int,
        category_labels: np.ndarray,
        category_sizes: np.ndarray,
        member_index: np.ndarray,
        values: np.ndarray,
        delta: float = DEFAULT_DELTA,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Low-level constructor from the flat layout; prefer the classmethods. Validates consistency (DataError)."""
        self.kind = str(kind)
        self.options = dict(options or {})
        self.delta = check_delta(delta)
        self.num_objects = int(num_objects)
        cat_labels = np.asarray(category_labels, dtype=np.int64).reshape(-1)
        sizes = np.asarray(category_sizes, dtype=np.int64).reshape(-1)
        members = np.asarray(member_index, dtype=np.int64).reshape(-1)
        vals = np.array(values, dtype=np.float32).reshape(-1)  # a copy: the diagonal is overwritten below
        if cat_labels.shape != sizes.shape:
            raise DataError(f"PriorStore: {cat_labels.size} category labels but {sizes.size} category sizes")
        if len(set(cat_labels.tolist())) != cat_labels.size:
            raise DataError("PriorStore: duplicate category labels")
        if (sizes < 1).any() or int(sizes.sum()) != members.size:
            raise DataError(f"PriorStore: category sizes {sizes.tolist()[:10]} do not add up to {members.size} members")
        if int((sizes**2).sum()) != vals.size:
            raise DataError(f"PriorStore: {vals.size} values, expected sum(n_c^2) = {int((sizes ** 2).sum())}")
        if members.size and (members.min() < 0 or members.max() >= self.num_objects):
            raise DataError(f"PriorStore: member indices outside [0, {self.num_objects})")
        if np.unique(members).size != members.size:
            raise DataError("PriorStore: an object is a member of more than one category (or listed twice)")
        if vals.size and (not np.isfinite(vals).all() or (vals < 0).any()):
            raise DataError("PriorStore: prior values must be finite and >= 0")

        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)  # into member_index
        block = np.concatenate([[0], np.cumsum(sizes**2)[:-1]]).astype(np.int64)  # into values
        offset = np.full(self.num_objects, -1, dtype=np.int64)
        position = np.zeros(self.num_objects, dtype=np.int64)
        size = np.zeros(self.num_objects, dtype=np.int64)
        for c in range(cat_labels.size):  # over categories (tens), not over a batch
            m = members[starts[c] : starts[c] + sizes[c]]
            if (np.diff(m) <= 0).any():
                raise DataError(f"PriorStore: members of category {cat_labels[c]} are not in sorted global order")
            offset[m] = block[c]
            position[m] = np.arange(sizes[c])
            size[m] = sizes[c]
            # l_ii = 1 exactly (alpha = 1)
            diag = block[c] + np.arange(sizes[c]) * (sizes[c] + 1)
            vals[diag] = 1.0

        self._category_labels = cat_labels
        self._category_sizes = sizes
        self._member_starts = starts
        self._block_starts = block
        self._member_index = members
        # one trailing sentinel 1.0: the self pair of a non-member (l_ii = 1); also keeps the gather valid with no
        # categories at all
        self._values = torch.from_numpy(np.concatenate([vals, np.ones(1, np.float32)]))
        self._offset = torch.from_numpy(offset)
        self._position = torch.from_numpy(np.where(offset >= 0, position, 0))
        self._size = torch.from_numpy(size)
        nonmember = offset < 0
        # lookup vectors of pairs(): the start of an object's row in the flat buffer, and a category key
        self._row_start = torch.from_numpy(np.where(nonmember, vals.size, offset + position * size))
        self._key = torch.from_numpy(np.where(nonmember, -2 - np.arange(self.num_objects, dtype=np.int64), offset))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_category_matrices(
        cls,
        matrices: Mapping[int, tuple[Sequence[int] | np.ndarray, np.ndarray]],
        num_objects: int,
        *,
        kind: str = "custom",
        delta: float = DEFAULT_DELTA,
        options: Mapping[str, Any] | None = None,
    ) -> PriorStore:
        """From ready prior matrices: ``{label: (member_global_indices (n_c,), l (n_c, n_c))}``.

        ``l`` values are priors in [0, ∞) (already converted, e.g. ``(S+1)/2`` or ``1/(1+D)``), rows/columns in the
        order of the given members; members are re-sorted (with the matrix permuted accordingly). The diagonal is
        overwritten with 1.
        """
        labels, sizes, members, values = [], [], [], []
        for label in sorted(matrices):
            idx, mat = matrices[label]
            idx = np.asarray(idx, dtype=np.int64).reshape(-1)
            mat = np.asarray(mat, dtype=np.float32)
            if mat.shape != (idx.size, idx.size):
                raise DataError(f"PriorStore: category {label}: matrix shape {mat.shape} for {idx.size} members")
            if idx.size == 0:
                continue
            order = np.argsort(idx, kind="stable")
            labels.append(int(label))
            sizes.append(idx.size)
            members.append(idx[order])
            values.append(mat[np.ix_(order, order)].reshape(-1))
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        return cls(
            kind=kind,
            num_objects=num_objects,
            category_labels=np.asarray(labels, np.int64),
            category_sizes=np.asarray(sizes, np.int64),
            member_index=cat(members, np.int64),
            values=cat(values, np.float32),
            delta=delta,
            options=options,
        )

    @classmethod
    def build(
        cls,
        kind: Literal["i2i", "i2l2"],
        view_emb: np.ndarray | torch.Tensor,
        labels: np.ndarray | Sequence[int],
        member_mask: np.ndarray | Sequence[bool],
        landmark_emb: np.ndarray | torch.Tensor | None = None,
        landmark_labels: np.ndarray | Sequence[int] | None = None,
        delta: float = DEFAULT_DELTA,
        **options: Any,
    ) -> PriorStore:
        """Compute the paper's priors from teacher embeddings.

        Args:
            kind: ``"i2i"`` (``(cos(ē_i, ē_j)+1)/2``) or ``"i2l2"`` (``1/(1+‖p_i−p_j‖₂)``)
                (docs/method.md, Priors).
            view_emb: ``(N, V, D)`` view embeddings of all N objects (fp16/fp32; a memmap is fine: only members
                are read, in chunks).
            labels: ``(N,)`` int category labels.
            member_mask: ``(N,)`` bool, True for the objects that get a prior (the student-train split).
            landmark_emb, landmark_labels: ``(L, D)`` landmark text embeddings and their ``(L,)`` category labels;
                required for ``"i2l2"`` (every member category needs ≥ 1 landmark), ignored for ``"i2i"``.
            delta: δ, the prior of cross-category / no-prior pairs (applied at lookup).
            **options: ``aggregate`` ("mean_embedding" | "mean_pairwise_cosine"); for "i2l2" also
                ``softmax_temperature`` (None = raw cosines), ``profile_norm`` ("none" | "l2"), ``metric``
                ("l2" | "l1" | "js"). See :mod:`captionless3d.mining.priors`.
        """
        opts = resolve_options(kind, **options)
        delta = check_delta(delta)
        labels = np.asarray(labels).reshape(-1)
        mask = np.asarray(member_mask).reshape(-1)
        n = labels.size
        if mask.dtype != bool:
            raise DataError(f"member_mask: expected a bool array, got dtype {mask.dtype}")
        if mask.size != n or len(view_emb) != n:
            raise DataError(f"PriorStore.build: labels ({n}), member_mask ({mask.size}) "
                            f"and view_emb ({len(view_emb)}) differ in length")
        if getattr(view_emb, "ndim", None) != 3:
            raise DataError(f"view_emb: expected (N, V, D), got shape {tuple(getattr(view_emb, 'shape', ()))}")
        labels = labels.astype(np.int64)
        if kind == "i2l2":
            if landmark_emb is None or landmark_labels is None:
                raise ConfigError("mining.kind: 'i2l2' needs landmark_emb and landmark_labels")
            lm_emb = (landmark_emb.detach().cpu().float().numpy() if isinstance(landmark_emb, torch.Tensor)
                      else np.asarray(landmark_emb, np.float32))
            lm_labels = np.asarray(landmark_labels).reshape(-1).astype(np.int64)
            if lm_emb.ndim != 2 or lm_emb.shape[0] != lm_labels.size:
                raise DataError(f"landmark_emb {lm_emb.shape} and landmark_labels ({lm_labels.size},) do not match")

        matrices: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for label in np.unique(labels[mask]).tolist():
            members = np.flatnonzero(mask & (labels == label))
            mean = chunked_mean_view_embedding(view_emb, members, opts["aggregate"])
            if kind == "i2i":
                mat = i2i_prior(mean)
            else:
                lm = lm_emb[lm_labels == label]
                if lm.shape[0] == 0:
                    raise DataError(f"PriorStore.build: category {label} has members but no landmarks")
                prof = i2l_profiles(mean, torch.from_numpy(lm), opts["softmax_temperature"], opts["profile_norm"])
                mat = i2l2_prior(prof, opts["metric"])
            matrices[label] = (members, mat.numpy())
        return cls.from_category_matrices(matrices, n, kind=kind, delta=delta, options=opts)

    # ------------------------------------------------------------------ lookup
    def pairs(self, rows: torch.Tensor | np.ndarray | Sequence[int],
              cols: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """``l`` for every (row, col) pair of global object indices: ``(R,), (C,) -> (R, C)`` float32.

        One vectorised gather (no Python loop over the batch). The result lives on the store's device (indices on
        another device are moved). Out-of-range indices raise :class:`DataError` for CPU stores; on an accelerator
        the bounds check is skipped (it would force a device sync) and a bad index trips a device-side assert.
        """
        r = self._index(rows, "rows")
        c = self._index(cols, "cols")
        # key: the category block offset for members, a unique negative id for non-members. Equal keys <=> same
        # category member pair, or the same non-member object (whose self pair reads the sentinel 1.0).
        key_r, key_c = self._key[r], self._key[c]
        same = key_r[:, None] == key_c[None, :]
        flat = self._row_start[r][:, None] + self._position[c][None, :]  # valid wherever `same`
        flat = flat.clamp_(0, self._values.numel() - 1)  # garbage-but-in-range elsewhere, masked below
        vals = torch.take(self._values, flat)
        return torch.where(same, vals, torch.full((), self.delta, dtype=torch.float32, device=vals.device))

    __call__ = pairs

    def _index(self, idx: Any, name: str) -> torch.Tensor:
        t = idx if isinstance(idx, torch.Tensor) else torch.as_tensor(np.asarray(idx))
        if t.ndim != 1:
            raise DataError(f"PriorStore.pairs: {name} must be 1-d, got shape {tuple(t.shape)}")
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise DataError(f"PriorStore.pairs: {name} must be integer indices, got {t.dtype}")
        t = t.to(device=self._offset.device, dtype=torch.long)
        if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_objects):
            raise DataError(f"PriorStore.pairs: {name} has indices outside [0, {self.num_objects})")
        return t

    # ------------------------------------------------------------------ inspection
    @property
    def categories(self) -> list[int]:
        """Labels of the categories that have a matrix (sorted)."""
        return self._category_labels.tolist()

    @property
    def device(self) -> torch.device:
        return self._values.device

    @property
    def nbytes(self) -> int:
        tensors = (self._values, self._offset, self._position, self._size, self._row_start, self._key)
        return sum(t.numel() * t.element_size() for t in tensors)

    def _cat(self, label: int) -> int:
        hits = np.flatnonzero(self._category_labels == int(label))
        if hits.size == 0:
            raise KeyError(f"PriorStore has no matrix for category {label} (categories: {self.categories})")
        return int(hits[0])

    def category_members(self, label: int) -> np.ndarray:
        """Sorted global indices ``(n_c,)`` of the members of category ``label`` (row/column order of its matrix)."""
        c = self._cat(label)
        s = self._member_starts[c]
        return self._member_index[s : s + self._category_sizes[c]].copy()

    def category_matrix(self, label: int) -> np.ndarray:
        """The dense ``(n_c, n_c)`` float32 prior matrix of category ``label`` (a copy, diagonal 1)."""
        c = self._cat(label)
        n, b = int(self._category_sizes[c]), int(self._block_starts[c])
        return self._values[b : b + n * n].detach().cpu().numpy().reshape(n, n).copy()

    def has_prior(self, index: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """Bool ``(R,)``: whether each global index is a member (has a prior row)."""
        return self._offset[self._index(index, "index")] >= 0

    def to(self, device: str | torch.device) -> PriorStore:
        """Move the lookup tensors to ``device`` (in place, like ``nn.Module.to``); returns ``self``."""
        for name in ("_values", "_offset", "_position", "_size", "_row_start", "_key"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def __repr__(self) -> str:
        return (
            f"PriorStore(kind={self.kind!r}, num_objects={self.num_objects}, categories={len(self._category_labels)}, "
            f"members={self._member_index.size}, delta={self.delta}, options={self.options}, device={self.device})"
        )

    # ------------------------------------------------------------------ persistence
    @staticmethod
    def manifest_key(kind: str, options: Mapping[str, Any], key: Mapping[str, Any] | None = None,
                     num_objects: int | None = None) -> dict[str, Any]:
        """The manifest key a store with these settings is saved under (for building ``expected_key`` in :meth:`load`).
        δ is not part of it: the stored matrices do not depend on it."""
        key = dict(key or {})
        clash = sorted(set(key) & set(_RESERVED_KEY_FIELDS))
        if clash:
            raise ConfigError(f"PriorStore key fields {clash} are reserved (the store records them itself)")
        out = {**key, "prior_kind": kind, "prior_options": dict(options)}
        if num_objects is not None:
            out["num_objects"] = int(num_objects)
        return out

    def save(self, directory: str | os.PathLike, key: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write the store to ``directory`` atomically as a whole (built in a temp sibling, then swapped in: a failed
        overwrite leaves the old store loadable), manifest last (kind ``"prior_store"``).

        The manifest key is ``key`` (the caller's identity of the inputs: teacher id, feature-store fingerprint,
        split, ...; JSON-serialisable) plus ``prior_kind``, ``prior_options`` and ``num_objects`` (not δ).
        Returns the manifest.
        """
        full_key = self.manifest_key(self.kind, self.options, key, self.num_objects)
        payload = {
            "values.npy": self._values[:-1].detach().cpu().numpy(),
            "member_index.npy": self._member_index,
            "category_labels.npy": self._category_labels,
            "category_sizes.npy": self._category_sizes,
        }
        with atomic_directory(directory) as tmp:
            for name, arr in payload.items():
                atomic_save_npy(tmp / name, arr)
            manifest = write_manifest(
                tmp,
                kind=MANIFEST_KIND,
                version=FORMAT_VERSION,
                key=full_key,
                files=list(payload),
                extra={"num_categories": int(self._category_labels.size), "num_members": int(self._member_index.size)},
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
    ) -> PriorStore:
        """Load a saved store that looks up ``delta`` for pairs without a prior; :class:`CacheError` if the manifest is
        missing/stale (any ``expected_key`` field differs, including the reserved ``prior_kind``/``prior_options``/
        ``num_objects`` if given) or a file is missing, corrupt or inconsistent."""
        delta = check_delta(delta)
        directory = Path(directory)
        key, arrays = load_cache_arrays(
            directory, kind=MANIFEST_KIND, version=FORMAT_VERSION, files=_FILES, expected_key=expected_key,
            required_key_fields=_RESERVED_KEY_FIELDS, verify_checksums=verify_checksums,
        )
        try:
            store = cls(
                kind=key["prior_kind"],
                num_objects=key["num_objects"],
                category_labels=arrays["category_labels.npy"],
                category_sizes=arrays["category_sizes.npy"],
                member_index=arrays["member_index.npy"],
                values=arrays["values.npy"],
                delta=delta,
                options=key["prior_options"],
            )
        except (DataError, ConfigError, TypeError, ValueError) as exc:
            raise CacheError(f"{directory}: inconsistent prior store ({exc})") from exc
        return store.to(device)


def ensure_prior_store(
    cache_root: str | os.PathLike,
    kind: Literal["i2i", "i2l2"],
    features: Any,
    labels: np.ndarray | Sequence[int],
    member_mask: np.ndarray | Sequence[bool],
    *,
    key: Mapping[str, Any],
    delta: float = DEFAULT_DELTA,
    **options: Any,
) -> PriorStore:
    """The dense store of ``kind`` from ``cache_root/<kind>-<hash>`` if its manifest matches, else built from the
    feature store (``view_emb``, ``landmark_emb``, ``landmark_labels``) and saved
    (:func:`captionless3d.utils.cache.load_or_build`). It looks up ``delta`` for pairs without a prior.

    ``key``: the identity of the inputs (feature-store hash, data fingerprint, member split), recorded in the
    manifest with the kind and the resolved ``options`` (not δ).
    """
    kind_options = resolve_options(kind, **options)
    delta = check_delta(delta)
    expected = PriorStore.manifest_key(kind, kind_options, key)
    directory = Path(cache_root) / f"{kind}-{stable_hash(expected)}"

    def build() -> PriorStore:
        store = PriorStore.build(
            kind, features.view_emb, labels, member_mask, landmark_emb=features.landmark_emb,
            landmark_labels=features.landmark_labels, delta=delta, **kind_options,
        )
        store.save(directory, key=key)
        return store

    return load_or_build(directory, lambda: PriorStore.load(directory, expected_key=expected, delta=delta), build,
                         what="prior store")
