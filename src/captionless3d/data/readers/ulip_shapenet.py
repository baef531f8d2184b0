"""ULIP ShapeNet-55 (and ULIP-2 triplets): point clouds + renders, the paper's training data.

ShapeNet layout (``read_ulip_shapenet``)::

    root/train.txt, test.txt            "{synset}-{model}.npy" per line (optional: else every file in shapenet_pc/)
    root/taxonomy.json                  [{"synsetId", "name": "airplane,aeroplane,plane", ...}, ...]
    root/shapenet_pc/{synset}-{model}.npy          float (8192, 3) xyz (ULIP-2 triplets: same, or .npz "arr_0")
    root/rendered_images/{id}/{id}_r_{AAA}.png     ULIP-1, one folder per model, AAA = 000 ... 348 step 12
    root/only_rgb_depth_images/{id}_r_{AAA}.png    ULIP-2 triplets, flat (``_depth0001`` files are ignored)
    root/captions/...                              ignored (the student never sees captions)

Objects = the union of the list files (ULIP trains on train+test), minus ``drop_synsets`` (default 02992529, dropped
by the paper as a duplicate of 04401088). Splits follow the paper's released code: per synset, model ids sorted,
the first ``int(n * (1 - val_split - test_split))`` are ``"train"``, the last ``int(n * test_split)`` ``"test"``, the
rest ``"val"``; the split is computed on every listed id before bad objects are dropped, so it never shifts.
``categories`` are the first taxonomy synonym ("airplane"); ``category_keys`` the synset ids.

``views`` is a :class:`LazyArray` ``(N, V, S, S, 3)`` uint8: each render composited on ``background`` (white: the
renders are RGBA with a transparent background), resized and centre-cropped to ``image_size``. Every object must have
every requested view (else a DataError naming the object and the missing file); with ``check_images`` every PNG is
verified up front (slow on the full 1.6 M renders; set false there, a bad PNG then fails when it is read).

ULIP-2 Objaverse triplets (``read_ulip_objaverse``): ``objaverse_pc_parallel/{uid}/{uid}_8192.npz`` (``arr_0``
(8192, 3)), ``rendered_images_split_100/{uid}/{000..011}.png`` (12 views, 30 deg apart; elevation undocumented,
recorded as 0); ``merged_data.json`` captions ignored.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.data.readers.base import (
    LazyArray,
    Problems,
    ReaderCollection,
    check_image,
    check_image_size,
    check_n_points,
    files_fingerprint,
    load_rgb,
    object_rng,
    prepare_points,
    read_json,
    read_lines,
    require_dir,
    stack_points,
)
from captionless3d.data.safe_pickle import check_npy_complete, safe_load_npy
from captionless3d.errors import ConfigError, DataError

ULIP_ANGLES = tuple(range(0, 360, 12))
DROPPED_SYNSETS = ("02992529",)
RENDER_ELEVATION = 31.0  # panmari renderer camera at (0, 1, 0.6): ~31 deg; ULIP does not document it


def paper_split(ids_by_group: Mapping[str, Sequence[str]], val_split: float = 0.2,
                test_split: float = 0.0) -> dict[str, str]:
    """The paper's per-category split: ids sorted, first ``int(n*(1-val-test))`` train, last ``int(n*test)`` test."""
    if not (0 <= val_split < 1 and 0 <= test_split < 1 and val_split + test_split < 1):
        raise ConfigError(f"val_split/test_split: need 0 <= val, test and val + test < 1, got {val_split}, "
                          f"{test_split}")
    out: dict[str, str] = {}
    for ids in ids_by_group.values():
        ordered = sorted(ids)
        n = len(ordered)
        n_train = int(n * (1 - val_split - test_split))
        n_test = int(n * test_split)
        for k, oid in enumerate(ordered):
            out[oid] = "train" if k < n_train else ("test" if k >= n - n_test else "val")
    return out


def load_cloud_file(path: Path) -> np.ndarray:
    """A point file: ``.npy`` (plain array, no pickles) or ``.npz`` (``arr_0``, np.savez default). DataError on
    problems."""
    if not path.is_file():
        raise DataError(f"{path}: point-cloud file is missing")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "arr_0" not in npz.files:
                    raise DataError(f"{path}: .npz has no 'arr_0' array (has {npz.files})")
                return np.asarray(npz["arr_0"])
        except DataError:
            raise
        except Exception as exc:  # zipfile / numpy raise many types for broken archives
            raise DataError(f"{path}: corrupt or truncated .npz ({type(exc).__name__}: {exc})") from exc
    arr = safe_load_npy(path)
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: expected a point array, found a pickled {type(arr).__name__}")
    return arr


