"""FeatureStore: every teacher embedding the later stages need, computed once and cached on disk with a manifest.

Directory layout (all arrays fp16, rows L2-normalised before the cast)::

    view_emb.npy          (N, V, D)  renders (plain white background, as the collection provides them)
    photo_emb.npy         (N, K, D)  "photos" as they are (with background)
    photo_masked_emb.npy  (N, K, D)  photo * mask on black: the paper's "w/o background" (Pix3D style)
    prompt_emb.npy        (C, D)     prompt_template.format(category) for each category, in label order
    landmark_emb.npy      (L, D)     every landmark sentence, categories in label order
    landmark_labels.npy   (L,)       int64 category index of each landmark
    manifest.json         written last; key = teacher id, collection fingerprint, prompt template, landmarks hash,
                          preprocessing id, background policy. Per-file SHA-256 catches corrupt files.

A collection without photos gets ``(N, 0, D)`` photo arrays. ``load_feature_store`` refuses (``CacheError``) a store
made by another teacher or from other data, naming both values, and a corrupt/missing array, naming the file.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from captionless3d.errors import CacheError, DataError
from captionless3d.teacher.base import torch_threads
from captionless3d.utils.atomic import atomic_save_npy, atomic_write_with
from captionless3d.utils.manifest import load_manifest, stable_hash, write_manifest

log = logging.getLogger(__name__)

MANIFEST_KIND = "feature_store"
MANIFEST_VERSION = 1
DEFAULT_PROMPT_TEMPLATE = "a point cloud model of a {}"
BACKGROUND_POLICY = "renders composited on white; photo_masked = photo * mask on black"
ARRAY_NAMES = ("view_emb", "photo_emb", "photo_masked_emb", "prompt_emb", "landmark_emb", "landmark_labels")


@dataclass
class FeatureStore:
    """Loaded feature store. Arrays are fp16 (``landmark_labels`` int64), memory-mapped read-only."""

    directory: Path
    manifest: dict[str, Any]
    view_emb: np.ndarray
    photo_emb: np.ndarray
    photo_masked_emb: np.ndarray
    prompt_emb: np.ndarray
    landmark_emb: np.ndarray
    landmark_labels: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> dict[str, Any]:
        return dict(self.manifest.get("key", {}))

    @property
    def teacher_id(self) -> str:
        return str(self.key.get("teacher_id"))

    @property
    def dim(self) -> int:
        return int(self.view_emb.shape[-1])

    def mean_view_emb(self, indices: np.ndarray | None = None) -> np.ndarray:
        """float32 ``(n, D)``: the L2-normalised mean of each object's normalised view embeddings (I2I's ē)."""
        views = self.view_emb if indices is None else self.view_emb[np.asarray(indices)]
        mean = np.asarray(views, dtype=np.float32).mean(axis=1)
        return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

    def landmarks_of(self, category: int) -> np.ndarray:
        """float32 ``(L_c, D)`` landmark embeddings of one category."""
        return np.asarray(self.landmark_emb[self.landmark_labels == category], dtype=np.float32)


def landmarks_hash(landmarks: Mapping[str, Sequence[str]] | None) -> str:
    return stable_hash({str(k): [str(s) for s in v] for k, v in (landmarks or {}).items()})


def feature_store_key(
    collection: Any,
    teacher: Any,
    *,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    landmarks: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The manifest key that identifies a feature store (what ``load_feature_store`` checks).

    ``landmarks=None`` means the collection's own ``landmarks``, as in :func:`build_feature_store`.
    """
    landmarks = _resolve_landmarks(collection, landmarks)
    return {
        "teacher_id": str(teacher.id),
        "collection_fingerprint": str(collection.fingerprint),
        "prompt_template": str(prompt_template),
        "landmarks_hash": landmarks_hash(landmarks),
        "preprocessing": str(getattr(teacher, "preprocess_id", "unknown")),
        "background_policy": BACKGROUND_POLICY,
    }


