"""Pieces shared by the real-data readers: the collection object, lazy arrays, validation, images, fingerprints.

Every reader returns a :class:`ReaderCollection`, which has the ShapeCollection attributes of docs/architecture.md
(``name``, ``fingerprint``, ``categories``, ``labels``, ``subtypes`` (empty), ``subtype_ids`` (-1), ``splits``,
``indices(split)``, ``object_ids``, ``points``, ``views``, ``view_angles``, ``photos``, ``masks``, ``captions``,
``landmarks``) plus ``bad`` (the ``(file, reason)`` of every object skipped with ``skip_bad=True``).

Conventions:
* ``points`` is ``(N, P, 3)`` float32, each cloud centred on its centroid and scaled so its farthest point has norm 1.
* A format without renders has ``views`` of shape ``(N, 0, S, S, 3)`` (the feature store then embeds no views); a
  format without photos has ``photos = masks = None``.
* Large image stacks are :class:`LazyArray` objects: array-like, rows decoded on access (``shape``, ``dtype``,
  ``len``, integer / slice / index-array indexing, ``np.asarray``).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captionless3d.data.collection import SPLITS, SplitIndexMixin
from captionless3d.data.pointcloud import normalise_unit_sphere
from captionless3d.errors import ConfigError, DataError
from captionless3d.utils.manifest import file_sha256, stable_hash

log = logging.getLogger("captionless3d.data.readers")

FINGERPRINT_MODES = ("stat", "content")


# --------------------------------------------------------------------------------------------- bad objects


class Problems:
    """Collects per-object failures: raises at once (``skip_bad=False``) or records ``(file, reason)`` and goes on."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = bool(skip_bad)
        self.items: list[tuple[str, str]] = []

    def add(self, file: str | os.PathLike, exc: DataError) -> None:
        if not self.skip_bad:
            raise exc
        self.items.append((str(file), str(exc)))

    def report(self, name: str) -> None:
        if self.items:
            shown = "; ".join(f"{f}: {r}" for f, r in self.items[:5])
            more = f" (+{len(self.items) - 5} more)" if len(self.items) > 5 else ""
            log.warning("%s: skipped %d bad objects: %s%s", name, len(self.items), shown, more)


# --------------------------------------------------------------------------------------------- lazy arrays


class LazyArray:
    """Read-only ``(N, *item_shape)`` array whose rows are produced by ``loader(i)`` when indexed.

    Supports ``shape``/``dtype``/``ndim``/``len``, ``a[i]``, ``a[start:stop:step]``, ``a[int_array]``, ``a[bool_mask]``,
    tuples whose first element is one of those (the rest is applied to the stacked result) and ``np.asarray(a)``.
    Each row is checked against ``item_shape`` and ``dtype`` (a :class:`DataError` from the loader names the file).
    """

    def __init__(self, n: int, item_shape: Sequence[int], dtype: Any, loader: Callable[[int], np.ndarray],
                 name: str = "lazy array") -> None:
        self._n = int(n)
        self.item_shape = tuple(int(s) for s in item_shape)
        self.dtype = np.dtype(dtype)
        self._loader = loader
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._n, *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self._n

    def _row(self, i: int) -> np.ndarray:
        row = np.asarray(self._loader(int(i)))
        if row.shape != self.item_shape:
            raise DataError(f"{self.name}[{i}]: loaded shape {row.shape}, expected {self.item_shape}")
        return row.astype(self.dtype, copy=False)

    def _positions(self, key: Any) -> np.ndarray | int:
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -self._n <= i < self._n:
                raise IndexError(f"index {i} out of range for {self.name} of length {self._n}")
            return i % self._n
        if isinstance(key, slice):
            return np.arange(self._n)[key]
        arr = np.asarray(key)
        if arr.dtype == bool:
            if arr.shape != (self._n,):
                raise IndexError(f"boolean index of shape {arr.shape} for {self.name} of length {self._n}")
            return np.flatnonzero(arr)
        if arr.dtype.kind not in "iu":
            raise IndexError(f"{self.name}: unsupported index {key!r}")
        if arr.size and (arr.max() >= self._n or arr.min() < -self._n):
            raise IndexError(f"index out of range for {self.name} of length {self._n}")
        return arr % self._n if arr.size else arr.astype(np.int64)

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        pos = self._positions(key)
        if isinstance(pos, int):
            out = self._row(pos)
            return out[rest] if rest else out
        flat = np.asarray(pos).reshape(-1)
        out = np.empty((flat.size, *self.item_shape), self.dtype)
        for j, i in enumerate(flat):
            out[j] = self._row(int(i))
        out = out.reshape(*np.shape(pos), *self.item_shape)
        return out[(slice(None),) * np.ndim(pos) + rest] if rest else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyArray({self.name}, shape={self.shape}, dtype={self.dtype})"


# --------------------------------------------------------------------------------------------- the collection


