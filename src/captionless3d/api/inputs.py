"""Reading and preprocessing the inputs of the Python API: shape files, point arrays and images.

Shapes (``.ply``, ``.obj``, ``.off``, ``.stl`` through trimesh; ``.npy`` / ``.npz`` through numpy without pickles):
meshes are surface-sampled (area-weighted, seeded), point clouds are read as they are. Clouds are then brought to the
encoder's point count with evaluation's own functions (:func:`captionless3d.evaluation.embedding.embed_points` uses
the same two): a seeded random subset of ``n_points`` without replacement
(:func:`captionless3d.data.pointcloud.subset_indices`), then centred on the centroid and scaled so that the farthest
point has norm 1 (:func:`captionless3d.data.pointcloud.normalise_unit_sphere`, the training normalisation). A cloud
with fewer than ``n_points`` points keeps all of them and is padded with seeded random repeats, so every set
abstraction stage sees the point counts of training.

Every problem raises :class:`~captionless3d.errors.DataError` naming the file (or ``points[i]`` for arrays) and what
is wrong with it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captionless3d.data.pointcloud import normalise_unit_sphere, subset_indices
from captionless3d.errors import DataError

#: File types read as shapes (meshes are sampled, point clouds read as is).
MESH_SUFFIXES = (".ply", ".obj", ".off", ".stl")
ARRAY_SUFFIXES = (".npy", ".npz")
POINT_SUFFIXES = MESH_SUFFIXES + ARRAY_SUFFIXES
#: File types read as images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: ``.npz`` keys tried, in order, for the point array (else the archive's only array).
NPZ_KEYS = ("points", "xyz", "pos", "pc", "point_cloud", "data")

PathLike = str | os.PathLike
PointsInput = np.ndarray | torch.Tensor | PathLike | Sequence[Any]


# --------------------------------------------------------------------------------------------------- shape files
def _as_xyz(raw: Any, source: str) -> np.ndarray:
    """A numeric ``(P, >=3)`` or ``(B, P, >=3)`` array -> float32 xyz ``(B, P, 3)``."""
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu().numpy()
    if not isinstance(raw, np.ndarray) or raw.dtype.kind not in "fiu":
        kind = f"array of dtype {raw.dtype}" if isinstance(raw, np.ndarray) else type(raw).__name__
        raise DataError(f"{source}: expected a numeric point array of shape (P, 3) or (B, P, 3), got {kind}")
    if raw.ndim == 2:
        raw = raw[None]
    if raw.ndim != 3 or raw.shape[-1] < 3:
        raise DataError(f"{source}: expected a point array of shape (P, 3) or (B, P, 3), got shape {raw.shape}")
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise DataError(f"{source}: empty point array, shape {raw.shape}")
    return np.ascontiguousarray(raw[..., :3], dtype=np.float32)


def _read_array_file(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            key = next((k for k in NPZ_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DataError(f"{path}: .npz archive has arrays {keys}; name the points one of {list(NPZ_KEYS)}")
            return archive[key]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError) as exc:  # truncated file, pickled object array, not numpy
        raise DataError(f"{path}: not a readable {path.suffix} point array ({type(exc).__name__}: {exc})") from exc


def _geometry(loaded: Any, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """trimesh object -> ``(vertices (V, 3), faces (F, 3) | None)``; scenes are flattened with their transforms."""
    import trimesh

    if isinstance(loaded, trimesh.Scene):
        geoms = [g for g in loaded.dump() if hasattr(g, "vertices") and len(g.vertices)]
        meshes = [g for g in geoms if isinstance(g, trimesh.Trimesh) and len(g.faces)]
        if meshes:
            loaded = trimesh.util.concatenate(meshes) if len(meshes) > 1 else meshes[0]
        elif geoms:
            return np.concatenate([np.asarray(g.vertices) for g in geoms]), None
        else:
            raise DataError(f"{path}: no mesh or point geometry in the file (empty or unreadable)")
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float64)
    faces = getattr(loaded, "faces", None)
    faces = np.asarray(faces) if faces is not None and len(faces) else None
    return vertices, faces


def read_shape_file(path: PathLike, *, n_samples: int, seed: int = 0) -> np.ndarray:
    """One shape file -> float32 points ``(B, P, 3)`` in file units (``B > 1`` only for batched ``.npy``/``.npz``).

    Meshes (files with faces) are surface-sampled to ``n_samples`` points (area-weighted, seeded with ``seed``);
    point clouds (PLY/OBJ without faces, arrays) keep all their points.

    Raises:
        DataError: missing file, unknown suffix, unreadable file, no geometry, zero-area mesh, NaN/Inf coordinates.
    """
    import trimesh

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in POINT_SUFFIXES:
        raise DataError(f"{path}: unsupported shape file type {suffix!r}; supported: {', '.join(POINT_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: shape file does not exist")
    if suffix in ARRAY_SUFFIXES:
        points = _as_xyz(_read_array_file(path), str(path))
    else:
        try:
            loaded = trimesh.load(path, process=False, skip_materials=True)
        except Exception as exc:  # noqa: BLE001 - trimesh raises many types for malformed files
            raise DataError(f"{path}: unreadable mesh or point cloud ({type(exc).__name__}: {exc})") from exc
        vertices, faces = _geometry(loaded, path)
        if len(vertices) == 0:
            raise DataError(f"{path}: no vertices in the file (empty or unreadable)")
        if not np.isfinite(vertices).all():
            raise DataError(f"{path}: NaN/Inf vertex coordinates")
        if faces is None:
            points = vertices.astype(np.float32)[None]
        else:
            mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
            if not float(mesh.area) > 0:
                raise DataError(f"{path}: mesh has zero surface area; cannot sample points")
            sampled, _ = trimesh.sample.sample_surface(mesh, int(n_samples), seed=seed)
            points = np.asarray(sampled, dtype=np.float32)[None]
    check_finite(points, [str(path)] * len(points))
    return points


def check_finite(points: np.ndarray, sources: Sequence[str]) -> None:
    """``points (B, P, 3)``: raise DataError naming the first source with NaN/Inf or all-identical points."""
    finite = np.isfinite(points).all(axis=2)  # (B, P)
    bad = np.flatnonzero(~finite.all(axis=1))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{sources[i]}: {int((~finite[i]).sum())} points have NaN/Inf coordinates")
    spread = np.ptp(points, axis=1).max(axis=1)  # (B,)
    flat = np.flatnonzero(~(spread > 0))
    if flat.size:
        raise DataError(f"{sources[int(flat[0])]}: degenerate point cloud (all points identical)")


# --------------------------------------------------------------------------------------------------- preprocessing
def fit_points(points: np.ndarray, n_points: int, seed: int = 0) -> np.ndarray:
    """``(B, P, 3)`` -> ``(B, n_points, 3)`` float32 with evaluation's subsampling
    (:func:`captionless3d.data.pointcloud.subset_indices`), drawn once from a generator seeded with ``seed`` and
    applied to every cloud of the batch: a cloud's subset depends only on (P, n_points, seed), never on the clouds
    batched with it. A cloud with fewer points keeps all of them plus seeded random repeats."""
    generator = torch.Generator().manual_seed(int(seed))
    idx = subset_indices(points.shape[1], n_points, generator, pad=True)[0].numpy()
    return np.ascontiguousarray(points[:, idx], dtype=np.float32)


def normalise_points(points: np.ndarray) -> torch.Tensor:
    """``(B, N, 3)`` -> float32 tensor centred and scaled into the unit sphere (training normalisation)."""
    return normalise_unit_sphere(torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)))


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def gather_points(inputs: PointsInput, *, n_points: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Any accepted point input -> ``(B, n_points, 3)`` float32 (not yet normalised) and one source name per cloud.

    Accepts an array/tensor ``(P, 3)`` or ``(B, P, 3)``, a shape file path, or a list mixing them (clouds of different
    sizes are fitted one by one, then stacked).
    """
    items: list[Any] = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not items:
        raise DataError("encode_points: no point clouds given (empty list)")
    clouds: list[np.ndarray] = []
    sources: list[str] = []
    for i, item in enumerate(items):
        if _is_path(item):
            batch = read_shape_file(item, n_samples=n_points, seed=seed)
            names = [str(item)] if len(batch) == 1 else [f"{item}[{j}]" for j in range(len(batch))]
        else:
            prefix = "points" if len(items) == 1 else f"points[{i}]"
            batch = _as_xyz(item, prefix)
            names = [prefix] if len(batch) == 1 else [f"{prefix}[{j}]" for j in range(len(batch))]
            check_finite(batch, names)
        clouds.append(fit_points(batch, n_points, seed))
        sources.extend(names)
    return np.concatenate(clouds) if len(clouds) > 1 else clouds[0], sources


