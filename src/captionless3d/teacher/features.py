"""FeatureStore: every teacher embedding the later stages need, computed once and cached on disk with a manifest.

Format v2 (layout, manifest fields, background policy and resume rules: :mod:`captionless3d.teacher.store_format`)::

    manifest.json                       written last; key = teacher id, collection fingerprint, prompt template,
                                        landmarks hash, preprocessing id, background policy; SHA-256 of every file
    view_emb/shard-XXXXX.npy            (S, V, D) fp16  renders (composited on white, as the collection provides them)
    photo_emb/shard-XXXXX.npy           (S, K, D) fp16  "photos" as they are (with background)
    photo_masked_emb/shard-XXXXX.npy    (S, K, D) fp16  photo * mask on black: the paper's "w/o background"
    prompt_emb.npy                      (C, D)    fp16  prompt_template.format(category), in label order
    landmark_emb.npy                    (L, D)    fp16  every landmark sentence, categories in label order
    landmark_labels.npy                 (L,)      int64 category index of each landmark

Rows are L2-normalised before the fp16 cast. ``S`` = ``shard_size`` objects per shard (default 4096; the last shard
may be shorter). A collection without photos gets ``K = 0``. :func:`load_feature_store` presents each per-object
array as a read-only :class:`~captionless3d.teacher.sharded.ShardedArray` ``(N, ., D)`` (memory-mapped shards,
vectorised gathers), so consumers index it like the v1 memmaps.

Builds are resumable: :func:`build_feature_store` skips the shards an interrupted run finished (journal in
``progress/``, verified by checksum) and never rewrites them. A v1 store (single ``.npy`` per array) is reported
stale (``CacheError`` naming format version 1) and rebuilt by :func:`ensure_feature_store`. The command line
``python -m captionless3d.features`` and multi-GPU extraction: :mod:`captionless3d.teacher.distributed`.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.errors import CacheError, DataError
from captionless3d.teacher.sharded import ShardedArray
from captionless3d.teacher.store_format import (  # noqa: F401  (re-exported names)
    ARRAY_NAMES,
    BACKGROUND_POLICY,
    BACKGROUND_POLICY_REASON,
    DEFAULT_PROMPT_TEMPLATE,
    DEFAULT_SHARD_SIZE,
    MANIFEST_KIND,
    MANIFEST_VERSION,
    SHARDED_ARRAYS,
    SMALL_ARRAYS,
    feature_store_key,
    landmarks_hash,
    resolve_landmarks,
    shard_bounds,
    shard_file,
)
from captionless3d.utils.cache import load_or_build
from captionless3d.utils.manifest import MANIFEST_NAME, file_sha256, load_manifest
from captionless3d.utils.threads import torch_threads

log = logging.getLogger(__name__)

_resolve_landmarks = resolve_landmarks  # the v1 private name


@dataclass
class FeatureStore:
    """A loaded feature store.

    ``view_emb (N, V, D)``, ``photo_emb`` / ``photo_masked_emb (N, K, D)``: fp16 :class:`ShardedArray` (read-only,
    memory-mapped shards). ``prompt_emb (C, D)``, ``landmark_emb (L, D)`` fp16 and ``landmark_labels (L,)`` int64:
    read-only memmapped ``ndarray``. Embeddings are unit-norm up to fp16 rounding (cosine = dot product).
    """

    directory: Path
    manifest: dict[str, Any]
    view_emb: ShardedArray | np.ndarray
    photo_emb: ShardedArray | np.ndarray
    photo_masked_emb: ShardedArray | np.ndarray
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

    @property
    def layout(self) -> dict[str, Any]:
        """The manifest's ``layout`` (shard size, number of shards, item shapes)."""
        return dict(self.manifest.get("layout", {}))

    @property
    def provenance(self) -> dict[str, Any]:
        """The manifest's ``provenance`` (teacher, preprocessing, background policy, view angles, code version)."""
        return dict(self.manifest.get("provenance", {}))

    def mean_view_emb(self, indices: np.ndarray | None = None) -> np.ndarray:
        """float32 ``(n, D)``: the L2-normalised mean of each object's normalised view embeddings (I2I's ē).

        ``indices=None``: all objects, read shard by shard (never the whole store in memory at once).
        """
        if indices is not None:
            return _normalised_mean(np.asarray(self.view_emb[np.asarray(indices)], dtype=np.float32))
        if isinstance(self.view_emb, ShardedArray):
            parts = [_normalised_mean(np.asarray(mm, dtype=np.float32)) for _, _, mm in self.view_emb.iter_shards()]
            return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
        return _normalised_mean(np.asarray(self.view_emb, dtype=np.float32))

    def landmarks_of(self, category: int) -> np.ndarray:
        """float32 ``(L_c, D)`` landmark embeddings of one category."""
        return np.asarray(self.landmark_emb[self.landmark_labels == category], dtype=np.float32)