def _check_cloud_header(path: Path, n_points: int | None) -> None:
    if path.suffix != ".npy":
        load_cloud_file(path)
        return
    if not path.is_file():
        raise DataError(f"{path}: point-cloud file is missing")
    shape, dtype = check_npy_complete(path)
    if len(shape) != 2 or shape[1] < 3 or dtype.kind not in "fiu":
        raise DataError(f"{path}: expected a (P, 3) numeric point array, header says {shape} {dtype}")
    if n_points is not None and shape[0] < n_points:
        raise DataError(f"{path}: has only {shape[0]} points, {n_points} requested")


class _Views:
    """Loader of the ``(V, S, S, 3)`` renders of object ``i``."""

    def __init__(self, paths: list[list[Path]], size: int, background: tuple[int, int, int] | None) -> None:
        self.paths, self.size, self.background = paths, size, background

    def __call__(self, i: int) -> np.ndarray:
        return np.stack([load_rgb(p, self.size, background=self.background) for p in self.paths[i]])


class _Points:
    def __init__(self, paths: list[Path], ids: list[str], n_points: int | None, seed: int) -> None:
        self.paths, self.ids, self.n_points, self.seed = paths, ids, n_points, seed

    def __call__(self, i: int) -> np.ndarray:
        raw = load_cloud_file(self.paths[i])
        return prepare_points(raw, str(self.paths[i]), self.n_points, object_rng(self.seed, self.ids[i]))


def _bg(background: Any) -> tuple[int, int, int] | None:
    if background is None:
        return None
    if isinstance(background, str):
        named = {"white": (255, 255, 255), "black": (0, 0, 0)}
        if background not in named:
            raise ConfigError(f"background: expected 'white', 'black', null or an RGB triple, got {background!r}")
        return named[background]
    bg = tuple(int(c) for c in background)
    if len(bg) != 3 or not all(0 <= c <= 255 for c in bg):
        raise ConfigError(f"background: expected an RGB triple in 0..255, got {background!r}")
    return bg  # type: ignore[return-value]


def _build(
    *, name: str, root: Path, ids: list[str], labels: list[int], categories: list[str], category_keys: list[str],
    splits: dict[str, str], cloud_paths: list[Path], view_paths: list[list[Path]],
    view_angles: list[tuple[float, float]],
    extra_files: list[Path], params: dict[str, Any], n_points: int | None, image_size: int, background: Any,
    seed: int, points_in_memory: bool, check_images: bool, problems: Problems, fingerprint: str,
    expected_views: int, extra: dict[str, Any] | None = None,
) -> ReaderCollection:
    keep_ids, keep_labels, keep_clouds, keep_cpaths, keep_vpaths, sources = [], [], [], [], [], []
    for oid, label, cpath, vpaths in zip(ids, labels, cloud_paths, view_paths):
        try:
            if len(vpaths) != expected_views:
                raise DataError(f"{oid}: expected {expected_views} views, found {len(vpaths)}")
            missing = [p for p in vpaths if not p.is_file()]
            if missing:
                raise DataError(f"{missing[0]}: view missing for {oid} ({len(vpaths) - len(missing)} of "
                                f"{expected_views} views present)")
            if check_images:
                for p in vpaths:
                    check_image(p)
            if points_in_memory:
                cloud = prepare_points(load_cloud_file(cpath), str(cpath), n_points, object_rng(seed, oid))
            else:
                _check_cloud_header(cpath, n_points)
                cloud = None
        except DataError as exc:
            problems.add(cpath, exc)
            continue
        keep_ids.append(oid)
        keep_labels.append(label)
        keep_clouds.append(cloud)
        keep_cpaths.append(cpath)
        keep_vpaths.append(vpaths)
        sources.append(str(cpath))
    problems.report(name)
    n = len(keep_ids)
    if points_in_memory:
        points: Any = stack_points(keep_clouds, sources, name)
    else:
        if n_points is None:
            raise ConfigError("n_points: points_in_memory=false needs a fixed n_points")
        points = LazyArray(n, (n_points, 3), np.float32, _Points(keep_cpaths, keep_ids, n_points, seed),
                           f"{name} points")
    views = LazyArray(n, (expected_views, image_size, image_size, 3), np.uint8,
                      _Views(keep_vpaths, image_size, _bg(background)), f"{name} views")
    files = extra_files + keep_cpaths + [p for vp in keep_vpaths for p in vp]
    return ReaderCollection(
        name=name,
        fingerprint=files_fingerprint(files, root, params, mode=fingerprint),
        categories=categories,
        category_keys=category_keys,
        labels=keep_labels,
        splits=[splits[o] for o in keep_ids],
        object_ids=keep_ids,
        points=points,
        views=views,
        view_angles=view_angles,
        image_size=image_size,
        bad=problems.items,
        extra=extra,
    )