class ReaderCollection(SplitIndexMixin):
    """A real data set as a ShapeCollection (docs/architecture.md). Built by the reader functions of this package."""

    def __init__(
        self,
        *,
        name: str,
        fingerprint: str,
        categories: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        splits: Sequence[str] | np.ndarray,
        object_ids: Sequence[str],
        points: Any,
        views: Any = None,
        view_angles: Sequence[tuple[float, float]] = (),
        photos: Any = None,
        masks: Any = None,
        image_size: int = 224,
        category_keys: Sequence[str] | None = None,
        shape_ids: Sequence[str] | None = None,
        files: Sequence[str] | None = None,
        landmarks: Mapping[str, Sequence[str]] | None = None,
        bad: Sequence[tuple[str, str]] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        n = len(object_ids)
        self.name = str(name)
        self.fingerprint = str(fingerprint)
        self.categories: list[str] = [str(c) for c in categories]
        self.category_keys: list[str] = list(category_keys) if category_keys is not None else list(self.categories)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.splits = np.asarray(list(splits), dtype="<U7").reshape(-1)
        self.object_ids: list[str] = [str(o) for o in object_ids]
        self.subtypes: list[str] = []
        self.subtype_ids = np.full(n, -1, dtype=np.int64)
        self.points = points
        self.views = views if views is not None else np.zeros((n, 0, image_size, image_size, 3), np.uint8)
        self.view_angles: list[tuple[float, float]] = [tuple(a) for a in view_angles]
        self.photos = photos
        self.masks = masks
        # several entries can share one shape (Pix3D): shape_ids[i] names it, shape_index[i] numbers it (0..S-1)
        self.shape_ids: list[str] = list(shape_ids) if shape_ids is not None else list(self.object_ids)
        uniq = {s: k for k, s in enumerate(dict.fromkeys(self.shape_ids))}
        self.shape_index = np.array([uniq[s] for s in self.shape_ids], dtype=np.int64)
        self.files: list[str] = list(files) if files is not None else []
        self.captions: list[list[str]] = [[] for _ in range(n)]
        self.landmarks: dict[str, list[str]] = {k: list(v) for k, v in (landmarks or {}).items()}
        self.bad: list[tuple[str, str]] = list(bad)
        self.extra: dict[str, Any] = dict(extra or {})
        for attr in ("labels", "splits", "points", "views"):
            if len(getattr(self, attr)) != n:
                raise DataError(f"{self.name}: {attr} has {len(getattr(self, attr))} rows for {n} objects")
        for attr in ("photos", "masks"):
            value = getattr(self, attr)
            if value is not None and len(value) != n:
                raise DataError(f"{self.name}: {attr} has {len(value)} rows for {n} objects")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.categories)):
            raise DataError(f"{self.name}: labels outside [0, {len(self.categories)})")
        unknown = sorted(set(self.splits.tolist()) - set(SPLITS))
        if unknown:
            raise DataError(f"{self.name}: unknown split names {unknown}")

    @property
    def n_bad(self) -> int:
        return len(self.bad)

    def __repr__(self) -> str:
        counts = {s: int((self.splits == s).sum()) for s in SPLITS if (self.splits == s).any()}
        return (f"ReaderCollection({self.name}, objects={len(self)}, categories={len(self.categories)}, "
                f"splits={counts}, skipped={self.n_bad})")


# --------------------------------------------------------------------------------------------- fingerprints