def _normalised_mean(views: np.ndarray) -> np.ndarray:
    """``(n, V, D)`` → ``(n, D)``: mean over views of the (already unit-norm) rows, re-normalised."""
    mean = views.mean(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------------------------------------------
# build
# ----------------------------------------------------------------------------------------------------------------
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
    shard_size: int = DEFAULT_SHARD_SIZE,
    chunk_objects: int | None = None,
    verify_finished: bool = True,
    autocast: bool | None = None,
) -> FeatureStore:
    """Embed a collection's views, photos (raw and masked), class prompts and landmarks with ``teacher``, in this
    process, resuming an interrupted build in ``out_dir``.

    Args:
        landmarks: ``None`` uses ``collection.landmarks`` (pass ``{}`` for none).
        batch_size: images per teacher call. ``chunk_objects``: objects per encoding step (default
            ``batch_size // max(V, K)``); shards are byte-identical across runs with equal values of both.
        num_threads: torch threads while encoding (``None``: the cores not busy now).
        shard_size: objects per shard file.
        verify_finished: re-hash the shards a previous run finished before skipping them (a damaged one is re-done,
            with a warning naming it).
        autocast: fp16 autocast on a CUDA teacher (``None``: on whenever the teacher is on a CUDA device).

    Prints the image throughput (images/s) when ``progress``. Raises ``DataError`` for a bad collection (naming the
    object, e.g. one with fewer views than the others).
    """
    from captionless3d.teacher.extract import extract_shards, finalise_store, finished_shards

    with torch_threads(num_threads) as threads:
        out_dir = Path(out_dir)
        plan, lm = start_build(collection, teacher, out_dir, prompt_template, landmarks, batch_size, shard_size,
                               chunk_objects)
        done = finished_shards(out_dir, plan, verify=verify_finished)
        todo = [k for k in range(plan.num_shards) if k not in done]
        if done:
            log.info("feature store %s: resuming, %d of %d shards already finished", out_dir, len(done),
                     plan.num_shards)
        t0 = time.perf_counter()
        extract_shards(collection, teacher, out_dir, plan, todo, batch_size=batch_size, progress=progress,
                       autocast=autocast)
        device = str(getattr(teacher, "device", "cpu"))
        amp = autocast is not False and device.startswith("cuda")
        finalise_store(
            out_dir, plan, collection, teacher, prompt_template=prompt_template, landmarks=lm, batch_size=batch_size,
            progress=progress, run_shards=todo, run_seconds=time.perf_counter() - t0,
            compute={"writer": "single-process", "device": device, "precision": "fp16-autocast" if amp else
                     str(getattr(teacher, "precision", "fp32")), "torch_threads": threads, "batch_size": batch_size,
                     "chunk_objects": plan.chunk_objects},
        )
    return load_feature_store(out_dir, plan.key, verify_checksums=False)


def start_build(collection, teacher, out_dir: Path, prompt_template, landmarks, batch_size, shard_size, chunk_objects):
    """Validate the inputs, fix the plan, and drop a stale manifest (the manifest goes last: a crash mid-build must
    never leave an old manifest over new data). Returns ``(plan, resolved landmarks)``."""
    from captionless3d.teacher.extract import make_plan

    if "{}" not in prompt_template:
        raise DataError(f"prompt_template: {prompt_template!r} has no '{{}}' placeholder for the category name")
    lm = resolve_landmarks(collection, landmarks)
    key = feature_store_key(collection, teacher, prompt_template=prompt_template, landmarks=lm)
    plan = make_plan(collection, teacher, key, shard_size=shard_size, batch_size=batch_size,
                     chunk_objects=chunk_objects)
    out_dir.mkdir(parents=True, exist_ok=True)
    _journal_from_manifest(out_dir, plan)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    return plan, lm