# --------------------------------------------------------------------------------------------------- images
def _pil_to_uint8(img: Any, size: int, source: str) -> np.ndarray:
    from PIL import Image

    from captionless3d.data.readers.base import resize_crop

    try:
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:  # composite on white, as renders are
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(canvas, rgba)
        return np.asarray(resize_crop(img.convert("RGB"), size, Image.BICUBIC), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"{source}: cannot decode image ({exc})") from exc


def gather_images(images: Any, *, size: int) -> np.ndarray:
    """Image inputs -> uint8 ``(B, H, W, 3)``.

    Accepts a uint8 array ``(H, W, 3)`` / ``(B, H, W, 3)``, a PIL image, an image file path, or a list of them. Files
    and PIL images are composited on white (transparency), shorter side resized to ``size`` (bicubic) and
    centre-cropped (:func:`captionless3d.data.readers.base.load_rgb`); arrays of one common size are passed as they
    are (the teacher resizes them); arrays of different sizes are resized like images.
    """
    from PIL import Image

    from captionless3d.data.readers.base import load_rgb

    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items: list[Any] = list(images)
    else:
        items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise DataError("encode_images: no images given (empty list)")
    arrays: list[np.ndarray] = []
    for i, item in enumerate(items):
        name = "image" if len(items) == 1 else f"images[{i}]"
        if _is_path(item):
            path = Path(item)
            arrays.append(load_rgb(path, size))  # DataError "<path>: not a readable image (...)"
        elif isinstance(item, Image.Image):
            arrays.append(_pil_to_uint8(item, size, name))
        elif isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim != 3 or item.shape[-1] != 3:
                raise DataError(f"{name}: expected a uint8 RGB array (H, W, 3), got {item.dtype} {item.shape}")
            arrays.append(item)
        else:
            raise DataError(f"{name}: expected a uint8 array, a PIL image or an image path, got {type(item).__name__}")
    if len({a.shape for a in arrays}) > 1:
        arrays = [a if a.shape[:2] == (size, size) else _pil_to_uint8(Image.fromarray(a), size, f"images[{i}]")
                  for i, a in enumerate(arrays)]
    return np.stack(arrays)


def kind_of_path(path: PathLike) -> str:
    """``"points"`` or ``"image"`` by file suffix; DataError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix in POINT_SUFFIXES:
        return "points"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    raise DataError(
        f"{path}: cannot tell whether this is a shape or an image from its suffix {suffix!r} "
        f"(shapes: {', '.join(POINT_SUFFIXES)}; images: {', '.join(IMAGE_SUFFIXES)})"
    )


__all__ = [
    "POINT_SUFFIXES",
    "IMAGE_SUFFIXES",
    "read_shape_file",
    "check_finite",
    "fit_points",
    "normalise_points",
    "gather_points",
    "gather_images",
    "kind_of_path",
]