def files_fingerprint(files: Iterable[str | os.PathLike], root: str | os.PathLike, params: Mapping[str, Any],
                      *, mode: str = "stat") -> str:
    """Stable hash of the reader parameters and every input file (relative path + size + mtime, or + SHA-256)."""
    if mode not in FINGERPRINT_MODES:
        raise ConfigError(f"fingerprint: unknown mode {mode!r}; expected one of {FINGERPRINT_MODES}")
    root = Path(root)
    digest = hashlib.sha256()
    digest.update(stable_hash(dict(params), length=64).encode())
    for f in sorted(str(f) for f in files):
        path = Path(f)
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            rel = path.as_posix()
        try:
            stat = path.stat()
        except OSError as exc:
            raise DataError(f"{path}: cannot stat ({exc.strerror or exc})") from exc
        digest.update(f"{rel}\0{stat.st_size}\0".encode())
        digest.update((str(stat.st_mtime_ns) if mode == "stat" else file_sha256(path)).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- points


def normalise_cloud(xyz: np.ndarray, source: str) -> np.ndarray:
    """One raw cloud ``(P, 3)`` -> float32, centred and scaled into the unit sphere
    (:func:`captionless3d.data.pointcloud.normalise_unit_sphere`, ULIP's ``pc_norm``). Raises :class:`DataError`
    naming ``source`` for a degenerate cloud (all points identical)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    # scale by the extent first: squaring raw coordinates overflowed (1e169 -> a silent all-zero cloud) and the rounding
    # of the mean of identical large values (1e30) passed a single repeated point off as a valid cloud
    extent = float(np.ptp(xyz, axis=0).max()) if len(xyz) else 0.0
    if not (np.isfinite(extent) and extent > 0):
        raise DataError(f"{source}: degenerate point cloud (all points identical or extent {extent})")
    scaled = torch.from_numpy((xyz - xyz.min(axis=0)) / extent)
    return normalise_unit_sphere(scaled[None])[0].numpy().astype(np.float32)


def prepare_points(raw: Any, source: str, n_points: int | None, rng: np.random.Generator | None = None,
                   how: str = "random") -> np.ndarray:
    """Validate a ``(P, >=3)`` array (xyz first), keep ``n_points`` of them and normalise. Raises DataError naming
    ``source``.

    ``how``: ``"random"`` (uniform without replacement, from ``rng``) or ``"first"`` (for FPS-ordered files).
    """
    if not isinstance(raw, np.ndarray) or raw.dtype.kind not in "fiu":
        kind = type(raw).__name__ if not isinstance(raw, np.ndarray) else f"array of dtype {raw.dtype}"
        raise DataError(f"{source}: expected a numeric point array, got {kind}")
    if raw.ndim != 2 or raw.shape[1] < 3:
        raise DataError(f"{source}: expected a (P, 3+) point array, got shape {raw.shape}")
    xyz = raw[:, :3]
    if not np.isfinite(xyz).all():
        bad = int((~np.isfinite(xyz)).any(axis=1).sum())
        raise DataError(f"{source}: {bad} points have NaN/Inf coordinates")
    available = xyz.shape[0]
    if n_points is not None:
        if available < n_points:
            raise DataError(f"{source}: has only {available} points, {n_points} requested")
        if available > n_points:
            if how == "first":
                xyz = xyz[:n_points]
            else:
                rng = rng if rng is not None else np.random.default_rng(0)
                xyz = xyz[np.sort(rng.choice(available, n_points, replace=False))]
    return normalise_cloud(xyz, source)


def stack_points(clouds: Sequence[np.ndarray], sources: Sequence[str], name: str) -> np.ndarray:
    if not clouds:
        return np.zeros((0, 0, 3), np.float32)
    counts = {c.shape[0] for c in clouds}
    if len(counts) > 1:
        i = next(i for i, c in enumerate(clouds) if c.shape[0] != clouds[0].shape[0])
        raise DataError(f"{name}: clouds have different point counts ({sources[0]}: {clouds[0].shape[0]}, "
                        f"{sources[i]}: {clouds[i].shape[0]}); set n_points")
    return np.stack(clouds).astype(np.float32, copy=False)


def check_n_points(n_points: Any) -> int | None:
    if n_points is None:
        return None
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 1:
        raise ConfigError(f"n_points: expected a positive integer or null, got {n_points!r}")
    return int(n_points)


def object_rng(seed: int, *parts: Any) -> np.random.Generator:
    """A generator that depends only on ``seed`` and the object's identity (order-independent, reproducible)."""
    key = hashlib.sha256(repr((int(seed),) + tuple(str(p) for p in parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(key[:8], "little"))


# --------------------------------------------------------------------------------------------- images


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file is missing") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


def check_image(path: str | os.PathLike) -> tuple[int, int]:
    """Cheap check that ``path`` is a readable image (header + ``verify``); returns (width, height)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()
        return size
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file is missing") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


def resize_crop(img, size: int, resample):
    """A PIL image with its shorter side resized to ``size`` (``resample`` filter), then centre-cropped to
    ``size × size`` (the teacher's preprocessing, applied to every image a reader or the API loads)."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_rgb(path: str | os.PathLike, size: int, *,
             background: tuple[int, int, int] | None = (255, 255, 255)) -> np.ndarray:
    """Image → ``(size, size, 3)`` uint8: transparency composited on ``background``, shorter side resized to
    ``size`` (bicubic), centre-cropped. ``background=None`` drops alpha as ``PIL.convert('RGB')`` does (ULIP)."""
    from PIL import Image

    path = Path(path)
    img = _open_image(path)
    try:
        if background is not None and (img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info):
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (*background, 255))
            img = Image.alpha_composite(canvas, rgba)
        img = resize_crop(img.convert("RGB"), size, Image.BICUBIC)
        return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from exc


def load_mask(path: str | os.PathLike, size: int, *, like: tuple[int, int] | None = None) -> np.ndarray:
    """Mask image → ``(size, size)`` bool (value > 127), resized/cropped like the photo (nearest neighbour)."""
    from PIL import Image

    path = Path(path)
    img = _open_image(path)
    if like is not None and img.size != tuple(like):
        raise DataError(f"{path}: mask is {img.size[0]}x{img.size[1]} but its photo is {like[0]}x{like[1]}")
    try:
        gray = resize_crop(img.convert("L"), size, Image.NEAREST)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode mask ({exc})") from exc
    return np.asarray(gray) > 127


def check_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 8 <= image_size <= 2048:
        raise ConfigError(f"image_size: expected an integer in [8, 2048], got {image_size!r}")
    return int(image_size)


def require_dir(path: str | os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: {what} directory does not exist")
    return path


def require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} is missing")
    return path


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    path = require_file(path, what)
    try:
        return [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable {what} ({exc})") from exc


def read_json(path: str | os.PathLike, what: str) -> Any:
    import json

    path = require_file(path, what)
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable {what} ({exc})") from exc