def _journal_from_manifest(out_dir: Path, plan: Any) -> None:
    """Rebuilding a store of the *same* build (a corrupt or deleted shard): turn the old manifest's per-shard
    checksums into journal entries first, so only the damaged shards are re-done (the others verify and are kept)."""
    import json

    from captionless3d.teacher.extract import journal_entry_from_files
    from captionless3d.teacher.store_format import journal_file

    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text("utf-8"))
        layout, files = manifest["layout"], manifest["files"]
        same = (manifest.get("version") == MANIFEST_VERSION and manifest.get("key") == dict(plan.key)
                and int(layout["num_objects"]) == plan.num_objects and int(layout["shard_size"]) == plan.shard_size
                and {k: list(v) for k, v in layout["sharded_arrays"].items()}
                == {n: list(plan.item_shape(n)) for n in SHARDED_ARRAYS})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if not same:
        return
    for k in range(plan.num_shards):
        rels = [shard_file(name, k) for name in SHARDED_ARRAYS]
        if all(r in files for r in rels) and not (out_dir / journal_file(k)).is_file():
            journal_entry_from_files(out_dir, plan, k, {r: files[r] for r in rels})


# ----------------------------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------------------------
def load_feature_store(
    directory: str | os.PathLike,
    expected_key: Mapping[str, Any] | None = None,
    *,
    verify_checksums: bool | str = True,
) -> FeatureStore:
    """Open a feature store, verifying its manifest against ``expected_key`` (any subset of the key fields).

    ``verify_checksums``: ``True`` hashes every file now; ``"lazy"`` hashes the small arrays now and each shard the
    first time it is read (for very large stores); ``False`` checks only that the files exist with the recorded
    shapes.

    Raises ``CacheError`` when the manifest is missing, of another format version (a v1 store: "format version 1"),
    a key field differs (naming both values, e.g. another teacher), a file is missing or corrupt (naming the shard
    file, its index and its object range), or the arrays' shapes are inconsistent.
    """
    directory = Path(directory)
    if verify_checksums not in (True, False, "lazy"):
        raise ValueError(f"verify_checksums must be True, False or 'lazy', got {verify_checksums!r}")
    manifest = load_manifest(directory, kind=MANIFEST_KIND, version=MANIFEST_VERSION, key=expected_key,
                             verify_checksums=False)
    where = directory / MANIFEST_NAME
    layout = manifest.get("layout")
    files = manifest.get("files", {})
    if not isinstance(layout, dict) or not {"num_objects", "shard_size", "num_shards", "sharded_arrays"} <= set(layout):
        raise CacheError(f"{where}: the manifest has no valid 'layout' section")
    bounds = shard_bounds(layout)
    num_shards = len(bounds) - 1
    if num_shards != int(layout["num_shards"]):
        raise CacheError(f"{where}: layout says {layout['num_shards']} shards, but {layout['num_objects']} objects in "
                         f"shards of {layout['shard_size']} make {num_shards}")
    for name in SMALL_ARRAYS:
        rel = f"{name}.npy"
        if rel not in files:
            raise CacheError(f"{where}: {rel} is not listed in the manifest")
        if verify_checksums and file_sha256(directory / rel) != files[rel]:
            raise CacheError(f"{directory / rel}: checksum mismatch, "
                             "the file is corrupt or was modified after the manifest")
    arrays: dict[str, Any] = {}
    for name in SHARDED_ARRAYS:
        rels = [shard_file(name, k) for k in range(num_shards)]
        unlisted = [r for r in rels if r not in files]
        if unlisted:
            raise CacheError(f"{where}: shard {unlisted[0]} is not listed in the manifest")
        item_shape = tuple(int(s) for s in layout["sharded_arrays"][name])
        arrays[name] = ShardedArray(
            [directory / r for r in rels], bounds, item_shape, np.float16, name=name,
            checksums=[files[r] for r in rels], verify="lazy" if verify_checksums == "lazy" else False,
        )
        if verify_checksums is True:
            for k, rel in enumerate(rels):
                if file_sha256(directory / rel) != files[rel]:
                    start, stop = arrays[name].shard_range(k)
                    raise CacheError(
                        f"{directory / rel}: checksum mismatch in {name} shard {k} (objects {start}..{stop - 1}); the "
                        "shard is corrupt or was modified after the manifest"
                    )
        if verify_checksums is not True:  # cheap structural check: file present, header matches the manifest
            for k in range(num_shards):
                _check_header(arrays[name], k)
    for name in SMALL_ARRAYS:
        path = directory / f"{name}.npy"
        try:
            arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise CacheError(f"{path}: unreadable feature array ({type(exc).__name__}: {exc})") from exc
    d = arrays["view_emb"].shape[-1]
    checks = [
        ("photo_emb", arrays["photo_emb"].shape[2] == d),
        ("photo_masked_emb", arrays["photo_masked_emb"].shape == arrays["photo_emb"].shape),
        ("prompt_emb", arrays["prompt_emb"].ndim == 2 and arrays["prompt_emb"].shape[1] == d),
        ("landmark_emb", arrays["landmark_emb"].ndim == 2 and arrays["landmark_emb"].shape[1] == d),
        ("landmark_labels", arrays["landmark_labels"].shape == (arrays["landmark_emb"].shape[0],)),
    ]
    for name, ok in checks:
        if not ok:
            raise CacheError(f"{directory / name}: shape {arrays[name].shape} is inconsistent with view_emb "
                             f"{arrays['view_emb'].shape}")
    return FeatureStore(directory=directory, manifest=manifest, stats=dict(manifest.get("extra", {})), **arrays)


