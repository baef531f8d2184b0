"""ModelNet40 zero-shot test set, evaluation only (every object is in split ``"test"``).

Two layouts:

* ``format="dat"`` (ULIP / Point-BERT, the paper's file): ``root/modelnet40_shape_names.txt`` (40 underscored names,
  label order) and ``root/modelnet40_{split}_8192pts_fps.dat`` = ``pickle.dump([points, labels])`` with ``points`` a
  list of float32 ``(8192, 6)`` arrays (xyz + normals, FPS order) and ``labels`` a list of int32 ``(1,)`` arrays.
  Read through the restricted unpickler; only xyz is kept. Optional ``modelnet40_{split}.txt`` gives object ids.
* ``format="h5"`` (PointCLIP's ``modelnet40_ply_hdf5_2048``): ``shape_names.txt``, ``{split}_files.txt`` listing the
  ``ply_data_{split}{k}.h5`` files (entries resolved by file name under ``root``), each with ``data`` (N, 2048, 3)
  float32 and ``label`` (N, 1) uint8.

``categories`` are the prompt names (underscores → spaces: "flower pot", "night stand", "range hood", "tv stand",
"glass box"); ``category_keys`` keep the underscored names used for indexing.
"""
from __future__ import annotations

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
    read_lines,
    require_dir,
    require_file,
    stack_points,
)
from captionless3d.data.safe_pickle import safe_load_pickle
from captionless3d.errors import ConfigError, DataError

FORMATS = ("dat", "h5", "auto")
CLASSES = (  # modelnet40_shape_names.txt order (label id -> underscored name)
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup", "curtain",
    "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop", "mantel", "monitor",
    "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa", "stairs", "stool", "table",
    "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
)


def prompt_name(key: str) -> str:
    return key.replace("_", " ")


def _shape_names(path: Path) -> list[str]:
    names = read_lines(path, "ModelNet40 class-name list")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: duplicate class names")
    return names


def read_modelnet40(
    root: str | Path,
    *,
    format: str = "auto",
    split: str = "test",
    n_points: int | None = None,
    dat_file: str | None = None,
    skip_bad: bool = False,
    fingerprint: str = "stat",
) -> ReaderCollection:
    """Read the ModelNet40 ``split`` ("test" for zero-shot; "train" also readable) as an evaluation collection.

    ``n_points=None`` keeps every stored point (8192 for the ``.dat``, 2048 for the h5); a smaller value keeps the
    first ``n_points`` of the FPS-ordered ``.dat`` clouds (an FPS subsample) or a seeded random subset of h5 clouds.
    """
    root = require_dir(root, "ModelNet40")
    if split not in ("test", "train"):
        raise ConfigError(f"split: ModelNet40 has 'train' and 'test', got {split!r}")
    if format not in FORMATS:
        raise ConfigError(f"format: expected one of {FORMATS}, got {format!r}")
    n_points = check_n_points(n_points)
    dat = root / (dat_file or f"modelnet40_{split}_8192pts_fps.dat")
    if format == "auto":
        format = "dat" if dat.is_file() else "h5"
    params = {"reader": "modelnet40", "format": format, "split": split, "n_points": n_points}
    problems = Problems(skip_bad)
    if format == "dat":
        keys, clouds, labels, ids, sources, files = _read_dat(root, dat, split, n_points, problems)
    else:
        keys, clouds, labels, ids, sources, files = _read_h5(root, split, n_points, problems)
    name = f"modelnet40-{format}:{split}"
    problems.report(name)
    points = stack_points(clouds, sources, name)
    return ReaderCollection(
        name=name,
        fingerprint=files_fingerprint(files, root, params, mode=fingerprint),
        categories=[prompt_name(k) for k in keys],
        category_keys=keys,
        labels=np.asarray(labels, np.int64),
        splits=[split] * len(ids),
        object_ids=ids,
        points=points,
        files=[str(f) for f in files],
        bad=problems.items,
    )