def _angles(view_angles: Sequence[int] | None) -> list[int]:
    angles = list(ULIP_ANGLES if view_angles is None else view_angles)
    bad = [a for a in angles if a not in ULIP_ANGLES]
    if bad or not angles or len(set(angles)) != len(angles):
        raise ConfigError(f"view_angles: expected distinct ULIP angles (0..348 step 12), got {angles}")
    return angles


def read_ulip_shapenet(
    root: str | Path,
    *,
    list_files: Sequence[str] = ("train.txt", "test.txt"),
    image_dir: str | None = None,
    view_angles: Sequence[int] | None = None,
    image_size: int = 224,
    background: Any = "white",
    n_points: int | None = 8192,
    seed: int = 0,
    val_split: float = 0.2,
    test_split: float = 0.0,
    drop_synsets: Sequence[str] = DROPPED_SYNSETS,
    synsets: Sequence[str] | None = None,
    max_per_synset: int | None = None,
    points_in_memory: bool = True,
    check_images: bool = True,
    skip_bad: bool = False,
    fingerprint: str = "stat",
) -> ReaderCollection:
    """Read ULIP ShapeNet-55 (ULIP-1 folders or ULIP-2 triplet flat folder) as a training collection.

    ``image_dir``: ``"rendered_images"`` / ``"only_rgb_depth_images"`` / ``None`` (whichever exists).
    ``view_angles``: azimuths to use (default all 30). ``n_points``: points kept per cloud (seeded random subset;
    ``None`` keeps all). ``max_per_synset``: keep the first k sorted ids of each synset (smoke runs; applied before the
    split). ``points_in_memory=false`` reads clouds on access (headers checked up front).
    """
    root = require_dir(root, "ULIP ShapeNet-55")
    image_size = check_image_size(image_size)
    n_points = check_n_points(n_points)
    angles = _angles(view_angles)
    pc_dir = require_dir(root / "shapenet_pc", "ULIP point-cloud (shapenet_pc)")
    lists = [root / f for f in list_files if (root / f).is_file()]
    if lists:
        names = [line.split()[0] for f in lists for line in read_lines(f, "ULIP id list")]
    else:
        names = sorted(p.name for p in pc_dir.iterdir() if p.suffix in (".npy", ".npz"))
    by_synset: dict[str, list[str]] = {}
    for entry in dict.fromkeys(names):
        stem = entry.rsplit(".", 1)[0] if entry.endswith((".npy", ".npz")) else entry
        if "-" not in stem:
            raise DataError(f"{lists[0] if lists else pc_dir}: entry {entry!r} is not '{{synset}}-{{model}}.npy'")
        synset = stem.split("-", 1)[0]
        if synset in drop_synsets or (synsets is not None and synset not in synsets):
            continue
        by_synset.setdefault(synset, []).append(stem)
    if max_per_synset is not None:
        by_synset = {s: sorted(v)[: int(max_per_synset)] for s, v in by_synset.items()}
    if not by_synset:
        raise DataError(f"{root}: no ShapeNet objects found (list files {list(list_files)}, shapenet_pc/)")
    tax_path = root / "taxonomy.json"
    taxonomy = read_json(tax_path, "ShapeNet taxonomy")
    names_by_synset = {str(t.get("synsetId")): str(t.get("name", "")) for t in taxonomy if isinstance(t, dict)}
    keys = sorted(by_synset)
    missing = [s for s in keys if s not in names_by_synset]
    if missing:
        raise DataError(f"{tax_path}: synsets {missing[:5]} are not in the taxonomy")
    categories = [names_by_synset[s].split(",")[0].strip() for s in keys]
    splits = paper_split(by_synset, val_split, test_split)
    if image_dir is None:
        image_dir = "rendered_images" if (root / "rendered_images").is_dir() else "only_rgb_depth_images"
    img_root = require_dir(root / image_dir, "ULIP render")
    flat = image_dir != "rendered_images" and not any((img_root / sorted(v)[0]).is_dir() for v in by_synset.values())
    ids, labels, cloud_paths, view_paths = [], [], [], []
    for label, synset in enumerate(keys):
        for oid in sorted(by_synset[synset]):
            npy = pc_dir / f"{oid}.npy"
            ids.append(oid)
            labels.append(label)
            cloud_paths.append(npy if npy.is_file() or not (pc_dir / f"{oid}.npz").is_file() else pc_dir / f"{oid}.npz")
            folder = img_root if flat else img_root / oid
            view_paths.append([folder / f"{oid}_r_{a:03d}.png" for a in angles])
    params = {"reader": "ulip_shapenet", "lists": list(list_files), "image_dir": image_dir, "angles": angles,
              "image_size": image_size, "background": _bg(background), "n_points": n_points, "seed": int(seed),
              "val_split": float(val_split), "test_split": float(test_split), "drop": sorted(drop_synsets),
              "synsets": None if synsets is None else sorted(synsets), "max_per_synset": max_per_synset}
    return _build(
        name="ulip-shapenet55", root=root, ids=ids, labels=labels, categories=categories, category_keys=keys,
        splits=splits, cloud_paths=cloud_paths, view_paths=view_paths,
        view_angles=[(float(a), RENDER_ELEVATION) for a in angles], extra_files=lists + [tax_path], params=params,
        n_points=n_points, image_size=image_size, background=background, seed=seed,
        points_in_memory=points_in_memory, check_images=check_images, problems=Problems(skip_bad),
        fingerprint=fingerprint, expected_views=len(angles),
        extra={"synset_names": {s: names_by_synset[s] for s in keys}},
    )


