"""A persistent, memory-mapped index of shape embeddings for text / image / shape search.

Layout of an index directory (written by :meth:`ShapeIndex.write`, ``manifest.json`` last; every file through
:mod:`captionless3d.utils.atomic`)::

    embeddings.npy    float16 (N, D), rows L2-normalised (the student's shape embeddings)
    paths.json        N shape paths, relative to the indexed directory ("/"-separated)
    thumbs/000000.png small point-splat renders, one per shape (optional)
    manifest.json     kind "shape_index", version, key {teacher_id, encoder_sha256, count, dim}, per-file SHA-256
                      of embeddings.npy and paths.json, extra {root (indexed directory, relative to the index),
                      thumbnails, n_points, checkpoint, skipped files, ...}

Loading is lazy: :meth:`ShapeIndex.load` reads the manifest only; the embeddings are opened with
``np.load(mmap_mode="r")`` on first use (checksums are verified only with ``verify=True``). A search is one matrix
product of the ``(Q, D)`` queries with the fp16 ``(N, D)`` matrix plus ``torch.topk``: no Python loop over shapes.

An index only makes sense with queries from the teacher the student was aligned to: :meth:`ShapeIndex.load` with
``teacher_id=`` raises :class:`~captionless3d.errors.CacheError` naming both ids when they differ.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from captionless3d.errors import CacheError, DataError
from captionless3d.utils.atomic import atomic_save_npy, atomic_write_json, atomic_write_with
from captionless3d.utils.manifest import MANIFEST_NAME, load_manifest, write_manifest

log = logging.getLogger(__name__)

MANIFEST_KIND = "shape_index"
MANIFEST_VERSION = 1
EMBEDDINGS = "embeddings.npy"
PATHS = "paths.json"
THUMBS = "thumbs"


class Hit(NamedTuple):
    """One search result: the shape's path (relative to the indexed directory) and its cosine similarity."""

    path: str
    score: float