def _resolve_landmarks(collection: Any, landmarks: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    if landmarks is None:
        landmarks = getattr(collection, "landmarks", None) or {}
    categories = list(collection.categories)
    unknown = [k for k in landmarks if k not in categories]
    if unknown:
        raise DataError(f"landmarks: categories {unknown[:5]} are not in collection {collection.name!r}")
    return {k: [str(s) for s in landmarks[k]] for k in categories if k in landmarks}


def _encode_grid_to_npy(
    path: Path,
    images: Any,
    teacher: Any,
    *,
    batch_size: int,
    progress: bool,
    desc: str,
    transform: Callable[[np.ndarray, slice], np.ndarray] | None = None,
) -> int:
    """Encode ``images`` (N, V, H, W, 3) object-chunk by object-chunk into a fp16 ``.npy`` ``(N, V, D)``, atomically.

    The array is streamed into a memory-mapped temp file (bounded memory even for large collections) and renamed.
    Returns the number of images encoded.
    """
    n, v = int(images.shape[0]), int(images.shape[1])
    dim = int(teacher.dim)
    per_chunk = max(1, (batch_size * 4) // max(v, 1))

    def writer(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, v, dim))
        starts = range(0, n, per_chunk)
        if progress and v > 0:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc, unit="chunk", leave=False)
        for start in starts:
            sl = slice(start, min(start + per_chunk, n))
            block = np.asarray(images[sl])
            if transform is not None:
                block = transform(block, sl)
            if v == 0:
                continue
            flat = np.ascontiguousarray(block.reshape(-1, *block.shape[2:]))
            emb = teacher.encode_images(flat, batch_size=batch_size, progress=False)
            out[sl] = emb.numpy().reshape(sl.stop - sl.start, v, dim).astype(np.float16)
        out.flush()
        del out

    atomic_write_with(path, writer)
    return n * v


def build_feature_store(
    collection: Any,
    teacher: Any,
    out_dir: str | os.PathLike,
    *,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    landmarks: Mapping[str, Sequence[str]] | None = None,
    batch_size: int = 256,
    progress: bool = True,
    num_threads: int | None = None,
) -> FeatureStore:
    """Embed a collection's views, photos (raw and masked), class prompts and landmarks with ``teacher``.

    ``landmarks=None`` uses ``collection.landmarks`` (pass ``{}`` for none). Prints the image throughput.
    ``num_threads``: torch threads while encoding (``None``: the cores not busy now).
    """
    with torch_threads(num_threads):
        return _build(collection, teacher, Path(out_dir), prompt_template, landmarks, batch_size, progress)


def _build(collection, teacher, out_dir, prompt_template, landmarks, batch_size, progress) -> FeatureStore:
    if "{}" not in prompt_template:
        raise DataError(f"prompt_template: {prompt_template!r} has no '{{}}' placeholder for the category name")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lm = _resolve_landmarks(collection, landmarks)
    key = feature_store_key(collection, teacher, prompt_template=prompt_template, landmarks=lm)
    # the manifest goes last: drop a stale one first so a crash mid-build never leaves an old manifest over new data
    (out_dir / "manifest.json").unlink(missing_ok=True)

    views = collection.views
    if views.ndim != 5 or views.shape[-1] != 3:
        raise DataError(f"{collection.name}: views must be (N, V, H, W, 3) uint8, got {tuple(views.shape)}")
    n = int(views.shape[0])
    photos = getattr(collection, "photos", None)
    masks = getattr(collection, "masks", None)
    t0 = time.perf_counter()
    n_images = _encode_grid_to_npy(
        out_dir / "view_emb.npy", views, teacher, batch_size=batch_size, progress=progress, desc="embed views"
    )
    if photos is not None and len(photos):
        if int(photos.shape[0]) != n:
            raise DataError(f"{collection.name}: {photos.shape[0]} photo rows for {n} objects")
        if masks is None or tuple(masks.shape) != tuple(photos.shape[:4]):
            raise DataError(f"{collection.name}: masks {None if masks is None else tuple(masks.shape)} do not match photos {tuple(photos.shape)}")
        n_images += _encode_grid_to_npy(
            out_dir / "photo_emb.npy", photos, teacher, batch_size=batch_size, progress=progress, desc="embed photos"
        )

        def masked(block: np.ndarray, sl: slice) -> np.ndarray:
            return block * np.asarray(masks[sl], dtype=bool)[..., None].astype(np.uint8)

        n_images += _encode_grid_to_npy(
            out_dir / "photo_masked_emb.npy", photos, teacher, batch_size=batch_size, progress=progress,
            desc="embed masked photos", transform=masked,
        )
    else:
        empty = np.zeros((n, 0, int(teacher.dim)), dtype=np.float16)
        atomic_save_npy(out_dir / "photo_emb.npy", empty)
        atomic_save_npy(out_dir / "photo_masked_emb.npy", empty)
    image_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    prompts = [prompt_template.format(c) for c in collection.categories]
    prompt_emb = teacher.encode_texts(prompts, batch_size=batch_size, progress=False).numpy()
    lm_texts = [s for k in lm for s in lm[k]]
    lm_labels = np.array([collection.categories.index(k) for k in lm for _ in lm[k]], dtype=np.int64)
    lm_emb = (
        teacher.encode_texts(lm_texts, batch_size=batch_size, progress=progress and len(lm_texts) > 2048).numpy()
        if lm_texts
        else np.zeros((0, int(teacher.dim)), dtype=np.float32)
    )
    atomic_save_npy(out_dir / "prompt_emb.npy", prompt_emb.astype(np.float16))
    atomic_save_npy(out_dir / "landmark_emb.npy", lm_emb.astype(np.float16))
    atomic_save_npy(out_dir / "landmark_labels.npy", lm_labels)
    text_s = time.perf_counter() - t1

    ips = n_images / max(image_s, 1e-9)
    stats = {
        "num_objects": n,
        "num_images": n_images,
        "image_seconds": round(image_s, 2),
        "images_per_s": round(ips, 1),
        "num_texts": len(prompts) + len(lm_texts),
        "text_seconds": round(text_s, 2),
        "dim": int(teacher.dim),
        "categories": list(collection.categories),
        "collection_name": str(getattr(collection, "name", "")),
    }
    message = (
        f"feature store {out_dir}: {n_images} images in {image_s:.1f} s ({ips:.1f} images/s), "
        f"{stats['num_texts']} texts in {text_s:.1f} s, teacher {teacher.id}"
    )
    log.info(message)
    if progress:
        print(message, flush=True)
    write_manifest(
        out_dir, kind=MANIFEST_KIND, version=MANIFEST_VERSION, key=key, files=[f"{a}.npy" for a in ARRAY_NAMES],
        extra=stats,
    )
    return load_feature_store(out_dir, key, verify_checksums=False)


