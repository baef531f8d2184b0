"""The extraction engine behind every feature-store writer: plan, load, encode, commit a shard, resume, finalise.

Both writers use exactly these functions, so they produce byte-identical shards for the same settings:

* :func:`extract_shards` — the single-process loop (``build_feature_store``, the training pipeline);
* :mod:`captionless3d.teacher.distributed` — Lightning's predict loop, shards spread over DDP ranks.

A shard is encoded chunk by chunk (``plan.chunks(k)``: ``chunk_objects`` objects, never straddling two shards),
its embeddings collected in memory (``S x V x D`` fp16: 126 MB for 4096 objects x 30 views x 512 dims; the images
are never all in memory), then committed: each array file written atomically, then its journal entry (SHA-256 of
each file) written atomically. See :mod:`captionless3d.teacher.store_format` for the layout and the resume rules.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.errors import CacheError, DataError, NumericalError
from captionless3d.teacher.store_format import (
    BACKGROUND_POLICY,
    BACKGROUND_POLICY_REASON,
    MANIFEST_KIND,
    MANIFEST_VERSION,
    PROGRESS_DIR,
    SHARDED_ARRAYS,
    SMALL_ARRAYS,
    StorePlan,
    journal_file,
    shard_file,
)
from captionless3d.utils.atomic import atomic_write_bytes, atomic_write_json
from captionless3d.utils.manifest import MANIFEST_NAME, file_sha256

log = logging.getLogger("captionless3d.teacher.features")

#: the collection attribute each sharded array is computed from
SOURCES = {"view_emb": "views", "photo_emb": "photos", "photo_masked_emb": "photos_masked"}


# ----------------------------------------------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------------------------------------------
def make_plan(
    collection: Any,
    teacher: Any,
    key: Mapping[str, Any],
    *,
    shard_size: int,
    batch_size: int,
    chunk_objects: int | None = None,
) -> StorePlan:
    """Check the collection's image arrays and fix the store layout.

    ``views`` must be ``(N, V, H, W, 3)`` uint8 (``V`` may be 0); ``photos`` ``(N, K, H', W', 3)`` with ``masks``
    ``(N, K, H', W')``, or ``None``. ``chunk_objects=None``: ``batch_size // max(V, K)`` objects (at least 1), so one
    chunk's views fill about one teacher batch.
    """
    name = getattr(collection, "name", "collection")
    views = collection.views
    if views is None or len(views.shape) != 5 or views.shape[-1] != 3:
        raise DataError(f"{name}: views must be (N, V, H, W, 3) uint8, got "
                        f"{None if views is None else tuple(views.shape)}")
    n, v = int(views.shape[0]), int(views.shape[1])
    photos = getattr(collection, "photos", None)
    masks = getattr(collection, "masks", None)
    k = 0
    if photos is not None and len(photos):
        if int(photos.shape[0]) != n:
            raise DataError(f"{name}: {photos.shape[0]} photo rows for {n} objects")
        if masks is None or tuple(masks.shape) != tuple(photos.shape[:4]):
            raise DataError(f"{name}: masks {None if masks is None else tuple(masks.shape)} do not match photos "
                            f"{tuple(photos.shape)}")
        k = int(photos.shape[1])
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if chunk_objects is None:
        chunk_objects = max(1, int(batch_size) // max(v, k, 1))
    return StorePlan(
        num_objects=n, shard_size=int(shard_size), views=v, photos=k, dim=int(teacher.dim),
        chunk_objects=int(chunk_objects), key=dict(key),
    )


# ----------------------------------------------------------------------------------------------------------------
# load + encode one chunk
# ----------------------------------------------------------------------------------------------------------------
def _object_name(collection: Any, i: int) -> str:
    ids = getattr(collection, "object_ids", None)
    try:
        return f"object {ids[i]!r} (index {i})" if ids is not None else f"object index {i}"
    except (IndexError, TypeError):
        return f"object index {i}"


def _read_rows(collection: Any, attr: str, array: Any, start: int, stop: int, item_shape: tuple,
               plan: StorePlan) -> np.ndarray:
    """``array[start:stop]`` as uint8/bool ``(stop-start, *item_shape)``; a bad row gives a DataError naming the
    object."""
    name = getattr(collection, "name", "collection")
    k = start // plan.shard_size
    try:
        block = np.asarray(array[start:stop])
        if block.shape == (stop - start, *item_shape):
            return block
    except (DataError, ValueError, OSError):
        pass
    for i in range(start, stop):  # find the object at fault (error path only)
        try:
            row = np.asarray(array[i])
        except (DataError, ValueError, OSError) as exc:
            raise DataError(f"{name}: {_object_name(collection, i)} in shard {k}: cannot read its {attr}: "
                            f"{exc}") from exc
        if row.shape != item_shape:
            raise DataError(
                f"{name}: {_object_name(collection, i)} in shard {k} has {attr} of shape {row.shape}, expected "
                f"{item_shape} (a missing view?); every object needs the same number of {attr}"
            )
    raise DataError(f"{name}: {attr} of objects {start}..{stop - 1} (shard {k}) cannot be stacked to {item_shape}")


def load_chunk(collection: Any, plan: StorePlan, start: int, stop: int) -> dict[str, np.ndarray]:
    """The images of objects ``[start, stop)``: ``views`` uint8 ``(c, V, H, W, 3)`` and, with photos, ``photos`` and
    ``photos_masked`` (photo * mask, background black) ``(c, K, H', W', 3)``."""
    views = collection.views
    out = {"views": _read_rows(collection, "views", views, start, stop, tuple(views.shape[1:]), plan)}
    if plan.photos:
        photos, masks = collection.photos, collection.masks
        block = _read_rows(collection, "photos", photos, start, stop, tuple(photos.shape[1:]), plan)
        mask = _read_rows(collection, "masks", masks, start, stop, tuple(masks.shape[1:]), plan)
        out["photos"] = block
        out["photos_masked"] = block * mask.astype(bool)[..., None].astype(np.uint8)
    return out


def _autocast(teacher: Any, enabled: bool | None) -> contextlib.AbstractContextManager:
    """fp16 autocast when the teacher sits on a CUDA device (``enabled=None``: auto) — no-op on the CPU."""
    import torch

    device = torch.device(getattr(teacher, "device", "cpu"))
    if enabled is False or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.float16)


def encode_chunk(
    teacher: Any, chunk: Mapping[str, Any], plan: StorePlan, start: int, *, batch_size: int,
    autocast: bool | None = None
) -> dict[str, np.ndarray]:
    """Embed one chunk's images: ``{view_emb: (c, V, D), photo_emb: (c, K, D), photo_masked_emb: (c, K, D)}`` fp16.

    Each image kind is encoded in batches of ``batch_size``. A non-finite embedding raises ``NumericalError`` and a
    wrong output shape ``DataError``, both naming the objects.
    """
    c = int(np.shape(chunk["views"])[0])
    out: dict[str, np.ndarray] = {}
    for name in SHARDED_ARRAYS:
        per = plan.item_shape(name)[0]
        if per == 0:
            out[name] = np.zeros((c, 0, plan.dim), np.float16)
            continue
        images = np.asarray(chunk[SOURCES[name]])
        flat = np.ascontiguousarray(images.reshape(c * per, *images.shape[2:]))
        with _autocast(teacher, autocast):
            emb = teacher.encode_images(flat, batch_size=batch_size, progress=False)
        emb = emb.float().cpu().numpy() if hasattr(emb, "cpu") else np.asarray(emb, np.float32)
        if emb.shape != (c * per, plan.dim):
            raise DataError(f"teacher {teacher.id} returned {emb.shape} for {c * per} images of objects "
                            f"{start}..{start + c - 1}, expected (.., {plan.dim})")
        if not np.isfinite(emb).all():
            raise NumericalError(f"teacher {teacher.id}: non-finite {name} embedding among objects "
                                 f"{start}..{start + c - 1}")
        out[name] = emb.reshape(c, per, plan.dim).astype(np.float16)
    return out


class ShardAssembler:
    """Collects the chunk embeddings of shard ``k`` in memory until all its rows have arrived."""

    def __init__(self, plan: StorePlan, k: int) -> None:
        self.k = k
        self.start, self.stop = plan.shard_range(k)
        rows = self.stop - self.start
        self.arrays = {name: np.zeros((rows, *plan.item_shape(name)), np.float16) for name in SHARDED_ARRAYS}
        self._filled = np.zeros(rows, dtype=bool)
        self.images = 0

    def add(self, start: int, arrays: Mapping[str, np.ndarray]) -> None:
        c = int(arrays["view_emb"].shape[0])
        lo, hi = start - self.start, start - self.start + c
        if lo < 0 or hi > len(self._filled):
            raise DataError(f"shard {self.k}: chunk of objects {start}..{start + c - 1} is outside the shard")
        for name in SHARDED_ARRAYS:
            self.arrays[name][lo:hi] = arrays[name]
            self.images += int(arrays[name].shape[0] * arrays[name].shape[1])
        self._filled[lo:hi] = True

    @property
    def complete(self) -> bool:
        return bool(self._filled.all())


# ----------------------------------------------------------------------------------------------------------------
# commit, journal, resume
# ----------------------------------------------------------------------------------------------------------------
def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def commit_shard(directory: Path, plan: StorePlan, k: int, arrays: Mapping[str, np.ndarray], *, images: int,
                 started: float) -> dict[str, Any]:
    """Write shard ``k``'s arrays (each atomically), then its journal entry (atomically). Returns the entry.

    ``started``: ``time.time()`` when the shard's first chunk began encoding (for the throughput readout).
    """
    start, stop = plan.shard_range(k)
    files: dict[str, str] = {}
    for name in SHARDED_ARRAYS:
        array = np.asarray(arrays[name], dtype=np.float16)
        expected = (stop - start, *plan.item_shape(name))
        if array.shape != expected:
            raise DataError(f"shard {k}: {name} has shape {array.shape}, expected {expected}")
        payload = _npy_bytes(array)
        rel = shard_file(name, k)
        atomic_write_bytes(directory / rel, payload)
        files[rel] = hashlib.sha256(payload).hexdigest()
    entry = {
        "shard": k, "start": start, "stop": stop, "build_id": plan.build_id, "files": files,
        "images": int(images), "started": float(started), "finished": time.time(),
    }
    atomic_write_json(directory / journal_file(k), entry)
    return entry


def journal_entry_from_files(directory: Path, plan: StorePlan, k: int, files: Mapping[str, str]) -> dict[str, Any]:
    """Write a journal entry for shard ``k`` from known file checksums (e.g. an old manifest of the same build)."""
    start, stop = plan.shard_range(k)
    entry = {"shard": k, "start": start, "stop": stop, "build_id": plan.build_id, "files": dict(files), "images": 0}
    atomic_write_json(directory / journal_file(k), entry)
    return entry


def finished_shards(directory: Path, plan: StorePlan, *, verify: bool = True) -> dict[int, dict[str, Any]]:
    """Journal entries of the shards a previous (interrupted) run of this build finished.

    An entry counts when it has this plan's build id and range and every file it lists exists (and, with
    ``verify``, still has its SHA-256). A shard whose file is missing or corrupt is logged with a warning naming the
    file and left out, so it is re-done.
    """
    done: dict[int, dict[str, Any]] = {}
    progress = directory / PROGRESS_DIR
    if not progress.is_dir():
        return done
    for k in range(plan.num_shards):
        path = directory / journal_file(k)
        if not path.is_file():
            continue
        try:
            entry = json.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("feature store %s: journal entry %s is unreadable (%s); re-doing shard %d", directory, path,
                        exc, k)
            continue
        if (entry.get("build_id") != plan.build_id
                or [entry.get("start"), entry.get("stop")] != list(plan.shard_range(k))):
            continue  # from another build (other key, shard size or collection size)
        files = entry.get("files", {})
        if sorted(files) != sorted(shard_file(name, k) for name in SHARDED_ARRAYS):
            continue
        bad = None
        for rel, checksum in files.items():
            file = directory / rel
            if not file.is_file():
                bad = f"{file} is missing"
            elif verify and file_sha256(file) != checksum:
                bad = f"{file} does not match its journal checksum (corrupt)"
            if bad:
                break
        if bad:
            log.warning("feature store %s: finished shard %d is damaged (%s); re-doing it", directory, k, bad)
            continue
        done[k] = entry
    return done


def extract_shards(
    collection: Any,
    teacher: Any,
    directory: Path,
    plan: StorePlan,
    shards: Sequence[int],
    *,
    batch_size: int,
    progress: bool = True,
    autocast: bool | None = None,
) -> dict[int, dict[str, Any]]:
    """Encode and commit ``shards`` one after the other in this process. Returns their journal entries."""
    entries: dict[int, dict[str, Any]] = {}
    total = sum((plan.shard_range(k)[1] - plan.shard_range(k)[0]) for k in shards) * (plan.views + 2 * plan.photos)
    bar = None
    if progress and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="embed images", unit="img", unit_scale=True, leave=False)
    try:
        for k in shards:
            t0 = time.time()
            shard = ShardAssembler(plan, k)
            for start, stop in plan.chunks(k):
                chunk = load_chunk(collection, plan, start, stop)
                shard.add(start, encode_chunk(teacher, chunk, plan, start, batch_size=batch_size, autocast=autocast))
                if bar is not None:
                    bar.update((stop - start) * (plan.views + 2 * plan.photos))
            entries[k] = commit_shard(directory, plan, k, shard.arrays, images=shard.images, started=t0)
    finally:
        if bar is not None:
            bar.close()
    return entries


# ----------------------------------------------------------------------------------------------------------------
# texts + finalise
# ----------------------------------------------------------------------------------------------------------------
def encode_text_arrays(
    collection: Any, teacher: Any, *, prompt_template: str, landmarks: Mapping[str, Sequence[str]], batch_size: int,
    progress: bool
) -> dict[str, np.ndarray]:
    """``prompt_emb (C, D)``, ``landmark_emb (L, D)`` fp16 and ``landmark_labels (L,)`` int64."""
    dim = int(teacher.dim)
    prompts = [prompt_template.format(c) for c in collection.categories]
    prompt_emb = teacher.encode_texts(prompts, batch_size=batch_size, progress=False)
    lm_texts = [s for k in landmarks for s in landmarks[k]]
    lm_labels = np.array([list(collection.categories).index(k) for k in landmarks for _ in landmarks[k]],
                         dtype=np.int64)
    lm_emb = (
        teacher.encode_texts(lm_texts, batch_size=batch_size, progress=progress and len(lm_texts) > 2048)
        if lm_texts else np.zeros((0, dim), np.float32)
    )
    as_np = lambda t: t.float().cpu().numpy() if hasattr(t, "cpu") else np.asarray(t, np.float32)  # noqa: E731
    return {
        "prompt_emb": as_np(prompt_emb).reshape(len(prompts), dim).astype(np.float16),
        "landmark_emb": as_np(lm_emb).reshape(len(lm_texts), dim).astype(np.float16),
        "landmark_labels": lm_labels,
    }


def _remove_leftovers(directory: Path, plan: StorePlan) -> None:
    """Drop files a finished store must not contain: v1 arrays, shards beyond ``num_shards``, temp files of killed
    atomic writes. Only called by the one process that finalises, after every writer is done."""
    for name in SHARDED_ARRAYS:
        (directory / f"{name}.npy").unlink(missing_ok=True)  # format v1
        sub = directory / name
        if sub.is_dir():
            keep = {Path(shard_file(name, k)).name for k in range(plan.num_shards)}
            for file in sub.iterdir():
                if file.name not in keep:
                    file.unlink(missing_ok=True)
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def finalise_store(
    directory: Path,
    plan: StorePlan,
    collection: Any,
    teacher: Any,
    *,
    prompt_template: str,
    landmarks: Mapping[str, Sequence[str]],
    batch_size: int,
    progress: bool,
    run_shards: Sequence[int],
    run_seconds: float,
    compute: Mapping[str, Any],
) -> dict[str, Any]:
    """Check every shard is journalled, write the small arrays, then ``manifest.json`` last; delete the journal.

    ``run_shards``: the shards this run encoded (their images/s go into the printed readout and the stats: images
    over the span from the first shard's start to the last shard's commit, over all ranks; ``run_seconds`` is the
    fallback).
    """
    from captionless3d.version import __version__

    done = finished_shards(directory, plan, verify=False)
    missing = [k for k in range(plan.num_shards) if k not in done]
    if missing:
        raise CacheError(f"feature store {directory}: shards {missing[:10]} are not finished; "
                         "cannot write the manifest")
    t1 = time.perf_counter()
    texts = encode_text_arrays(collection, teacher, prompt_template=prompt_template, landmarks=landmarks,
                               batch_size=batch_size, progress=progress)
    text_s = time.perf_counter() - t1
    files: dict[str, str] = {}
    for name in SMALL_ARRAYS:
        payload = _npy_bytes(texts[name])
        atomic_write_bytes(directory / f"{name}.npy", payload)
        files[f"{name}.npy"] = hashlib.sha256(payload).hexdigest()
    for k in range(plan.num_shards):
        files.update(done[k]["files"])
    _remove_leftovers(directory, plan)

    ran = [done[k] for k in run_shards if k in done]
    n_images = sum(int(e.get("images", 0)) for e in ran)
    # first chunk started .. last shard written, all ranks
    if ran and all("started" in e and "finished" in e for e in ran):
        run_seconds = max(e["finished"] for e in ran) - min(e["started"] for e in ran)
    ips = n_images / max(run_seconds, 1e-9)
    angles = getattr(collection, "view_angles", None)
    angles = ([list(map(float, a)) for a in angles] if angles is not None and len(angles) == plan.views and plan.views
              else None)
    stats = {
        "num_objects": plan.num_objects,
        "num_images": n_images,
        "image_seconds": round(run_seconds, 2),
        "images_per_s": round(ips, 1),
        "num_texts": int(len(texts["prompt_emb"]) + len(texts["landmark_emb"])),
        "text_seconds": round(text_s, 2),
        "dim": plan.dim,
        "categories": list(collection.categories),
        "collection_name": str(getattr(collection, "name", "")),
        "shards_encoded": len(run_shards),
        "shards_reused": plan.num_shards - len(run_shards),
    }
    manifest = {
        "kind": MANIFEST_KIND,
        "version": MANIFEST_VERSION,
        "key": dict(plan.key),
        "files": dict(sorted(files.items())),
        "layout": {**plan.layout(), "small_arrays": {name: list(texts[name].shape) for name in SMALL_ARRAYS}},
        "provenance": {
            "teacher_id": str(teacher.id),
            "preprocessing": str(getattr(teacher, "preprocess_id", "unknown")),
            "background_policy": BACKGROUND_POLICY,
            "background_policy_reason": BACKGROUND_POLICY_REASON,
            "view_angles": angles,
            "collection_fingerprint": str(collection.fingerprint),
            "collection_name": str(getattr(collection, "name", "")),
            "code_version": str(__version__),
            "compute": dict(compute),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "extra": stats,
    }
    atomic_write_json(directory / MANIFEST_NAME, manifest)
    shutil.rmtree(directory / PROGRESS_DIR, ignore_errors=True)
    message = (
        f"feature store {directory}: {n_images} images in {run_seconds:.1f} s ({ips:.1f} images/s), "
        f"{stats['num_texts']} texts in {text_s:.1f} s, {len(run_shards)} of {plan.num_shards} shards encoded "
        f"(shard size {plan.shard_size}), teacher {teacher.id}"
    )
    log.info(message)
    if progress:
        print(message, flush=True)
    return manifest


__all__ = [
    "ShardAssembler",
    "commit_shard",
    "journal_entry_from_files",
    "encode_chunk",
    "encode_text_arrays",
    "extract_shards",
    "finalise_store",
    "finished_shards",
    "load_chunk",
    "make_plan",
]
