"""OpenShape data: per-shape ``.npy`` dicts read through the restricted unpickler.

* :func:`read_openshape`: a split JSON (``meta_data/split/train_all.json``-style ``{"id", "dataset", "group",
  "data_path"}`` or ``lvis.json``-style ``{"uid", "category", "group", "data_path"}``). ``data_path`` holds the
  authors' absolute path; it is resolved under ``root`` as ``{dataset}/{group}/{uid}.npy`` or by the part after
  ``merged_for_training_final/``. Each file is ``np.save`` of a dict with ``xyz`` (P, 3) (float16), ``rgb``,
  ``image_feat`` (12, D) precomputed teacher features, texts and their features (ignored). The collection's
  ``view_emb`` ``(N, 12, D)`` float32 holds ``image_feat`` when every shape has it (None otherwise); ``views`` is
  empty (no images in this format). Categories come from the entries' ``category`` (else one category "object");
  splits per category like the paper (sorted ids, 80/20 by default).
* :func:`read_openshape_modelnet40`: ``meta_data/modelnet40/test_pc.npy`` (object array of ``{"xyz", "rgb"}``) with
  ``test_split.json`` (``{"name", "category"}``, underscored names) as an evaluation collection (split "test").

``xyz`` is used as stored (the project is y-up, as the files are); ``swap_yz`` swaps y and z (OpenShape's ``y_up``).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.data.readers.base import (
    Problems,
    ReaderCollection,
    check_n_points,
    files_fingerprint,
    object_rng,
    prepare_points,
    read_json,
    require_dir,
    require_file,
    stack_points,
)
from captionless3d.data.readers.modelnet40 import CLASSES as MODELNET40_CLASSES
from captionless3d.data.readers.modelnet40 import prompt_name
from captionless3d.data.readers.ulip_shapenet import paper_split
from captionless3d.data.safe_pickle import safe_load_npy, safe_load_npy_object
from captionless3d.errors import DataError

MARKER = "merged_for_training_final/"


def _resolve(root: Path, entry: dict, where: str) -> Path:
    uid = entry.get("id", entry.get("uid"))
    candidates = []
    data_path = str(entry.get("data_path", ""))
    if data_path:
        candidates.append(Path(data_path))
        if MARKER in data_path:
            candidates.append(root / data_path.split(MARKER, 1)[1])
    if uid is not None and entry.get("group") is not None:
        if entry.get("dataset"):
            candidates.append(root / str(entry["dataset"]) / str(entry["group"]) / f"{uid}.npy")
        candidates += sorted(root.glob(f"*/{entry['group']}/{uid}.npy"))
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"{where}: shape file not found (tried {', '.join(str(c) for c in candidates[:3]) or 'nothing'})")


def _xyz(shape: Any, path: Path, swap_yz: bool) -> np.ndarray:
    if not isinstance(shape, dict) or "xyz" not in shape:
        kind = type(shape).__name__ if not isinstance(shape, dict) else f"dict without 'xyz' ({sorted(shape)[:6]})"
        raise DataError(f"{path}: expected an OpenShape shape dict with 'xyz', got {kind}")
    xyz = shape["xyz"]
    if isinstance(xyz, np.ndarray) and xyz.ndim == 2 and xyz.shape[1] >= 3 and swap_yz:
        xyz = xyz[:, [0, 2, 1]]
    return xyz


def read_openshape(
    root: str | Path,
    *,
    split_file: str = "meta_data/split/train_all.json",
    n_points: int | None = 10000,
    swap_yz: bool = False,
    datasets: Sequence[str] | None = None,
    val_split: float = 0.2,
    test_split: float = 0.0,
    max_objects: int | None = None,
    seed: int = 0,
    image_size: int = 224,
    skip_bad: bool = False,
    fingerprint: str = "stat",
) -> ReaderCollection:
    root = require_dir(root, "OpenShape data")
    n_points = check_n_points(n_points)
    split_path = root / split_file
    entries = read_json(split_path, "OpenShape split file")
    if not isinstance(entries, list):
        raise DataError(f"{split_path}: expected a JSON list, got {type(entries).__name__}")
    if datasets is not None:
        entries = [e for e in entries if isinstance(e, dict) and e.get("dataset") in set(datasets)]
    if max_objects is not None:
        entries = entries[: int(max_objects)]
    problems = Problems(skip_bad)
    rows = []
    for i, entry in enumerate(entries):
        where = f"{split_path} entry {i}"
        try:
            if not isinstance(entry, dict) or entry.get("id", entry.get("uid")) is None:
                raise DataError(f"{where}: expected an object with 'id' or 'uid'")
            path = _resolve(root, entry, where)
            shape = safe_load_npy_object(path)
            cloud = prepare_points(_xyz(shape, path, swap_yz), str(path), n_points,
                                   object_rng(seed, entry.get("id", entry.get("uid"))))
            feat = shape.get("image_feat")
            feat = np.asarray(feat, np.float32) if isinstance(feat, np.ndarray) and feat.ndim == 2 else None
        except DataError as exc:
            problems.add(entry.get("data_path", where) if isinstance(entry, dict) else where, exc)
            continue
        uid = str(entry.get("id", entry.get("uid")))
        rows.append({"id": uid, "category": str(entry.get("category", "object")), "path": path, "points": cloud,
                     "feat": feat})
    name = f"openshape:{Path(split_file).stem}"
    problems.report(name)
    if len({r["id"] for r in rows}) != len(rows):
        raise DataError(f"{split_path}: duplicate shape ids")
    cats = sorted({r["category"] for r in rows})
    by_cat: dict[str, list[str]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r["id"])
    splits = paper_split(by_cat, val_split, test_split)
    params = {"reader": "openshape", "split_file": split_file, "n_points": n_points, "swap_yz": bool(swap_yz),
              "datasets": None if datasets is None else sorted(datasets), "val_split": float(val_split),
              "test_split": float(test_split), "max_objects": max_objects, "seed": int(seed)}
    collection = ReaderCollection(
        name=name,
        fingerprint=files_fingerprint([split_path] + [r["path"] for r in rows], root, params, mode=fingerprint),
        categories=cats,
        labels=[cats.index(r["category"]) for r in rows],
        splits=[splits[r["id"]] for r in rows],
        object_ids=[r["id"] for r in rows],
        points=stack_points([r["points"] for r in rows], [str(r["path"]) for r in rows], name),
        image_size=image_size,
        files=[str(r["path"]) for r in rows],
        bad=problems.items,
    )
    feats = [r["feat"] for r in rows]
    ok = bool(feats) and all(f is not None for f in feats) and len({f.shape for f in feats}) == 1
    collection.view_emb = np.stack(feats) if ok else None
    return collection


def read_openshape_modelnet40(
    root: str | Path,
    *,
    n_points: int | None = None,
    swap_yz: bool = False,
    seed: int = 0,
    skip_bad: bool = False,
    fingerprint: str = "stat",
) -> ReaderCollection:
    """OpenShape's ModelNet40 test files (``meta_data/modelnet40/``) as an evaluation collection."""
    root = Path(root)
    folder = root / "meta_data" / "modelnet40" if (root / "meta_data" / "modelnet40").is_dir() else root
    require_dir(folder, "OpenShape ModelNet40")
    n_points = check_n_points(n_points)
    pc_path = require_file(folder / "test_pc.npy", "OpenShape ModelNet40 point file")
    split_path = folder / "test_split.json"
    meta = read_json(split_path, "OpenShape ModelNet40 split")
    items = safe_load_npy(pc_path)
    if not isinstance(items, np.ndarray) or items.ndim != 1 or not isinstance(meta, list) or len(items) != len(meta):
        raise DataError(f"{pc_path}: expected an object array of {len(meta) if isinstance(meta, list) else '?'} dicts "
                        f"matching {split_path.name}, got {getattr(items, 'shape', type(items).__name__)}")
    problems = Problems(skip_bad)
    clouds, labels, ids, sources = [], [], [], []
    for i, (item, m) in enumerate(zip(items, meta)):
        source = f"{pc_path} item {i}"
        try:
            cat = m.get("category") if isinstance(m, dict) else None
            if cat not in MODELNET40_CLASSES:
                raise DataError(f"{split_path} entry {i}: unknown category {cat!r}")
            cloud = prepare_points(_xyz(item, Path(source), swap_yz), source, n_points, object_rng(seed, i))
        except DataError as exc:
            problems.add(f"{pc_path}[{i}]", exc)
            continue
        clouds.append(cloud)
        labels.append(MODELNET40_CLASSES.index(cat))
        ids.append(str(m.get("name", f"modelnet40_test_{i:04d}")))
        sources.append(source)
    name = "openshape-modelnet40:test"
    problems.report(name)
    params = {"reader": "openshape_modelnet40", "n_points": n_points, "swap_yz": bool(swap_yz), "seed": int(seed)}
    return ReaderCollection(
        name=name,
        fingerprint=files_fingerprint([pc_path, split_path], folder, params, mode=fingerprint),
        categories=[prompt_name(k) for k in MODELNET40_CLASSES],
        category_keys=list(MODELNET40_CLASSES),
        labels=labels,
        splits=["test"] * len(ids),
        object_ids=ids,
        points=stack_points(clouds, sources, name),
        bad=problems.items,
    )