def load_feature_store(
    directory: str | os.PathLike, expected_key: Mapping[str, Any] | None = None, *, verify_checksums: bool = True
) -> FeatureStore:
    """Open a feature store, verifying its manifest against ``expected_key`` (any subset of the key fields).

    Raises ``CacheError`` when the manifest is missing, a key field differs (naming both values), an array is
    missing or corrupt (naming the file), or the arrays' shapes are inconsistent.
    """
    directory = Path(directory)
    manifest = load_manifest(
        directory, kind=MANIFEST_KIND, version=MANIFEST_VERSION, key=expected_key, verify_checksums=verify_checksums
    )
    arrays = {}
    for name in ARRAY_NAMES:
        path = directory / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise CacheError(f"{path}: unreadable feature array ({type(exc).__name__}: {exc})") from exc
    n, _, d = arrays["view_emb"].shape
    checks = [
        ("photo_emb", arrays["photo_emb"].ndim == 3 and arrays["photo_emb"].shape[0] == n and arrays["photo_emb"].shape[2] == d),
        ("photo_masked_emb", arrays["photo_masked_emb"].shape == arrays["photo_emb"].shape),
        ("prompt_emb", arrays["prompt_emb"].ndim == 2 and arrays["prompt_emb"].shape[1] == d),
        ("landmark_emb", arrays["landmark_emb"].ndim == 2 and arrays["landmark_emb"].shape[1] == d),
        ("landmark_labels", arrays["landmark_labels"].shape == (arrays["landmark_emb"].shape[0],)),
    ]
    for name, ok in checks:
        if not ok:
            raise CacheError(f"{directory / (name + '.npy')}: shape {arrays[name].shape} is inconsistent with view_emb {arrays['view_emb'].shape}")
    return FeatureStore(directory=directory, manifest=manifest, stats=dict(manifest.get("extra", {})), **arrays)


def ensure_feature_store(
    collection: Any,
    teacher: Any,
    out_dir: str | os.PathLike,
    *,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    landmarks: Mapping[str, Sequence[str]] | None = None,
    batch_size: int = 256,
    progress: bool = True,
    rebuild_stale: bool = True,
    num_threads: int | None = None,
) -> FeatureStore:
    """Reuse the store in ``out_dir`` if its manifest matches this (collection, teacher, prompts, landmarks), else
    build it. A file lock (``out_dir.lock``) makes concurrent callers build once. With ``rebuild_stale=False`` a
    mismatching store raises ``CacheError`` instead of being rebuilt."""
    from filelock import FileLock

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lm = _resolve_landmarks(collection, landmarks)
    key = feature_store_key(collection, teacher, prompt_template=prompt_template, landmarks=lm)
    with FileLock(str(out_dir) + ".lock"):
        if (out_dir / "manifest.json").is_file():
            try:
                return load_feature_store(out_dir, key)
            except CacheError as exc:
                if not rebuild_stale:
                    raise
                log.warning("feature store %s is stale or corrupt (%s); rebuilding", out_dir, exc)
        return build_feature_store(
            collection, teacher, out_dir, prompt_template=prompt_template, landmarks=lm, batch_size=batch_size,
            progress=progress, num_threads=num_threads,
        )
