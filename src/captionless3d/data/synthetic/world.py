"""Build, cache and load the synthetic world (a ShapeCollection, see docs/architecture.md).

``root/world-<hash>/`` holds ``points.npy`` (N,P,3) float32, ``views.npy`` (N,V,H,W,3) uint8, ``photos.npy``
(N,K,H,W,3) uint8, ``masks.npy`` (N,K,H,W) bool, ``labels.npy``/``subtype_ids.npy`` int64, ``splits.npy`` (str),
``meta.json`` (categories, sub-types, view angles, landmarks, build parameters), ``objects.json`` (ids, attributes,
captions) and ``manifest.json`` (written last; kind ``synthetic_world``). The hash covers every parameter and the
format version, so a different request never reuses a stale world.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.data.collection import SPLITS, SplitIndexMixin
from captionless3d.data.synthetic.scene import make_object, render_objects, view_angles
from captionless3d.data.synthetic.shapes import ALL_CATEGORIES, CATEGORIES, DEFAULT_CATEGORIES
from captionless3d.data.synthetic.texts import make_landmarks
from captionless3d.errors import CacheError, ConfigError
from captionless3d.utils.atomic import atomic_save_npy, atomic_write_json
from captionless3d.utils.cache import load_or_build
from captionless3d.utils.manifest import MANIFEST_NAME, load_manifest, stable_hash, write_manifest

FORMAT_VERSION = 1
KIND = "synthetic_world"
MIN_IMAGE_SIZE = 16
ARRAY_FILES = ("points.npy", "views.npy", "photos.npy", "masks.npy", "labels.npy", "subtype_ids.npy", "splits.npy")
JSON_FILES = ("meta.json", "objects.json")
CHUNK = 16  # objects rendered per rasterisation pass

BUILD_COUNT = 0  # number of worlds actually built by this process (tests check cache reuse with it)


# --------------------------------------------------------------------------------------------- arguments


def _resolve_categories(categories: Any) -> list[str]:
    if categories is None or (isinstance(categories, str) and categories == "default"):
        return list(DEFAULT_CATEGORIES)
    if isinstance(categories, str):
        categories = list(ALL_CATEGORIES) if categories == "all" else [categories]
    try:
        names = [str(c) for c in categories]
    except TypeError as exc:
        raise ConfigError(f"categories: expected a list of names, 'all' or None, got {categories!r}") from exc
    if not names:
        raise ConfigError("categories: the list is empty")
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        raise ConfigError(f"categories: unknown category {unknown[0]!r}; known: {', '.join(ALL_CATEGORIES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"categories: duplicate names in {names}")
    return names


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name}: must be >= {minimum}, got {value}")
    return int(value)


#: Approximate ShapeNetCore v2 model counts per category (categories ShapeNet does not have: 200). With
#: ``train_frequencies="shapenet"`` the student-train split follows these relative frequencies, so that a few
#: categories dominate (tables, chairs, airplanes, cars, sofas) and batches hold many same-category negatives, as
#: the paper's ShapeNet batches do.
SHAPENET_COUNTS: dict[str, int] = {
    "table": 8436, "chair": 6778, "airplane": 4045, "car": 3514, "sofa": 3173, "lamp": 2318, "bench": 1813,
    "cabinet": 1571, "monitor": 1093, "bathtub": 856, "guitar": 797, "vase": 596, "bottle": 498, "bookshelf": 452,
    "piano": 239, "bed": 233, "mug": 214, "bowl": 186, "tower": 133, "rocket": 85,
}
TRAIN_FREQUENCIES = ("uniform", "shapenet")


def train_counts(params: dict[str, Any]) -> dict[str, int]:
    """Student-train objects per category: ``n_train`` each, or with ``train_frequencies="shapenet"`` the same total
    split in proportion to :data:`SHAPENET_COUNTS` (at least 2 per category: a validation-selected run needs some)."""
    cats = params["categories"]
    if params.get("train_frequencies", "uniform") == "uniform":
        return {c: params["n_train"] for c in cats}
    weights = np.asarray([SHAPENET_COUNTS.get(c, 200) for c in cats], dtype=np.float64)
    total = params["n_train"] * len(cats)
    return {c: max(2, int(round(total * w / weights.sum()))) for c, w in zip(cats, weights)}


def world_params(*, seed: int = 0, categories: Sequence[str] | str | None = None, n_teacher: int = 60,
                 n_train: int = 80,
                 n_val: int = 10, n_test: int = 20, n_points: int = 2048, n_views: int = 8, image_size: int = 64,
                 photos_per_object: int = 2, supersample: int = 1, colours: str = "object",
                 train_frequencies: str = "uniform") -> dict[str, Any]:
    """Validated, canonical build parameters (what the cache key is made of).

    ``colours`` (:data:`~captionless3d.data.synthetic.scene.COLOUR_MODES`): ``object`` (worlds v1/v2: every image
    shows the object's own colours) or ``per_image`` (world v3: each render and photo draws its colours afresh, so
    only geometry identifies an object; captions then name no colour).
    """
    params = {
        "seed": _check_int("seed", seed, 0),
        "categories": _resolve_categories(categories),
        "n_teacher": _check_int("n_teacher", n_teacher, 0),
        "n_train": _check_int("n_train", n_train, 0),
        "n_val": _check_int("n_val", n_val, 0),
        "n_test": _check_int("n_test", n_test, 0),
        "n_points": _check_int("n_points", n_points, 1),
        "n_views": _check_int("n_views", n_views, 1),
        "image_size": _check_int("image_size", image_size, MIN_IMAGE_SIZE),
        "photos_per_object": _check_int("photos_per_object", photos_per_object, 0),
        "supersample": _check_int("supersample", supersample, 1),
    }
    if colours not in ("object", "per_image"):
        raise ConfigError(f"colours: expected 'object' or 'per_image', got {colours!r}")
    if colours != "object":  # absent for the original mode, so worlds built before colour modes keep their hash
        params["colours"] = colours
    if train_frequencies not in TRAIN_FREQUENCIES:
        raise ConfigError(f"train_frequencies: expected one of {TRAIN_FREQUENCIES}, got {train_frequencies!r}")
    if train_frequencies != "uniform":  # absent by default, for the same reason
        params["train_frequencies"] = train_frequencies
    if params["n_teacher"] + params["n_train"] + params["n_val"] + params["n_test"] == 0:
        raise ConfigError("n_teacher/n_train/n_val/n_test: all counts are 0, the world would be empty")
    if params["image_size"] > 1024:
        raise ConfigError(f"image_size: {params['image_size']} is too large (max 1024)")
    if params["supersample"] > 4:
        raise ConfigError(f"supersample: {params['supersample']} is too large (max 4)")
    return params


def world_key(params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "format_version": FORMAT_VERSION, "generator": "captionless3d.synthetic"}


def world_dir(root: str | os.PathLike, params: dict[str, Any]) -> Path:
    return Path(root) / f"world-{stable_hash(world_key(params))}"


# --------------------------------------------------------------------------------------------- build


@contextlib.contextmanager
def _build_env() -> Iterator[None]:
    """Settings that make the many small tensor ops of the rasteriser fast, restored afterwards.

    * One torch thread: the ops are small, and on a loaded 2-core machine OpenMP barriers made every op ~20x slower
      (1.4 vs 40 ms per 64x64 image measured). Parallelism comes from ``workers`` processes instead.
    * glibc returns big freed blocks to the OS and page-faults them back on the next allocation; on small VMs that
      dominated the rasteriser (20-50x slower). Keep freed memory in the heap during the build.
    """
    from captionless3d.utils.threads import torch_threads

    with torch_threads(1):
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = libc.mallopt(-3, 1 << 30) and libc.mallopt(-1, (1 << 31) - 1)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
        except (OSError, AttributeError):
            libc, ok = None, False
        try:
            yield
        finally:
            if libc is not None and ok:
                libc.mallopt(-3, 128 * 1024)
                libc.mallopt(-1, 128 * 1024)
                libc.malloc_trim(0)


def _object_plan(params: dict[str, Any]) -> list[tuple[str, str, int]]:
    plan = []
    n_train = train_counts(params)
    for cat in params["categories"]:
        for split in SPLITS:
            count = n_train[cat] if split == "train" else params[f"n_{split}"]
            plan += [(cat, split, i) for i in range(count)]
    return plan


def _build_chunk(params: dict[str, Any], jobs: list[tuple[str, str, int]]):
    colours = params.get("colours", "object")
    objs = [make_object(params["seed"], c, s, i, params["n_points"], colours=colours) for c, s, i in jobs]
    views, photos, masks = render_objects(objs, params["n_views"], params["photos_per_object"], params["image_size"],
                                          params["supersample"])
    pts = np.stack([o.points for o in objs])
    recs = [{"object_id": o.object_id, "category": o.category, "subtype": CATEGORIES[o.category].subtypes[o.subtype],
             "subtype_index": o.subtype, "split": o.split, "attributes": o.attributes, "captions": o.captions}
            for o in objs]
    return pts, views, photos, masks, recs


def build_world(root: str | os.PathLike, *, seed: int = 0, categories: Sequence[str] | str | None = None,
                n_teacher: int = 60, n_train: int = 80, n_val: int = 10, n_test: int = 20, n_points: int = 2048,
                n_views: int = 8, image_size: int = 64, photos_per_object: int = 2, supersample: int = 1,
                colours: str = "object", train_frequencies: str = "uniform", workers: int = 0,
                progress: bool = True) -> Path:
    """Build the world under ``root`` (created if missing) unless a complete one with the same parameters exists.

    Counts are per category. ``workers`` > 0 renders in a "spawn" process pool (byte-identical results; not part of
    the cache key); the calling script then needs an ``if __name__ == "__main__":`` guard, as with any spawn pool.
    On a loaded 2-core machine ``workers=0`` was faster (36 s vs 58 s for the default world). Returns the world
    directory.
    """
    params = world_params(seed=seed, categories=categories, n_teacher=n_teacher, n_train=n_train, n_val=n_val,
                          n_test=n_test, n_points=n_points, n_views=n_views, image_size=image_size,
                          photos_per_object=photos_per_object, supersample=supersample, colours=colours,
                          train_frequencies=train_frequencies)
    workers = _check_int("workers", workers, 0)
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"root: cannot create directory {root}: {exc}") from exc
    out = world_dir(root, params)

    def complete() -> Path:
        load_manifest(out, kind=KIND, version=FORMAT_VERSION, key=world_key(params), verify_checksums=False)
        return out

    def build() -> Path:
        _build_into(out, params, workers, progress)
        return out

    return load_or_build(out, complete, build, what="synthetic world", lock=root / f".{out.name}.lock")


def _build_into(out: Path, params: dict[str, Any], workers: int, progress: bool) -> None:
    global BUILD_COUNT
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (out / MANIFEST_NAME).unlink()  # an incomplete/stale directory is rebuilt from scratch
    plan = _object_plan(params)
    n, s, v, k = len(plan), params["image_size"], params["n_views"], params["photos_per_object"]
    points = np.empty((n, params["n_points"], 3), np.float32)
    views = np.empty((n, v, s, s, 3), np.uint8)
    photos = np.empty((n, k, s, s, 3), np.uint8)
    masks = np.empty((n, k, s, s), bool)
    records: list[dict] = []
    chunks = [plan[i:i + CHUNK] for i in range(0, n, CHUNK)]
    bar = tqdm(total=n, desc=f"synthetic world {out.name}", unit="obj", disable=not progress)
    if workers > 0:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            results = pool.map(_build_chunk, [params] * len(chunks), chunks)
            _collect(results, points, views, photos, masks, records, bar)
    else:
        with _build_env():
            _collect((_build_chunk(params, c) for c in chunks), points, views, photos, masks, records, bar)
    bar.close()
    cats = params["categories"]
    labels = np.array([cats.index(r["category"]) for r in records], np.int64)
    subtype_names = [f"{c}/{st}" for c in cats for st in CATEGORIES[c].subtypes]
    subtype_ids = np.array([subtype_names.index(f"{r['category']}/{r['subtype']}") for r in records], np.int64)
    splits = np.array([r["split"] for r in records], dtype="<U7")
    for name, arr in (("points.npy", points), ("views.npy", views), ("photos.npy", photos), ("masks.npy", masks),
                      ("labels.npy", labels), ("subtype_ids.npy", subtype_ids), ("splits.npy", splits)):
        atomic_save_npy(out / name, arr)
    meta = {"params": params, "categories": cats, "subtypes": subtype_names,
            "view_angles": [list(a) for a in view_angles(v)],
            "landmarks": {c: make_landmarks(c) for c in cats},
            "camera": {"distance": 2.6, "focal": 2.2, "up": "+y", "front": "+z"}}
    atomic_write_json(out / "meta.json", meta)
    atomic_write_json(out / "objects.json", records)
    write_manifest(out, kind=KIND, version=FORMAT_VERSION, key=world_key(params), files=ARRAY_FILES + JSON_FILES,
                   extra={"n_objects": n, "build_seconds": round(time.perf_counter() - t0, 2)})
    BUILD_COUNT += 1


def _worker_init() -> None:
    from captionless3d.utils.threads import set_torch_threads

    set_torch_threads(1)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)
        libc.mallopt(-1, (1 << 31) - 1)


def _collect(results, points, views, photos, masks, records, bar) -> None:
    i = 0
    for pts, vw, ph, mk, recs in results:
        j = i + len(recs)
        points[i:j], views[i:j], photos[i:j], masks[i:j] = pts, vw, ph, mk
        records += recs
        bar.update(len(recs))
        i = j


# --------------------------------------------------------------------------------------------- load


class SyntheticWorld(SplitIndexMixin):
    """A loaded world; the ShapeCollection attributes of docs/architecture.md. Arrays are read-only memory maps."""

    def __init__(self, path: str | os.PathLike, *, verify: bool = True) -> None:
        path = Path(path)
        if not path.is_dir():
            raise CacheError(f"{path}: synthetic world directory does not exist")
        manifest = load_manifest(path, kind=KIND, version=FORMAT_VERSION, verify_checksums=verify)
        missing = [f for f in ARRAY_FILES + JSON_FILES if f not in manifest.get("files", {})]
        if missing:
            raise CacheError(f"{path / MANIFEST_NAME}: manifest does not list {missing[0]}")
        self.path = path
        self.fingerprint: str = stable_hash({"key": manifest.get("key"), "files": manifest["files"]})
        self.name: str = f"synthetic:{path.name}"
        meta = _read_json(path / "meta.json")
        objects = _read_json(path / "objects.json")
        self.params: dict = meta["params"]
        self.categories: list[str] = list(meta["categories"])
        self.subtypes: list[str] = list(meta["subtypes"])
        self.view_angles: list[tuple[float, float]] = [tuple(a) for a in meta["view_angles"]]
        self.landmarks: dict[str, list[str]] = {k: list(v) for k, v in meta["landmarks"].items()}
        self.object_ids: list[str] = [o["object_id"] for o in objects]
        self.captions: list[list[str]] = [list(o["captions"]) for o in objects]
        self.attributes: list[dict] = [{**o["attributes"], "subtype": o["subtype"]} for o in objects]
        self.points = _load_npy(path / "points.npy")
        self.views = _load_npy(path / "views.npy")
        self.photos = _load_npy(path / "photos.npy")
        self.masks = _load_npy(path / "masks.npy")
        self.labels = np.asarray(_load_npy(path / "labels.npy"))
        self.subtype_ids = np.asarray(_load_npy(path / "subtype_ids.npy"))
        self.splits = np.asarray(_load_npy(path / "splits.npy"))
        n = len(self.object_ids)
        for name in ("points", "views", "photos", "masks", "labels", "subtype_ids", "splits"):
            if len(getattr(self, name)) != n:
                raise CacheError(f"{path / (name + '.npy')}: has {len(getattr(self, name))} rows, objects.json has {n}")

    def split_fingerprint(self, split: str) -> str:
        """Identifies the content of one split only. An object is a function of ``(seed, category, split, index)``
        and the rendering parameters, so two worlds that differ only in the sizes of *other* splits share it: a
        teacher trained on the teacher split is then reused by a world with more student-train objects."""
        if split not in SPLITS:
            raise ConfigError(f"split: expected one of {SPLITS}, got {split!r}")
        other = ("train_frequencies",) if split != "train" else ()
        own = {k: v for k, v in self.params.items() if not (k.startswith("n_") and k[2:] in SPLITS) and k not in other}
        count = train_counts(self.params) if split == "train" else self.params[f"n_{split}"]
        return stable_hash({**world_key(own), "split": split, "count": count})

    def __repr__(self) -> str:
        return f"SyntheticWorld({self.path}, objects={len(self)}, categories={len(self.categories)})"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"{path}: unreadable ({exc})") from exc


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CacheError(f"{path}: corrupt or truncated array ({exc})") from exc


def rerender_views(world: SyntheticWorld, index: Sequence[int], colours: str = "grey", *,
                   progress: bool = False) -> np.ndarray:
    """The white-background renders of the objects ``index`` again, with ``colours`` (e.g. ``"grey"``: same
    geometry, cameras and light, every face one grey) instead of the world's own colours.

    Objects are regenerated from ``(seed, category, split, index)`` exactly as the build made them, so with the
    world's own colour mode this reproduces ``world.views[index]`` (tested). Returns uint8 ``(M, V, H, W, 3)``.
    """
    from tqdm.auto import tqdm

    from captionless3d.data.synthetic.render import render_scenes, to_uint8
    from captionless3d.data.synthetic.scene import view_items

    p = world.params
    index = [int(i) for i in index]
    out = np.empty((len(index), p["n_views"], p["image_size"], p["image_size"], 3), np.uint8)
    with _build_env():
        for start in tqdm(range(0, len(index), CHUNK), desc=f"re-render ({colours})", disable=not progress):
            objs = []
            for i in index[start:start + CHUNK]:
                category, split, number = world.object_ids[i].rsplit("/", 2)
                objs.append(make_object(p["seed"], category, split, int(number), p["n_points"],
                                        colours=p.get("colours", "object")))
            items = [item for o in objs for item in view_items(o, p["n_views"], colours)]
            images, _ = render_scenes(items, p["image_size"], p["image_size"], p["supersample"])
            out[start:start + len(objs)] = to_uint8(images).reshape(len(objs), *out.shape[1:])
    return out


def load_world(path: str | os.PathLike, *, verify: bool = True) -> SyntheticWorld:
    """Load a built world, verifying its manifest (and, with ``verify``, every file's checksum)."""
    return SyntheticWorld(path, verify=verify)


def ensure_world(root: str | os.PathLike, *, seed: int = 0, categories: Sequence[str] | str | None = None,
                 n_teacher: int = 60, n_train: int = 80, n_val: int = 10, n_test: int = 20, n_points: int = 2048,
                 n_views: int = 8, image_size: int = 64, photos_per_object: int = 2, supersample: int = 1,
                 colours: str = "object", train_frequencies: str = "uniform", workers: int = 0,
                 progress: bool = True, verify: bool = True) -> SyntheticWorld:
    """Build the world if needed, then load it."""
    path = build_world(root, seed=seed, categories=categories, n_teacher=n_teacher, n_train=n_train, n_val=n_val,
                       n_test=n_test, n_points=n_points, n_views=n_views, image_size=image_size,
                       photos_per_object=photos_per_object, supersample=supersample, colours=colours,
                       train_frequencies=train_frequencies, workers=workers, progress=progress)
    return load_world(path, verify=verify)