# --------------------------------------------------------------------------------------------------- thumbnails
def splat_thumbnails(points: np.ndarray, size: int = 64, *, azimuth: float = 35.0, elevation: float = 25.0,
                     splat: int | None = None) -> np.ndarray:
    """Render clouds as small images by orthographic point splatting (vectorised over the whole batch).

    Args:
        points: ``(B, P, 3)`` clouds in the unit sphere (y up), e.g. after ``normalise_unit_sphere``.
        size: image side in pixels.
        azimuth, elevation: camera angles in degrees (rotation about y, then about x).
        splat: side of the square each point covers, in pixels (default ``max(1, size // 48)``).

    Returns:
        uint8 ``(B, size, size, 3)``: white background, points shaded by depth (nearer = darker blue), the nearest
        point wins each pixel (``np.maximum.at`` over the flat pixel index of the batch).
    """
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 3 or points.shape[-1] != 3:
        raise DataError(f"splat_thumbnails: expected (B, P, 3) points, got shape {points.shape}")
    b, p, _ = points.shape
    splat = max(1, size // 48) if splat is None else int(splat)
    az, el = np.radians(azimuth), np.radians(elevation)
    ry = np.array([[np.cos(az), 0, np.sin(az)], [0, 1, 0], [-np.sin(az), 0, np.cos(az)]], np.float32)
    rx = np.array([[1, 0, 0], [0, np.cos(el), -np.sin(el)], [0, np.sin(el), np.cos(el)]], np.float32)
    view = points @ (rx @ ry).T  # (B, P, 3); camera looks along -z, +z is towards the viewer
    scale = (size - splat) / 2.0
    px = np.clip(np.rint((view[..., 0] + 1.0) * scale), 0, size - splat).astype(np.int64)
    py = np.clip(np.rint((1.0 - view[..., 1]) * scale), 0, size - splat).astype(np.int64)
    near = np.clip((view[..., 2] + 1.0) / 2.0, 0.0, 1.0)  # 1 = nearest
    depth = 0.25 + 0.75 * near  # > 0 where a point lands; 0 = background
    offsets = np.arange(splat)
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    flat = (np.arange(b)[:, None, None] * size * size + (py[..., None] + oy.reshape(1, 1, -1)) * size
            + px[..., None] + ox.reshape(1, 1, -1))  # (B, P, splat^2)
    canvas = np.zeros(b * size * size, np.float32)
    np.maximum.at(canvas, flat.reshape(-1), np.broadcast_to(depth[..., None], flat.shape).reshape(-1))
    canvas = canvas.reshape(b, size, size, 1)
    ink = np.array([30, 70, 160], np.float32)  # nearest points: dark blue; far points fade towards light blue
    colour = ink + (1.0 - canvas) * (np.array([215, 225, 245], np.float32) - ink)
    image = np.where(canvas > 0, colour, 255.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    atomic_write_with(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG", optimize=False))


# --------------------------------------------------------------------------------------------------- the index
class ShapeIndex:
    """A loaded shape index (lazy: embeddings are memory-mapped on first use). Build one with
    :meth:`captionless3d.api.Captionless3DModel.index` or :meth:`write`; open one with :meth:`load`."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        key = manifest.get("key", {})
        extra = manifest.get("extra", {})
        self.teacher_id: str = str(key.get("teacher_id"))
        self.encoder_sha256: str = str(key.get("encoder_sha256"))
        self.count: int = int(key.get("count", 0))
        self.dim: int = int(key.get("dim", 0))
        root = extra.get("root")
        self.root: Path | None = (self.directory / root).resolve() if root is not None else None
        self.checkpoint: str | None = extra.get("checkpoint")
        self._embeddings: np.ndarray | None = None
        self._matrix: torch.Tensor | None = None
        self._paths: list[str] | None = None

    # -- loading --------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | os.PathLike, *, teacher_id: str | None = None, verify: bool = False) -> ShapeIndex:
        """Open an index directory (reads only the manifest).

        Args:
            teacher_id: the teacher of the model that will query the index; a different id raises CacheError.
            verify: also check the SHA-256 of ``embeddings.npy`` and ``paths.json`` (reads them fully).

        Raises:
            CacheError: no/corrupt/incomplete manifest, another format version, another teacher, missing files.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise CacheError(f"shape index {directory} does not exist (build one with `captionless3d index`)")
        manifest = load_manifest(directory, kind=MANIFEST_KIND, version=MANIFEST_VERSION, verify_checksums=verify)
        index = cls(directory, manifest)
        if teacher_id is not None and index.teacher_id != teacher_id:
            raise CacheError(
                f"{directory}: shape index was built with teacher {index.teacher_id}, but the model queries with "
                f"teacher {teacher_id}; embeddings of different teachers are not comparable: rebuild the index with "
                "this model (`captionless3d index`)"
            )
        return index

    @property
    def embeddings(self) -> np.ndarray:
        """float16 ``(N, D)``, memory-mapped read-only."""
        if self._embeddings is None:
            path = self.directory / EMBEDDINGS
            try:
                emb = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise CacheError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
            if emb.shape != (self.count, self.dim) or emb.dtype != np.float16:
                raise CacheError(f"{path}: holds {emb.dtype} {emb.shape}, manifest says float16 ({self.count}, "
                                 f"{self.dim})")
            self._embeddings = emb
        return self._embeddings

    @property
    def paths(self) -> list[str]:
        if self._paths is None:
            path = self.directory / PATHS
            try:
                paths = json.loads(path.read_text("utf-8"))
            except (OSError, ValueError) as exc:
                raise CacheError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
            if not isinstance(paths, list) or len(paths) != self.count:
                raise CacheError(f"{path}: expected a list of {self.count} paths")
            self._paths = [str(p) for p in paths]
        return self._paths

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"ShapeIndex({self.directory}, {self.count} shapes, dim {self.dim}, teacher {self.teacher_id})"

    def resolve(self, path: str) -> Path:
        """Absolute path of an indexed shape (its directory as recorded at indexing time)."""
        return (self.root or self.directory) / path

    def thumbnail(self, position: int) -> Path | None:
        """Path of the thumbnail of the shape at ``position``, or ``None`` when the index has no thumbnails."""
        pattern = self.manifest.get("extra", {}).get("thumbnails")
        if not pattern:
            return None
        return self.directory / pattern.format(position)

    def _torch_matrix(self) -> torch.Tensor:
        if self._matrix is None:
            with warnings.catch_warnings():  # the memmap is read-only; torch only reads it
                warnings.simplefilter("ignore", UserWarning)
                self._matrix = torch.from_numpy(self.embeddings)
        return self._matrix

    # -- search ---------------------------------------------------------------------------------------------------
    def search_embeddings(self, queries: np.ndarray | torch.Tensor, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by cosine similarity for L2-normalised ``queries (Q, D)`` (or ``(D,)``).

        Returns ``(scores (Q, k) float32, positions (Q, k) int64)``, best first. One fp16 matrix product
        (fp32 accumulation) + ``torch.topk``.
        """
        q = queries if isinstance(queries, torch.Tensor) else torch.from_numpy(np.asarray(queries, dtype=np.float32))
        q = q.detach().float()
        if q.dim() == 1:
            q = q[None]
        if q.dim() != 2 or q.shape[1] != self.dim:
            raise DataError(f"query embeddings must be (Q, {self.dim}) for {self.directory}, got {tuple(q.shape)}")
        if k < 1:
            raise DataError(f"k must be >= 1, got {k}")
        if self.count == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        scores = q.to(torch.float16) @ self._torch_matrix().T  # (Q, N)
        top = torch.topk(scores, min(int(k), self.count), dim=1)
        return top.values.float().numpy(), top.indices.numpy()

    def search(self, queries: np.ndarray | torch.Tensor, k: int = 5) -> list[list[Hit]]:
        """:meth:`search_embeddings` with paths: one list of ``Hit(path, score)`` per query row, best first."""
        scores, positions = self.search_embeddings(queries, k)
        paths = self.paths
        return [[Hit(paths[int(j)], float(s)) for s, j in zip(row_s, row_j)] for row_s, row_j in zip(scores, positions)]

    # -- writing --------------------------------------------------------------------------------------------------
    @classmethod
    def write(
        cls,
        directory: str | os.PathLike,
        embeddings: np.ndarray,
        paths: Sequence[str],
        *,
        teacher_id: str,
        encoder_sha256: str,
        root: str | os.PathLike | None = None,
        thumbnails: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> ShapeIndex:
        """Write ``embeddings (N, D)`` (stored float16) and their ``paths`` as an index; manifest last.

        Thumbnails, when ``thumbnails=True``, must already be in ``<directory>/thumbs/{position:06d}.png``. Any
        previous manifest is removed first, so an interrupted rewrite never looks complete.
        """
        directory = Path(directory)
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or len(embeddings) != len(paths):
            raise DataError(f"shape index: {len(paths)} paths but embeddings of shape {embeddings.shape}")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST_NAME).unlink(missing_ok=True)
        atomic_save_npy(directory / EMBEDDINGS, embeddings.astype(np.float16))
        atomic_write_json(directory / PATHS, [str(p) for p in paths])
        info: dict[str, Any] = dict(extra or {})
        if root is not None:
            info["root"] = os.path.relpath(Path(root).resolve(), directory.resolve())
        info["thumbnails"] = f"{THUMBS}/{{:06d}}.png" if thumbnails else None
        key = {"teacher_id": teacher_id, "encoder_sha256": encoder_sha256, "count": len(paths),
               "dim": int(embeddings.shape[1])}
        manifest = write_manifest(directory, kind=MANIFEST_KIND, version=MANIFEST_VERSION, key=key,
                                  files=[EMBEDDINGS, PATHS], extra=info)
        return cls(directory, manifest)


def save_thumbnails(directory: str | os.PathLike, start: int, images: np.ndarray) -> None:
    """Write ``images (B, S, S, 3)`` uint8 as ``<directory>/thumbs/{start + i:06d}.png`` (each atomically)."""
    out = Path(directory) / THUMBS
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        _save_png(out / f"{start + i:06d}.png", image)


__all__ = ["Hit", "ShapeIndex", "splat_thumbnails", "save_thumbnails", "MANIFEST_KIND", "MANIFEST_VERSION"]
