"""Pix3D (the retrieval benchmark of docs/method.md, Evaluation protocols): one object per ``pix3d.json`` entry.

Each entry is one (photo, shape) pair: ``photos`` ``(N, 1, S, S, 3)`` uint8 (the raw image, shorter side resized to
``image_size`` and centre-cropped), ``masks`` ``(N, 1, S, S)`` bool (the entry's mask, same geometry; "w/o
background" = photo × mask on black) and ``points`` ``(N, n_points, 3)``: ``n_points`` samples on the surface of the
entry's ``model.obj`` (trimesh, seeded per entry as the paper draws one sample per entry), centred and scaled into the
unit sphere, canonical pose. Several entries share a model: ``shape_ids[i]`` is the entry's ``model`` path and
``shape_index[i]`` numbers the unique models, so the full-gallery protocol can deduplicate. Every entry is in split
``"test"``. ``views`` is empty (``(N, 0, S, S, 3)``).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.data.readers.base import (
    LazyArray,
    Problems,
    ReaderCollection,
    check_image,
    check_image_size,
    files_fingerprint,
    load_mask,
    load_rgb,
    normalise_cloud,
    object_rng,
    read_json,
    require_dir,
)
from captionless3d.errors import ConfigError, DataError

CATEGORIES = ("bed", "bookcase", "chair", "desk", "misc", "sofa", "table", "tool", "wardrobe")
CLEAN_FLAGS = ("truncated", "occluded", "slightly_occluded")


def _load_mesh(path: Path):
    import trimesh

    if not path.is_file():
        raise DataError(f"{path}: model file is missing")
    try:
        mesh = trimesh.load(path, force="mesh", process=False, skip_materials=True)
    except Exception as exc:  # trimesh raises many types for malformed files
        raise DataError(f"{path}: unreadable mesh ({type(exc).__name__}: {exc})") from exc
    if not hasattr(mesh, "faces") or len(mesh.faces) == 0 or not float(mesh.area) > 0:
        raise DataError(f"{path}: mesh has no faces (or zero area); cannot sample points")
    if not np.isfinite(np.asarray(mesh.vertices)).all():
        raise DataError(f"{path}: mesh has NaN/Inf vertex coordinates")
    return mesh


def read_pix3d(
    root: str | Path,
    *,
    json_file: str = "pix3d.json",
    image_size: int = 224,
    n_points: int = 2048,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    clean_only: bool = False,
    lazy: bool = False,
    max_entries: int | None = None,
    skip_bad: bool = False,
    fingerprint: str = "stat",
) -> ReaderCollection:
    """Read Pix3D. ``categories``: keep only these (label order stays the 9 Pix3D classes); ``clean_only``: drop
    truncated/occluded entries; ``lazy``: decode photos/masks on access (files are still checked up front);
    ``max_entries``: first k entries (smoke runs)."""
    import trimesh

    root = require_dir(root, "Pix3D")
    image_size = check_image_size(image_size)
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 1:
        raise ConfigError(f"n_points: expected a positive integer, got {n_points!r}")
    keep = set(CATEGORIES if categories is None else categories)
    unknown = sorted(keep - set(CATEGORIES))
    if unknown:
        raise ConfigError(f"categories: unknown Pix3D categories {unknown}; known: {', '.join(CATEGORIES)}")
    json_path = root / json_file
    entries = read_json(json_path, "Pix3D annotation file")
    if not isinstance(entries, list):
        raise DataError(f"{json_path}: expected a JSON list of entries, got {type(entries).__name__}")
    if max_entries is not None:
        entries = entries[: int(max_entries)]
    params = {"reader": "pix3d", "json": json_file, "image_size": image_size, "n_points": int(n_points),
              "seed": int(seed), "categories": sorted(keep), "clean_only": bool(clean_only),
              "max_entries": max_entries}
    problems = Problems(skip_bad)
    meshes: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    files: list[Path] = [json_path]
    for i, entry in enumerate(entries):
        where = f"{json_path} entry {i}"
        try:
            if not isinstance(entry, dict):
                raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
            cat = entry.get("category")
            if cat not in CATEGORIES:
                raise DataError(f"{where}: unknown category {cat!r}")
            if cat not in keep or (clean_only and any(entry.get(f) for f in CLEAN_FLAGS)):
                continue
            where = f"{json_path} entry {i} ({entry.get('img')})"
            for field in ("img", "mask", "model"):
                if not entry.get(field):
                    raise DataError(f"{where}: has no '{field}' field")
            img, mask, model = root / entry["img"], root / entry["mask"], root / entry["model"]
            if not mask.is_file():
                raise DataError(f"{where}: mask file {mask} is missing")
            size = check_image(img)
            msize = check_image(mask)
            if msize != size:
                raise DataError(f"{mask}: mask is {msize[0]}x{msize[1]} but {img} is {size[0]}x{size[1]}")
            key = entry["model"]
            if key not in meshes:
                try:
                    meshes[key] = _load_mesh(model)
                except DataError as exc:
                    meshes[key] = exc
            if isinstance(meshes[key], DataError):
                raise DataError(f"{where}: {meshes[key]}")
            pts, _ = trimesh.sample.sample_surface(meshes[key], int(n_points), seed=object_rng(seed, entry["img"]))
            cloud = normalise_cloud(np.asarray(pts), str(model))
            photo = None if lazy else load_rgb(img, image_size, background=None)
            pmask = None if lazy else load_mask(mask, image_size, like=size)
        except DataError as exc:
            problems.add(entry.get("img", f"entry {i}") if isinstance(entry, dict) else f"entry {i}", exc)
            continue
        files += [img, mask, model]
        rows.append({"id": str(entry["img"]), "label": CATEGORIES.index(cat), "model": key, "points": cloud,
                     "img": img, "mask": mask, "photo": photo, "pmask": pmask})
    name = "pix3d"
    problems.report(name)
    n = len(rows)
    if lazy:
        photos: Any = LazyArray(n, (1, image_size, image_size, 3), np.uint8,
                                lambda k: load_rgb(rows[k]["img"], image_size, background=None)[None], "pix3d photos")
        masks: Any = LazyArray(n, (1, image_size, image_size), bool,
                               lambda k: load_mask(rows[k]["mask"], image_size)[None], "pix3d masks")
    else:
        photos = (np.stack([r["photo"] for r in rows])[:, None] if n
                  else np.zeros((0, 1, image_size, image_size, 3), np.uint8))
        masks = np.stack([r["pmask"] for r in rows])[:, None] if n else np.zeros((0, 1, image_size, image_size), bool)
    return ReaderCollection(
        name=name,
        fingerprint=files_fingerprint(dict.fromkeys(str(f) for f in files), root, params, mode=fingerprint),
        categories=CATEGORIES,
        labels=[r["label"] for r in rows],
        splits=["test"] * n,
        object_ids=[r["id"] for r in rows],
        points=np.stack([r["points"] for r in rows]) if n else np.zeros((0, int(n_points), 3), np.float32),
        photos=photos,
        masks=masks,
        image_size=image_size,
        shape_ids=[r["model"] for r in rows],
        files=[str(f) for f in dict.fromkeys(str(f) for f in files)],
        bad=problems.items,
    )
