"""Import and export of precomputed teacher image embeddings in the peers' layouts (the paper's released
per-view ``.pth`` files, OpenShape's ``image_feat``).

* The paper's ("No Captions, No Problem") per-view files: ``emb_root/{synset}/{model}/{synset}-{model}_r_{AAA}.pth``,
  ``torch.save`` of a float32 ``(1, D)`` tensor per view (``AAA`` = ULIP azimuth, 000..348 step 12). Read by
  :func:`captionless3d.data.readers.read_nocaptions` (``emb_root=``), which puts them in ``collection.view_emb``.
* OpenShape's per-shape ``.npy`` dicts: ``{root}/{dataset}/{group}/{uid}.npy`` = ``np.save`` of a dict with ``xyz``,
  ``rgb`` and ``image_feat (V, D)`` (12 renders in OpenShape), listed in a split JSON. Read by
  :func:`captionless3d.data.readers.read_openshape` (restricted unpickler), which puts ``image_feat`` in
  ``collection.view_emb``.

:func:`import_view_embeddings` turns such a ``collection.view_emb`` into a regular feature store (format v2, the
same key :func:`~captionless3d.teacher.features.feature_store_key` gives for this collection and ``teacher``), so
training reuses it instead of rendering anything: rows are L2-normalised and cast to fp16; the class prompts and
landmarks are embedded with ``teacher``'s text tower. The caller vouches that ``teacher`` is the model that produced
the image embeddings (only the dimension can be checked); the manifest's ``provenance.compute.source`` records where
they came from. :func:`export_paper_embeddings` / :func:`export_openshape_image_feat` write a store's view
embeddings back out in those layouts (shard by shard, files written atomically).
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.errors import ConfigError, DataError
from captionless3d.teacher.store_format import DEFAULT_PROMPT_TEMPLATE, DEFAULT_SHARD_SIZE, StorePlan
from captionless3d.utils.atomic import atomic_open, atomic_write_json, atomic_write_with
from captionless3d.utils.cache import load_or_build
from captionless3d.utils.manifest import MANIFEST_NAME

ULIP_ANGLES = tuple(range(0, 360, 12))


def import_view_embeddings(
    collection: Any,
    teacher: Any,
    out_dir: str | os.PathLike,
    view_emb: Any = None,
    *,
    source: str = "collection.view_emb",
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    landmarks: Mapping[str, Sequence[str]] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 256,
    progress: bool = False,
) -> Any:
    """Write a feature store whose ``view_emb (N, V, D)`` are precomputed embeddings (default
    ``collection.view_emb``), with no photos, and prompts/landmarks embedded by ``teacher``. Returns the store.

    Raises ``DataError`` when the embeddings are missing, not ``(N, V, D)`` for the collection's N objects, of another
    dimension than the teacher's, or contain a non-finite / all-zero vector (naming the object).
    """
    from captionless3d.teacher.extract import commit_shard, finalise_store
    from captionless3d.teacher.features import feature_store_key, load_feature_store, resolve_landmarks

    name = getattr(collection, "name", "collection")
    view_emb = getattr(collection, "view_emb", None) if view_emb is None else view_emb
    if view_emb is None:
        raise DataError(f"{name}: no precomputed view embeddings to import (collection.view_emb is None)")
    n = len(collection.object_ids)
    if len(view_emb.shape) != 3 or int(view_emb.shape[0]) != n:
        raise DataError(f"{name}: view embeddings of shape {tuple(view_emb.shape)}, expected ({n}, V, D)")
    if int(view_emb.shape[2]) != int(teacher.dim):
        raise DataError(
            f"{name}: imported view embeddings are {view_emb.shape[2]}-d but teacher {teacher.id} is {teacher.dim}-d: "
            "configure the teacher that produced them"
        )
    if "{}" not in prompt_template:
        raise DataError(f"prompt_template: {prompt_template!r} has no '{{}}' placeholder for the category name")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    lm = resolve_landmarks(collection, landmarks)
    key = feature_store_key(collection, teacher, prompt_template=prompt_template, landmarks=lm)
    plan = StorePlan(num_objects=n, shard_size=int(shard_size), views=int(view_emb.shape[1]), photos=0,
                     dim=int(teacher.dim), chunk_objects=int(shard_size), key=key)
    t0 = time.perf_counter()
    for k in range(plan.num_shards):
        start, stop = plan.shard_range(k)
        block = np.asarray(view_emb[start:stop], dtype=np.float32)
        norms = np.linalg.norm(block, axis=-1, keepdims=True)
        bad = np.flatnonzero(~(np.isfinite(block).all(axis=(1, 2)) & (norms > 0).all(axis=(1, 2))))
        if bad.size:
            i = start + int(bad[0])
            raise DataError(f"{name}: object {collection.object_ids[i]!r} (index {i}) has a non-finite or all-zero "
                            "imported view embedding")
        empty = np.zeros((stop - start, 0, plan.dim), np.float16)
        arrays = {"view_emb": (block / norms).astype(np.float16), "photo_emb": empty, "photo_masked_emb": empty}
        commit_shard(out_dir, plan, k, arrays, images=0, started=time.time())
    finalise_store(
        out_dir, plan, collection, teacher, prompt_template=prompt_template, landmarks=lm, batch_size=batch_size,
        progress=progress, run_shards=list(range(plan.num_shards)), run_seconds=time.perf_counter() - t0,
        compute={"writer": "import", "source": str(source)},
    )
    return load_feature_store(out_dir, key, verify_checksums=False)


def ensure_imported_feature_store(collection: Any, teacher: Any, out_dir: str | os.PathLike, **kwargs: Any) -> Any:
    """Reuse the store in ``out_dir`` if it matches, else :func:`import_view_embeddings` (under ``out_dir.lock``)."""
    from captionless3d.teacher.features import feature_store_key, load_feature_store

    out_dir = Path(out_dir)
    key = feature_store_key(collection, teacher, prompt_template=kwargs.get("prompt_template", DEFAULT_PROMPT_TEMPLATE),
                            landmarks=kwargs.get("landmarks"))
    return load_or_build(out_dir, lambda: load_feature_store(out_dir, key),
                         lambda: import_view_embeddings(collection, teacher, out_dir, **kwargs),
                         what="imported feature store")


def _view_azimuths(store: Any, angles: Sequence[int] | None) -> list[int]:
    v = int(store.view_emb.shape[1])
    if angles is None:
        recorded = store.provenance.get("view_angles")
        if not recorded:
            raise ConfigError("angles: the store records no view angles; pass the ULIP azimuth of each view")
        angles = [int(round(a[0])) % 360 for a in recorded]
    angles = [int(a) for a in angles]
    if len(angles) != v:
        raise ConfigError(f"angles: {len(angles)} azimuths for {v} views per object")
    if any(a not in ULIP_ANGLES for a in angles) or len(set(angles)) != v:
        raise ConfigError("angles: the paper's layout names views by distinct ULIP azimuths (0..348 step 12), got "
                          f"{angles}")
    return angles


def export_paper_embeddings(store: Any, collection: Any, emb_root: str | os.PathLike, *,
                            angles: Sequence[int] | None = None) -> int:
    """Write ``store.view_emb`` as ``emb_root/{synset}/{model}/{synset}-{model}_r_{AAA}.pth`` (float32 ``(1, D)``).

    ``angles``: the azimuth of each view (default: the store's recorded view angles). Synset = the category key of the
    object's label, model = its id without the ``"{synset}-"`` prefix (as ``export_nocaptions``). Returns the number
    of files written.
    """
    import torch

    from captionless3d.data.readers.nocaptions import synset_and_model

    azimuths = _view_azimuths(store, angles)
    keys = list(getattr(collection, "category_keys", collection.categories))
    if len(collection.object_ids) != len(store.view_emb):
        raise DataError(f"store has {len(store.view_emb)} objects, collection {collection.name!r} has "
                        f"{len(collection.object_ids)}")
    root = Path(emb_root)
    written = 0
    for start, stop, block in _iter_blocks(store.view_emb):
        for j in range(stop - start):
            synset, model = synset_and_model(collection, start + j, keys)
            for v, a in enumerate(azimuths):
                vec = torch.from_numpy(np.asarray(block[j, v], np.float32)[None].copy())
                atomic_write_with(root / synset / model / f"{synset}-{model}_r_{a:03d}.pth", lambda p,
                                  t=vec: torch.save(t, p))
                written += 1
    return written


def export_openshape_image_feat(
    store: Any,
    collection: Any,
    root: str | os.PathLike,
    *,
    dataset: str = "captionless3d",
    split_file: str = "meta_data/split/train_all.json",
) -> Path:
    """Write OpenShape per-shape dicts ``{root}/{dataset}/{group}/{uid}.npy`` (``dataset``, ``group``, ``id``,
    ``category``, ``xyz`` float16 ``(P, 3)`` from ``collection.points``, ``rgb`` constant 0.4 as OpenShape feeds,
    ``image_feat`` float32 ``(V, D)`` from the store) and the split JSON ``{root}/{split_file}`` (``id``, ``dataset``,
    ``group``, ``category``, ``data_path``). ``group`` = the category key. Returns the split file's path."""
    from captionless3d.data.readers.nocaptions import synset_and_model

    root = Path(root)
    if len(collection.object_ids) != len(store.view_emb):
        raise DataError(f"store has {len(store.view_emb)} objects, collection {collection.name!r} has "
                        f"{len(collection.object_ids)}")
    keys = list(getattr(collection, "category_keys", collection.categories))
    entries = []
    for start, stop, block in _iter_blocks(store.view_emb):
        for j in range(stop - start):
            i = start + j
            group, _ = synset_and_model(collection, i, keys)
            uid = str(collection.object_ids[i])
            if any(c in uid for c in "/\\") or uid.startswith("."):
                raise DataError(f"object id {uid!r} cannot be an OpenShape file name")
            xyz = np.asarray(collection.points[i], np.float32)[:, :3]
            shape = {
                "dataset": dataset, "group": group, "id": uid,
                "category": collection.categories[int(collection.labels[i])],
                "xyz": xyz.astype(np.float16), "rgb": np.full_like(xyz, 0.4, dtype=np.float16),
                "image_feat": np.asarray(block[j], np.float32),
            }
            path = root / dataset / group / f"{uid}.npy"
            with atomic_open(path, "wb") as handle:
                np.save(handle, shape, allow_pickle=True)  # OpenShape's format is a pickled dict; read back restricted
            entries.append({"id": uid, "dataset": dataset, "group": group, "category": shape["category"],
                            "data_path": str(path.resolve())})
    split = root / split_file
    atomic_write_json(split, entries)
    return split


def _iter_blocks(view_emb: Any, rows: int = 4096):
    """``(start, stop, float array)`` blocks of a ShardedArray (shard by shard) or an ndarray."""
    if hasattr(view_emb, "iter_shards"):
        yield from view_emb.iter_shards()
        return
    for start in range(0, len(view_emb), rows):
        stop = min(start + rows, len(view_emb))
        yield start, stop, np.asarray(view_emb[start:stop])


__all__ = [
    "ensure_imported_feature_store",
    "export_openshape_image_feat",
    "export_paper_embeddings",
    "import_view_embeddings",
]
