"""ScanObjectNN h5 files.

Each file has ``data`` float32 (N, 2048, 3), ``label`` (N,) integer and optionally a per-point ``mask`` (N, 2048)
(background points). Variants are chosen by name:

=============  ===================================================================
``OBJ_ONLY``   ``main_split_nobg/{training,test}_objectdataset.h5``
``OBJ_BG``     ``main_split/{training,test}_objectdataset.h5``
``PB_T50_RS``  ``main_split/{training,test}_objectdataset_augmentedrot_scale75.h5``
``PB_T50_R``   ``main_split/{training,test}_objectdataset_augmentedrot.h5``
``PB_T25``     ``main_split/{training,test}_objectdataset_augmented25_norot.h5``
``PB_T25_R``   ``main_split/{training,test}_objectdataset_augmented25rot.h5``
=============  ===================================================================

Class order (label id → name): bag, bin, box, cabinet, chair, desk, display, door, shelf, table, bed, pillow, sink,
sofa, toilet. The training file becomes split ``"train"`` (optionally with a seeded ``val_fraction`` carved out as
``"val"``, as the paper's loader does with seed 42), the test file ``"test"``. Root may be the folder holding
``main_split*/`` or the variant folder itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from captionless3d.data.readers.base import (
    Problems,
    ReaderCollection,
    check_n_points,
    files_fingerprint,
    object_rng,
    prepare_points,
    require_dir,
    stack_points,
)
from captionless3d.errors import ConfigError, DataError

CLASSES = ("bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed", "pillow",
           "sink", "sofa", "toilet")
VARIANTS = {
    "OBJ_ONLY": ("main_split_nobg", ""),
    "OBJ_BG": ("main_split", ""),
    "PB_T50_RS": ("main_split", "_augmentedrot_scale75"),
    "PB_T50_R": ("main_split", "_augmentedrot"),
    "PB_T25": ("main_split", "_augmented25_norot"),
    "PB_T25_R": ("main_split", "_augmented25rot"),
}
FILE_SPLITS = {"training": "train", "test": "test"}


def variant_files(root: str | Path, variant: str) -> dict[str, Path]:
    """``{"training": path, "test": path}`` of a variant (the folder may be ``root/<sub>`` or ``root`` itself)."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant: unknown ScanObjectNN variant {variant!r}; known: {', '.join(VARIANTS)}")
    sub, suffix = VARIANTS[variant]
    root = Path(root)
    folder = root / sub if (root / sub).is_dir() else root
    return {part: folder / f"{part}_objectdataset{suffix}.h5" for part in FILE_SPLITS}


def read_scanobjectnn(
    root: str | Path,
    *,
    variant: str = "OBJ_ONLY",
    parts: tuple[str, ...] | list[str] = ("training", "test"),
    n_points: int | None = None,
    val_fraction: float = 0.0,
    split_seed: int = 42,
    skip_bad: bool = False,
    fingerprint: str = "stat",
) -> ReaderCollection:
    """Read a ScanObjectNN variant. ``parts``: which files to read (``"training"``, ``"test"``).

    ``n_points=None`` keeps all 2048 points; fewer keeps a seeded random subset. ``point_masks`` (``(N, P)`` int or
    ``None``) holds the per-point ``mask`` when every file has one (only with ``n_points=None``).
    """
    import h5py

    root = require_dir(root, "ScanObjectNN")
    n_points = check_n_points(n_points)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction: expected a value in [0, 1), got {val_fraction!r}")
    unknown = [p for p in parts if p not in FILE_SPLITS]
    if unknown or not parts:
        raise ConfigError(f"parts: expected a non-empty subset of {tuple(FILE_SPLITS)}, got {list(parts)}")
    paths = variant_files(root, variant)
    params = {"reader": "scanobjectnn", "variant": variant, "parts": list(parts), "n_points": n_points,
              "val_fraction": float(val_fraction), "split_seed": int(split_seed)}
    problems = Problems(skip_bad)
    clouds, labels, ids, splits, sources, masks, files = [], [], [], [], [], [], []
    for part in parts:
        path = paths[part]
        if not path.is_file():
            raise DataError(f"{path}: ScanObjectNN {variant} {part} file is missing")
        files.append(path)
        try:
            with h5py.File(path, "r") as h5:
                if "data" not in h5 or "label" not in h5:
                    raise DataError(f"{path}: h5 file needs datasets 'data' and 'label', has {sorted(h5.keys())}")
                data = np.asarray(h5["data"])
                label = np.asarray(h5["label"])
                mask = np.asarray(h5["mask"]) if "mask" in h5 else None
        except (OSError, RuntimeError, KeyError, TypeError) as exc:  # h5py reports corrupt files with all four
            raise DataError(f"{path}: unreadable h5 file ({exc})") from exc
        label = label.reshape(len(label), -1)[:, 0] if label.ndim > 1 else label
        if data.ndim != 3 or len(label) != len(data) or label.dtype.kind not in "iu":
            raise DataError(f"{path}: 'data' {data.shape} / 'label' {label.shape} {label.dtype} are not "
                            "(N, P, 3) float / (N,) integer")
        if mask is not None and mask.shape[:2] != data.shape[:2]:
            raise DataError(f"{path}: 'mask' {mask.shape} does not match 'data' {data.shape}")
        split_of = np.full(len(data), FILE_SPLITS[part], dtype=object)
        if part == "training" and val_fraction > 0:
            order = np.random.default_rng(split_seed).permutation(len(data))
            split_of[order[len(data) - int(len(data) * val_fraction):]] = "val"
        for j in range(len(data)):
            oid = f"{variant}/{part}/{j:05d}"
            source = f"{path} item {j}"
            try:
                lab = int(label[j])
                if not 0 <= lab < len(CLASSES):
                    raise DataError(f"{source}: label {lab} outside [0, {len(CLASSES)})")
                cloud = prepare_points(data[j], source, n_points, object_rng(0, oid))
            except DataError as exc:
                problems.add(f"{path}[{j}]", exc)
                continue
            clouds.append(cloud)
            labels.append(lab)
            ids.append(oid)
            splits.append(split_of[j])
            sources.append(source)
            masks.append(None if mask is None else mask[j])
    name = f"scanobjectnn:{variant}"
    problems.report(name)
    collection = ReaderCollection(
        name=name,
        fingerprint=files_fingerprint(files, root, params, mode=fingerprint),
        categories=CLASSES,
        labels=labels,
        splits=splits,
        object_ids=ids,
        points=stack_points(clouds, sources, name),
        files=[str(f) for f in files],
        bad=problems.items,
        extra={"variant": variant},
    )
    has_mask = bool(masks) and all(m is not None for m in masks) and n_points is None
    collection.point_masks = np.stack(masks) if has_mask else None
    return collection