def _label(raw: Any, source: str, n_classes: int) -> int:
    arr = np.asarray(raw) if isinstance(raw, (np.ndarray, np.integer, int)) and not isinstance(raw, bool) else None
    if arr is None or arr.dtype.kind not in "iu" or arr.size != 1:
        raise DataError(f"{source}: label must be an integer array of shape (1,), got {type(raw).__name__} "
                        f"{getattr(raw, 'shape', '')}")
    value = int(arr.reshape(-1)[0])
    if not 0 <= value < n_classes:
        raise DataError(f"{source}: label {value} outside [0, {n_classes})")
    return value


def _read_dat(root: Path, dat: Path, split: str, n_points: int | None, problems: Problems):
    names_file = root / "modelnet40_shape_names.txt"
    keys = _shape_names(names_file)
    require_file(dat, "ModelNet40 .dat file")
    payload = safe_load_pickle(dat)
    if not (isinstance(payload, (list, tuple)) and len(payload) == 2
            and all(isinstance(p, (list, tuple)) for p in payload)):
        raise DataError(f"{dat}: expected a pickled [list_of_points, list_of_labels], got {type(payload).__name__}")
    raw_points, raw_labels = payload
    if len(raw_points) != len(raw_labels):
        raise DataError(f"{dat}: {len(raw_points)} clouds but {len(raw_labels)} labels")
    id_file = root / f"modelnet40_{split}.txt"
    ids_all = read_lines(id_file, "ModelNet40 id list") if id_file.is_file() else []
    if len(ids_all) != len(raw_points):
        ids_all = [f"modelnet40_{split}_{i:04d}" for i in range(len(raw_points))]
    clouds, labels, ids, sources = [], [], [], []
    for i, (pts, lab) in enumerate(zip(raw_points, raw_labels)):
        source = f"{dat} item {i} ({ids_all[i]})"
        try:
            label = _label(lab, source, len(keys))
            cloud = prepare_points(pts, source, n_points, how="first")
        except DataError as exc:
            problems.add(f"{dat}[{i}]", exc)
            continue
        clouds.append(cloud)
        labels.append(label)
        ids.append(ids_all[i])
        sources.append(source)
    files = [names_file, dat] + ([id_file] if id_file.is_file() else [])
    return keys, clouds, labels, ids, sources, files


def _read_h5(root: Path, split: str, n_points: int | None, problems: Problems):
    import h5py

    names_file = root / "shape_names.txt"
    keys = _shape_names(names_file)
    list_file = root / f"{split}_files.txt"
    entries = read_lines(list_file, "ModelNet40 h5 file list")
    files: list[Path] = [names_file, list_file]
    clouds, labels, ids, sources = [], [], [], []
    for entry in entries:
        path = root / Path(entry).name
        require_file(path, f"h5 file listed in {list_file}")
        files.append(path)
        try:
            with h5py.File(path, "r") as h5:
                if "data" not in h5 or "label" not in h5:
                    raise DataError(f"{path}: h5 file needs datasets 'data' and 'label', has {sorted(h5.keys())}")
                data = np.asarray(h5["data"])
                label = np.asarray(h5["label"]).reshape(-1)
        except (OSError, RuntimeError, KeyError, TypeError) as exc:  # h5py reports corrupt files with all four
            raise DataError(f"{path}: unreadable h5 file ({exc})") from exc
        if data.ndim != 3 or len(label) != len(data):
            raise DataError(f"{path}: 'data' {data.shape} and 'label' {label.shape} do not match (N, P, 3) / (N,)")
        for j in range(len(data)):
            oid = f"{path.stem}_{j:04d}"
            source = f"{path} item {j}"
            try:
                lab = _label(label[j:j + 1], source, len(keys))
                cloud = prepare_points(data[j], source, n_points, object_rng(0, oid))
            except DataError as exc:
                problems.add(f"{path}[{j}]", exc)
                continue
            clouds.append(cloud)
            labels.append(lab)
            ids.append(oid)
            sources.append(source)
    return keys, clouds, labels, ids, sources, files
