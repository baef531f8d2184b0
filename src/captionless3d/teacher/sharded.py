"""``ShardedArray``: one read-only ``(N, *item_shape)`` array stored as row shards, each a memory-mapped ``.npy``.

The feature store keeps every per-object array (``view_emb (N, V, D)``, ...) as files of ``shard_size`` rows
(``view_emb/shard-00000.npy`` holds rows ``0 .. shard_size-1``, and so on), so a 1M-object store is written, verified
and resumed shard by shard. Consumers index it like a numpy array along axis 0:

* ``a.shape``, ``a.ndim``, ``a.dtype``, ``a.size``, ``a.nbytes``, ``len(a)``, ``np.asarray(a)``, ``a.astype(t)``;
* ``a[i]`` (one row, a read-only view into its shard), ``a[start:stop:step]``, ``a[int_array]`` (any order,
  repeats allowed, negative indices), ``a[bool_mask]`` of shape ``(N,)``; a tuple key applies its first element along
  axis 0 and the rest to the gathered result.

Gathers are vectorised: the requested rows are grouped by shard with one sort, then each shard touched is read with
one numpy fancy-index on its memmap (a Python loop per *shard touched*, never per row). Shards are opened lazily;
with ``verify="lazy"`` each shard's SHA-256 is checked the first time it is opened, so a corrupt shard raises
:class:`~captionless3d.errors.CacheError` naming the file, the shard and its object range. Pickling (DataLoader
workers) drops the open memmaps and reopens them in the receiving process instead of copying the data.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.errors import CacheError
from captionless3d.utils.manifest import file_sha256


class ShardedArray:
    """Read-only ``(N, *item_shape)`` array over ``len(paths)`` row shards (see the module docstring).

    Args:
        paths: one ``.npy`` file per shard, in row order.
        bounds: ``len(paths) + 1`` increasing row offsets; shard ``k`` holds rows ``bounds[k] .. bounds[k+1]-1``.
        item_shape: the shape of one row (e.g. ``(V, D)``).
        dtype: the stored dtype (``float16`` in the feature store).
        name: used in error messages (e.g. ``"view_emb"``).
        checksums: SHA-256 hex digest per shard (needed for ``verify="lazy"``).
        verify: ``"lazy"``: check a shard's checksum when it is first opened; ``False``: never (the caller verified
            eagerly, or chose not to).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        bounds: Sequence[int],
        item_shape: Sequence[int],
        dtype: Any,
        *,
        name: str = "array",
        checksums: Sequence[str] | None = None,
        verify: bool | str = False,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.bounds = np.asarray(bounds, dtype=np.int64)
        if self.bounds.shape != (len(self.paths) + 1,) or self.bounds[0] != 0 or np.any(np.diff(self.bounds) <= 0):
            raise CacheError(f"{name}: shard bounds {self.bounds.tolist()[:8]} "
                             f"do not tile 0..N for {len(self.paths)} shards")
        self.item_shape = tuple(int(s) for s in item_shape)
        self.dtype = np.dtype(dtype)
        self.name = name
        if verify not in (False, "lazy"):
            raise ValueError(f"verify must be False or 'lazy', got {verify!r}")
        if verify == "lazy" and (checksums is None or len(checksums) != len(self.paths)):
            raise ValueError("verify='lazy' needs one checksum per shard")
        self.checksums = list(checksums) if checksums is not None else None
        self.verify = verify
        self._maps: list[np.ndarray | None] = [None] * len(self.paths)

    # -- array protocol ---------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.bounds[-1]), *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def num_shards(self) -> int:
        return len(self.paths)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __repr__(self) -> str:
        return f"ShardedArray({self.name}, shape={self.shape}, dtype={self.dtype}, shards={self.num_shards})"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def astype(self, dtype: Any) -> np.ndarray:
        """The whole array as a new in-memory ``ndarray`` of ``dtype``."""
        return np.asarray(self, dtype=dtype)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = [None] * len(self.paths)  # reopen in the receiving process, do not copy the data
        return state

    # -- shards -----------------------------------------------------------------------------------------------------
    def shard_range(self, k: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of shard ``k``."""
        return int(self.bounds[k]), int(self.bounds[k + 1])

    def shard(self, k: int) -> np.ndarray:
        """Shard ``k`` as a read-only memmap ``(rows, *item_shape)``, opened (and, if lazy, verified) on first use."""
        mm = self._maps[k]
        if mm is None:
            mm = self._maps[k] = self._open(k)
        return mm

    def iter_shards(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(start, stop, memmap)`` for each shard in row order (for consumers that stream the whole array)."""
        for k in range(self.num_shards):
            start, stop = self.shard_range(k)
            yield start, stop, self.shard(k)

    def _where(self, k: int) -> str:
        start, stop = self.shard_range(k)
        return f"{self.paths[k]} ({self.name} shard {k}, objects {start}..{stop - 1})"

    def _open(self, k: int) -> np.ndarray:
        path = self.paths[k]
        if not path.is_file():
            raise CacheError(f"{self._where(k)}: shard file is missing")
        if self.verify == "lazy" and file_sha256(path) != self.checksums[k]:
            raise CacheError(f"{self._where(k)}: checksum mismatch, "
                             "the shard is corrupt or was modified after the manifest")
        try:
            mm = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise CacheError(f"{self._where(k)}: unreadable shard ({type(exc).__name__}: {exc})") from exc
        start, stop = self.shard_range(k)
        expected = (stop - start, *self.item_shape)
        if mm.shape != expected or mm.dtype != self.dtype:
            raise CacheError(f"{self._where(k)}: holds {mm.dtype} {mm.shape}, the manifest says {self.dtype} "
                             f"{expected}")
        return mm

    # -- indexing ---------------------------------------------------------------------------------------------------
    def _positions(self, key: Any) -> int | slice | np.ndarray:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of range for {self.name} with {n} rows")
            return i % n
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            return slice(start, stop, step) if step != 1 else slice(start, max(start, stop), 1)
        arr = np.asarray(key)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise IndexError(f"boolean index of shape {arr.shape} for {self.name} with {n} rows")
            return np.flatnonzero(arr)
        if arr.size == 0:
            return arr.astype(np.int64)
        if arr.dtype.kind not in "iu":
            raise IndexError(f"{self.name}: unsupported index of dtype {arr.dtype} ({key!r:.80})")
        arr = arr.astype(np.int64, copy=False)
        if arr.max() >= n or arr.min() < -n:
            raise IndexError(f"index out of range for {self.name} with {n} rows")
        return np.where(arr < 0, arr + n, arr)

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            if not key:
                return np.asarray(self)
            key, rest = key[0], key[1:]
        pos = self._positions(key)
        if isinstance(pos, int):
            k = int(np.searchsorted(self.bounds, pos, side="right")) - 1
            out = self.shard(k)[pos - int(self.bounds[k])]
            return out[rest] if rest else out
        if isinstance(pos, slice) and pos.step == 1:
            out = self._read_range(pos.start, pos.stop)
        else:
            if isinstance(pos, slice):
                pos = np.arange(pos.start, pos.stop, pos.step, dtype=np.int64)
            flat = pos.reshape(-1)
            out = self._gather(flat).reshape(*pos.shape, *self.item_shape)
        return out[(slice(None),) * (out.ndim - len(self.item_shape)) + rest] if rest else out

    def _read_range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)``: one contiguous slice per shard overlapped."""
        out = np.empty((stop - start, *self.item_shape), self.dtype)
        if stop <= start:
            return out
        first = int(np.searchsorted(self.bounds, start, side="right")) - 1
        last = int(np.searchsorted(self.bounds, stop - 1, side="right")) - 1
        for k in range(first, last + 1):
            lo, hi = max(start, int(self.bounds[k])), min(stop, int(self.bounds[k + 1]))
            out[lo - start : hi - start] = self.shard(k)[lo - int(self.bounds[k]) : hi - int(self.bounds[k])]
        return out

    def _gather(self, pos: np.ndarray) -> np.ndarray:
        """Rows ``pos`` (1-D, non-negative, any order): sorted once, then one fancy-index read per shard touched."""
        out = np.empty((pos.size, *self.item_shape), self.dtype)
        if pos.size == 0:
            return out
        order = np.argsort(pos, kind="stable")  # sorted rows: grouped by shard and read in file order
        sorted_pos = pos[order]
        shard_of = np.searchsorted(self.bounds, sorted_pos, side="right") - 1
        cuts = np.flatnonzero(np.diff(shard_of)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, pos.size]):
            k = int(shard_of[lo])
            out[order[lo:hi]] = self.shard(k)[sorted_pos[lo:hi] - int(self.bounds[k])]
        return out


__all__ = ["ShardedArray"]