def _check_header(array: ShardedArray, k: int) -> None:
    """Shard ``k`` exists and its ``.npy`` header has the manifest's shape and dtype (reads the header only)."""
    path = array.paths[k]
    start, stop = array.shard_range(k)
    where = f"{path} ({array.name} shard {k}, objects {start}..{stop - 1})"
    if not path.is_file():
        raise CacheError(f"{where}: shard file is missing")
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                mm = np.load(path, mmap_mode="r", allow_pickle=False)
                shape, dtype = mm.shape, mm.dtype
    except (OSError, ValueError, EOFError) as exc:
        raise CacheError(f"{where}: unreadable shard header ({type(exc).__name__}: {exc})") from exc
    expected = (stop - start, *array.item_shape)
    if tuple(shape) != expected or np.dtype(dtype) != array.dtype:
        raise CacheError(f"{where}: holds {np.dtype(dtype)} {tuple(shape)}, the manifest says {array.dtype} {expected}")


# ----------------------------------------------------------------------------------------------------------------
# reuse or build
# ----------------------------------------------------------------------------------------------------------------
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
    shard_size: int = DEFAULT_SHARD_SIZE,
    verify_checksums: bool | str = True,
) -> FeatureStore:
    """Reuse the store in ``out_dir`` if its manifest matches this (collection, teacher, prompts, landmarks), else
    build it (resuming an interrupted build). A file lock (``out_dir.lock``) makes concurrent callers build once.

    A stale store (another key, or format v1) is rebuilt with a warning naming the reason; with
    ``rebuild_stale=False`` it raises ``CacheError`` instead. An existing store is reused whatever its shard size.
    """
    out_dir = Path(out_dir)
    lm = resolve_landmarks(collection, landmarks)
    key = feature_store_key(collection, teacher, prompt_template=prompt_template, landmarks=lm)
    return load_or_build(
        out_dir,
        lambda: load_feature_store(out_dir, key, verify_checksums=verify_checksums),
        lambda: build_feature_store(
            collection, teacher, out_dir, prompt_template=prompt_template, landmarks=lm, batch_size=batch_size,
            progress=progress, num_threads=num_threads, shard_size=shard_size,
        ),
        what="feature store",
        rebuild_stale=rebuild_stale,
    )


__all__ = [
    "ARRAY_NAMES",
    "BACKGROUND_POLICY",
    "DEFAULT_PROMPT_TEMPLATE",
    "DEFAULT_SHARD_SIZE",
    "FeatureStore",
    "MANIFEST_VERSION",
    "ShardedArray",
    "build_feature_store",
    "ensure_feature_store",
    "feature_store_key",
    "load_feature_store",
]