def read_ulip_objaverse(
    root: str | Path,
    *,
    n_views: int = 12,
    image_size: int = 224,
    background: Any = "white",
    n_points: int | None = 8192,
    seed: int = 0,
    val_split: float = 0.2,
    test_split: float = 0.0,
    categories: Mapping[str, str] | None = None,
    max_objects: int | None = None,
    points_in_memory: bool = True,
    check_images: bool = True,
    skip_bad: bool = False,
    fingerprint: str = "stat",
) -> ReaderCollection:
    """Read ULIP-2 Objaverse triplets. ``categories``: optional ``{uid: category}`` (else every object is "object");
    split per category like the paper. Objects = the uid folders of ``objaverse_pc_parallel`` (sorted)."""
    root = require_dir(root, "ULIP Objaverse triplets")
    image_size = check_image_size(image_size)
    n_points = check_n_points(n_points)
    if isinstance(n_views, bool) or not isinstance(n_views, int) or not 1 <= n_views <= 12:
        raise ConfigError(f"n_views: expected 1..12, got {n_views!r}")
    pc_dir = require_dir(root / "objaverse_pc_parallel", "Objaverse point-cloud")
    img_root = require_dir(root / "rendered_images_split_100", "Objaverse render")
    uids = sorted(e.name for e in os.scandir(pc_dir) if e.is_dir())
    if max_objects is not None:
        uids = uids[: int(max_objects)]
    if not uids:
        raise DataError(f"{pc_dir}: no object folders")
    cat_of = {u: (categories or {}).get(u, "object") for u in uids}
    cats = sorted(set(cat_of.values()))
    by_cat: dict[str, list[str]] = {}
    for u in uids:
        by_cat.setdefault(cat_of[u], []).append(u)
    splits = paper_split(by_cat, val_split, test_split)
    params = {"reader": "ulip_objaverse", "n_views": n_views, "image_size": image_size, "background": _bg(background),
              "n_points": n_points, "seed": int(seed), "val_split": float(val_split), "test_split": float(test_split),
              "categories": sorted(cat_of.items()) if categories else None, "max_objects": max_objects}
    return _build(
        name="ulip-objaverse", root=root, ids=uids, labels=[cats.index(cat_of[u]) for u in uids], categories=cats,
        category_keys=cats, splits=splits, cloud_paths=[pc_dir / u / f"{u}_8192.npz" for u in uids],
        view_paths=[[img_root / u / f"{k:03d}.png" for k in range(n_views)] for u in uids],
        view_angles=[(30.0 * k, 0.0) for k in range(n_views)], extra_files=[], params=params,
        n_points=n_points, image_size=image_size, background=background, seed=seed,
        points_in_memory=points_in_memory, check_images=check_images, problems=Problems(skip_bad),
        fingerprint=fingerprint, expected_views=n_views,
    )
