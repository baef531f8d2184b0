"""What ``make demo`` serves out of the box: the newest trained checkpoint and an index of its world's test shapes.

:func:`find_demo_checkpoint` picks the newest ``<outputs>/train/**/checkpoints/best*.ckpt`` (as ``ckpt=latest`` of
:mod:`captionless3d.eval`, through :func:`captionless3d.training.checkpoint_io.best_checkpoints`).
:func:`ensure_demo_index` rebuilds the checkpoint's data collection from its own training config (the synthetic world is
reused from the run's cache), writes the chosen splits' clouds as ``<category>/<object>.npy`` files under
``<paths.cache_dir>/demo/<checkpoint sha256[:16]>-<splits>/shapes`` (the files the shape index reads), indexes them with
thumbnails next to them, and writes a few example inputs (a photo PNG and a ``.ply`` cloud per category) under
``examples/``. A second call with the same checkpoint reuses the index.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.errors import CacheError, CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)


def find_demo_checkpoint(output_dir: str | os.PathLike = "outputs") -> Path:
    """The newest ``<output_dir>/train/**/checkpoints/best*.ckpt`` (CheckpointError when there is none)."""
    from captionless3d.training.checkpoint_io import best_checkpoints

    candidates = best_checkpoints(output_dir)
    if not candidates:
        raise CheckpointError(f"no checkpoints/best*.ckpt under {Path(output_dir) / 'train'}: train one first "
                              "(python -m captionless3d.train) or pass --ckpt <path>")
    return candidates[-1]


def _cache_dir(model: Any) -> Path:
    override = getattr(model, "cache_dir", None)
    if override is not None:
        return Path(override)
    cache = (model.config.get("paths") or {}).get("cache_dir")
    return Path(cache) if cache else Path(os.environ.get("CAPTIONLESS3D_CACHE", ".cache"))


def load_world_of(model: Any) -> Any:
    """The data collection the checkpoint was trained on, rebuilt (or reused from the cache) from its config."""
    from omegaconf import OmegaConf

    from captionless3d.pipeline import build_collection
    from captionless3d.utils.config import with_cache_dir

    config = dict(model.config)
    if "data" not in config:
        raise ConfigError(f"{model.checkpoint}: the checkpoint's config has no 'data' section; pass --index instead")
    config = with_cache_dir(config, getattr(model, "cache_dir", None))
    return build_collection(OmegaConf.create(config).data)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "shape"


def export_world_shapes(collection: Any, out_dir: str | os.PathLike, splits: Sequence[str] = ("test",)) -> list[str]:
    """Write the clouds of ``splits`` as ``<out_dir>/<category>/<object id>.npy`` (float32 ``(P, 3)``).

    Returns the relative paths, in object order. Existing files of the right size are kept (a rerun is cheap).
    """
    out = Path(out_dir)
    indices = np.concatenate([collection.indices(s) for s in splits]) if splits else np.zeros(0, np.int64)
    if not len(indices):
        raise DataError(f"{collection!r}: no objects in splits {list(splits)}")
    paths = []
    for i in np.sort(indices):
        category = collection.categories[int(collection.labels[i])]
        rel = f"{_safe(category)}/{_safe(collection.object_ids[i])}.npy"
        target = out / rel
        points = np.ascontiguousarray(collection.points[i], dtype=np.float32)
        if not (target.is_file() and target.stat().st_size == points.nbytes + 128):
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, points)
        paths.append(rel)
    return paths


def export_examples(collection: Any, out_dir: str | os.PathLike, splits: Sequence[str] = ("test",)) -> list[Path]:
    """One example photo (``photo_<category>.png``, when the collection has photos) and one ``.ply`` point cloud
    (``shape_<category>.ply``) per category, from the first object of ``splits`` in it: inputs to try on the page."""
    import trimesh
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    indices = np.sort(np.concatenate([collection.indices(s) for s in splits]))
    written: list[Path] = []
    seen: set[int] = set()
    photos = getattr(collection, "photos", None)
    for i in indices:
        label = int(collection.labels[i])
        if label in seen:
            continue
        seen.add(label)
        name = _safe(collection.categories[label])
        ply = out / f"shape_{name}.ply"
        if not ply.is_file():
            trimesh.PointCloud(np.asarray(collection.points[i], dtype=np.float64)).export(ply)
        written.append(ply)
        if isinstance(photos, np.ndarray) and photos.ndim == 5 and photos.dtype == np.uint8:
            png = out / f"photo_{name}.png"
            if not png.is_file():
                Image.fromarray(np.asarray(photos[i, 0])).save(png)
            written.append(png)
    return written


def ensure_demo_index(model: Any, out: str | os.PathLike | None = None, *, splits: Sequence[str] = ("test",),
                      collection: Any | None = None, thumbnail_size: int = 96,
                      progress: bool = True) -> tuple[Any, Any]:
    """The shape index of the checkpoint's world (``splits``), built once per checkpoint under the run's cache.

    Args:
        model: a loaded :class:`~captionless3d.api.Captionless3DModel`.
        out: the demo directory (default ``<paths.cache_dir>/demo/<checkpoint sha256[:16]>-<splits>``); it holds
            ``shapes/``, ``index/`` and ``examples/``.
        collection: the already built collection (default: :func:`load_world_of`).

    Returns:
        ``(index, collection)``; ``collection.categories`` are the default zero-shot labels.
    """
    from captionless3d.shape_index import ShapeIndex

    root = (Path(out) if out is not None
            else _cache_dir(model) / "demo" / f"{model.checkpoint_sha256[:16]}-{'+'.join(splits)}")
    collection = collection if collection is not None else load_world_of(model)
    shapes = root / "shapes"
    rels = export_world_shapes(collection, shapes, splits)
    export_examples(collection, root / "examples", splits)
    index_dir = root / "index"
    try:
        index = ShapeIndex.load(index_dir, teacher_id=model.teacher_id)
        if (index.encoder_sha256 == model.checkpoint_sha256 and sorted(index.paths) == sorted(rels)
                and index.thumbnail(0) is not None):
            log.info("reusing the demo index %s (%d shapes)", index_dir, len(index))
            model.open_index(index)
            return index, collection
        log.info("the demo index %s is stale; rebuilding", index_dir)
    except CacheError:
        pass
    index = model.index(shapes, index_dir, thumbnails=True, thumbnail_size=thumbnail_size, progress=progress)
    return index, collection


__all__ = ["find_demo_checkpoint", "load_world_of", "export_world_shapes", "export_examples", "ensure_demo_index"]
