"""The "No Captions, No Problem" reference layout (the released data of docs/method.md): import and export.

::

    pc_root/{synset}/{model}/20k_sample.pth                          torch.save(tensor (~20000, 3))
    emb_root/{synset}/{model}/{synset}-{model}_r_{AAA}.pth           torch.save(tensor (1, D) or (D,)), 30 ULIP angles
    labels_root/{synset}_similarity_matrix.npy                       I2I cosine S (n, n) over ALL models of the synset
    labels_text_root/{synset}_distance_matrix.npy                    (I2L)^2 distance D (n, n)

Model order inside a synset = ``sorted(os.listdir(pc_root/synset))``; the first ``int(0.8 n)`` are train, the rest val;
matrix row/column k = the k-th model of that order. ``.pth`` files are read with ``torch.load(weights_only=True)``.

* :func:`read_nocaptions` → a collection (points; ``view_emb`` ``(N, V, D)`` float32 when ``emb_root`` is given;
  ``views`` empty, these files hold no images).
* :func:`load_nocaptions_priors` → ``{label: (global member indices, l)}`` with ``l = (S+1)/2`` (i2i) or
  ``1/(1+D)`` (i2l2), ready for ``PriorStore.from_category_matrices(matrices, len(collection), kind=...)``.
* :func:`export_nocaptions` writes a collection (+ view embeddings, + matrices) in this layout;
  :func:`similarity_matrices` / :func:`distance_matrices` compute the paper's matrices from embeddings.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.data.readers.base import (
    LazyArray,
    Problems,
    ReaderCollection,
    check_n_points,
    files_fingerprint,
    object_rng,
    prepare_points,
    read_json,
    require_dir,
    stack_points,
)
from captionless3d.data.readers.ulip_shapenet import DROPPED_SYNSETS, ULIP_ANGLES, paper_split
from captionless3d.data.safe_pickle import safe_load_npy
from captionless3d.errors import ConfigError, DataError
from captionless3d.utils.atomic import atomic_save_npy, atomic_write_with

POINTS_FILE = "20k_sample.pth"
KINDS = {"i2i": "similarity", "i2l2": "distance"}


def load_pth_tensor(path: Path) -> np.ndarray:
    """``torch.load(path, weights_only=True)`` → float numpy array; DataError naming the file on any problem."""
    import torch

    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle globals, ... (torch raises many types)
        raise DataError(f"{path}: unreadable .pth ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(obj, torch.Tensor):
        raise DataError(f"{path}: expected a tensor, found {type(obj).__name__}")
    return obj.detach().float().numpy()


def _model_dirs(pc_root: Path, synset: str) -> list[str]:
    return sorted(e.name for e in os.scandir(pc_root / synset) if e.is_dir())


class _Points:
    def __init__(self, paths: list[Path], ids: list[str], n_points: int, seed: int) -> None:
        self.paths, self.ids, self.n_points, self.seed = paths, ids, n_points, seed

    def __call__(self, i: int) -> np.ndarray:
        return prepare_points(load_pth_tensor(self.paths[i]), str(self.paths[i]), self.n_points,
                              object_rng(self.seed, self.ids[i]))


def read_nocaptions(
    pc_root: str | Path,
    *,
    emb_root: str | Path | None = None,
    taxonomy: str | Path | None = None,
    view_angles: Sequence[int] | None = None,
    n_points: int = 8192,
    seed: int = 0,
    val_split: float = 0.2,
    test_split: float = 0.0,
    drop_synsets: Sequence[str] = DROPPED_SYNSETS,
    synsets: Sequence[str] | None = None,
    points_in_memory: bool = True,
    image_size: int = 224,
    skip_bad: bool = False,
    fingerprint: str = "stat",
) -> ReaderCollection:
    """Read the paper's layout. ``taxonomy``: optional ShapeNet ``taxonomy.json`` for category names (else the synset
    ids). ``n_points``: points kept per cloud (seeded random subset of the ~20k; the student re-draws 2048 from them).
    ``points_in_memory=false`` loads each ``.pth`` on access (nothing but existence is checked up front)."""
    pc_root = require_dir(pc_root, "No-Captions point-cloud root")
    n_points = check_n_points(n_points) or 8192
    angles = list(ULIP_ANGLES if view_angles is None else view_angles)
    if not angles or any(a not in ULIP_ANGLES for a in angles):
        raise ConfigError(f"view_angles: expected ULIP angles (0..348 step 12), got {angles}")
    keys = sorted(e.name for e in os.scandir(pc_root) if e.is_dir() and e.name not in drop_synsets
                  and (synsets is None or e.name in synsets))
    if not keys:
        raise DataError(f"{pc_root}: no synset folders")
    models = {s: _model_dirs(pc_root, s) for s in keys}
    names = {s: s for s in keys}
    files: list[Path] = []
    if taxonomy is not None:
        tax = read_json(taxonomy, "ShapeNet taxonomy")
        found = {str(t.get("synsetId")): str(t.get("name", "")).split(",")[0].strip()
                 for t in tax if isinstance(t, dict)}
        names = {s: found.get(s, s) for s in keys}
        files.append(Path(taxonomy))
    splits = paper_split({s: [f"{s}-{m}" for m in v] for s, v in models.items()}, val_split, test_split)
    problems = Problems(skip_bad)
    emb_dir = require_dir(emb_root, "No-Captions embedding root") if emb_root is not None else None
    ids, labels, clouds, paths, embs, sources = [], [], [], [], [], []
    for label, synset in enumerate(keys):
        for model in models[synset]:
            oid = f"{synset}-{model}"
            path = pc_root / synset / model / POINTS_FILE
            try:
                if points_in_memory:
                    cloud = prepare_points(load_pth_tensor(path), str(path), n_points, object_rng(seed, oid))
                elif not path.is_file():
                    raise DataError(f"{path}: file is missing")
                else:
                    cloud = None
                emb = None
                if emb_dir is not None:
                    vecs = [load_pth_tensor(emb_dir / synset / model / f"{oid}_r_{a:03d}.pth").reshape(-1)
                            for a in angles]
                    if len({v.shape for v in vecs}) != 1:
                        raise DataError(f"{emb_dir / synset / model}: view embeddings have different sizes")
                    emb = np.stack(vecs)
                    if not np.isfinite(emb).all():
                        raise DataError(f"{emb_dir / synset / model}: NaN/Inf in view embeddings")
            except DataError as exc:
                problems.add(path, exc)
                continue
            ids.append(oid)
            labels.append(label)
            clouds.append(cloud)
            paths.append(path)
            embs.append(emb)
            sources.append(str(path))
    name = "nocaptions-shapenet"
    problems.report(name)
    if emb_dir is not None and len({e.shape for e in embs}) > 1:
        raise DataError(f"{emb_dir}: view embeddings of different dimensions across objects")
    points: Any = (stack_points(clouds, sources, name) if points_in_memory else
                   LazyArray(len(ids), (n_points, 3), np.float32, _Points(paths, ids, n_points, seed),
                             f"{name} points"))
    emb_files = ([emb_dir / o.split("-", 1)[0] / o.split("-", 1)[1] / f"{o}_r_{a:03d}.pth" for o in ids for a in angles]
                 if emb_dir is not None else [])
    params = {"reader": "nocaptions", "angles": angles, "n_points": n_points, "seed": int(seed),
              "val_split": float(val_split), "test_split": float(test_split), "drop": sorted(drop_synsets),
              "synsets": None if synsets is None else sorted(synsets), "emb": emb_root is not None}
    collection = ReaderCollection(
        name=name,
        fingerprint=files_fingerprint(files + paths + emb_files, pc_root, params, mode=fingerprint),
        categories=[names[s] for s in keys],
        category_keys=keys,
        labels=labels,
        splits=[splits[o] for o in ids],
        object_ids=ids,
        points=points,
        view_angles=[(float(a), 31.0) for a in angles],
        image_size=image_size,
        bad=problems.items,
        extra={"sorted_models": models},
    )
    collection.view_emb = np.stack(embs).astype(np.float32) if emb_dir is not None and embs else None
    return collection


def _sorted_models(collection: Any) -> dict[str, list[str]]:
    models = getattr(collection, "extra", {}).get("sorted_models")
    if models is None:  # any collection whose ids are "{synset}-{model}"
        models = {}
        for oid in collection.object_ids:
            synset, model = _split_id(oid)
            models.setdefault(synset, []).append(model)
        models = {s: sorted(v) for s, v in models.items()}
    return models


def load_nocaptions_priors(collection: Any, labels_root: str | Path, kind: str = "i2i",
                           members: str | Sequence[str] = "train") -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per-synset matrices → ``{label: (global indices, l)}`` for ``PriorStore.from_category_matrices``.

    ``kind="i2i"`` reads ``{synset}_similarity_matrix.npy`` (``l = (S+1)/2``), ``"i2l2"`` reads
    ``{synset}_distance_matrix.npy`` (``l = 1/(1+D)``). Only objects of ``members`` splits present in the collection
    are kept (rows/columns of skipped objects are dropped). A synset without a matrix file is a DataError.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind: expected one of {tuple(KINDS)}, got {kind!r}")
    labels_root = require_dir(labels_root, f"No-Captions {KINDS[kind]} matrix")
    splits = {members} if isinstance(members, str) else set(members)
    models = _sorted_models(collection)
    position = {oid: i for i, oid in enumerate(collection.object_ids)}
    keys = list(getattr(collection, "category_keys", collection.categories))
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for label, synset in enumerate(keys):
        order = models.get(synset, [])
        path = labels_root / f"{synset}_{KINDS[kind]}_matrix.npy"
        if not path.is_file():
            raise DataError(f"{path}: {KINDS[kind]} matrix of synset {synset} is missing")
        mat = safe_load_npy(path)
        if not isinstance(mat, np.ndarray) or mat.shape != (len(order), len(order)) or mat.dtype.kind not in "fiu":
            raise DataError(f"{path}: expected a ({len(order)}, {len(order)}) numeric matrix over the synset's sorted "
                            f"models, got {getattr(mat, 'shape', type(mat).__name__)}")
        mat = np.asarray(mat, dtype=np.float64)
        if not np.isfinite(mat).all():
            raise DataError(f"{path}: NaN/Inf entries")
        if kind == "i2l2" and (mat < 0).any():
            raise DataError(f"{path}: negative distances")
        rows, index = [], []
        for k, model in enumerate(order):
            i = position.get(f"{synset}-{model}")
            if i is not None and collection.splits[i] in splits and collection.labels[i] == label:
                rows.append(k)
                index.append(i)
        sub = mat[np.ix_(rows, rows)]
        prior = (sub + 1.0) / 2.0 if kind == "i2i" else 1.0 / (1.0 + sub)
        out[label] = (np.asarray(index, np.int64), prior.astype(np.float32))
    return out


# --------------------------------------------------------------------------------------------- export

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _split_id(oid: str) -> tuple[str, str]:
    if "-" not in oid:
        raise DataError(f"object id {oid!r} is not '{{synset}}-{{model}}'")
    synset, model = oid.split("-", 1)
    return synset, model


def _mean_emb(view_emb: np.ndarray) -> np.ndarray:
    v = np.asarray(view_emb, np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    m = v.mean(axis=1)
    return m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)


def _groups(collection: Any) -> dict[str, list[int]]:
    """Synset → collection indices in sorted model order (the paper's matrix order)."""
    keys = list(getattr(collection, "category_keys", collection.categories))
    groups: dict[str, list[tuple[str, int]]] = {}
    for i, _oid in enumerate(collection.object_ids):
        synset, model = synset_and_model(collection, i, keys)
        groups.setdefault(synset, []).append((model, i))
    return {s: [i for _, i in sorted(v)] for s, v in groups.items()}


def synset_and_model(collection: Any, i: int, keys: Sequence[str]) -> tuple[str, str]:
    """``(synset, model id)`` of object ``i`` in the paper's layout, made safe for file names (``keys``: the synset
    of each category label)."""
    synset = str(keys[int(collection.labels[i])])
    oid = str(collection.object_ids[i])
    model = oid.split("-", 1)[1] if oid.startswith(f"{synset}-") else oid
    return _SAFE.sub("_", synset), _SAFE.sub("_", model)


def similarity_matrices(collection: Any, view_emb: np.ndarray) -> dict[str, np.ndarray]:
    """I2I per synset: ``S = cos(ē_i, ē_j)`` (ē = normalised mean of normalised views), sorted model order."""
    mean = _mean_emb(view_emb)
    return {s: (mean[idx] @ mean[idx].T).astype(np.float32) for s, idx in _groups(collection).items()}


def distance_matrices(collection: Any, view_emb: np.ndarray, landmark_emb: np.ndarray,
                      landmark_labels: np.ndarray) -> dict[str, np.ndarray]:
    """(I2L)² per synset: ``D = ‖p_i − p_j‖₂`` with ``p`` the cosine profile of ē to the category's landmarks."""
    mean = _mean_emb(view_emb)
    lm = np.asarray(landmark_emb, np.float32)
    lm = lm / np.maximum(np.linalg.norm(lm, axis=-1, keepdims=True), 1e-12)
    keys = list(getattr(collection, "category_keys", collection.categories))
    out = {}
    for synset, idx in _groups(collection).items():
        label = keys.index(synset) if synset in keys else int(collection.labels[idx[0]])
        t = lm[np.asarray(landmark_labels) == label]
        if len(t) == 0:
            raise DataError(f"distance_matrices: no landmarks for category {synset}")
        p = mean[idx] @ t.T
        out[synset] = np.sqrt(np.maximum(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1), 0)).astype(np.float32)
    return out


def export_nocaptions(
    collection: Any,
    pc_root: str | Path,
    *,
    view_emb: np.ndarray | None = None,
    emb_root: str | Path | None = None,
    angles: Sequence[int] = ULIP_ANGLES,
    similarity: Mapping[str, np.ndarray] | None = None,
    labels_root: str | Path | None = None,
    distance: Mapping[str, np.ndarray] | None = None,
    labels_text_root: str | Path | None = None,
) -> None:
    """Write ``collection`` (points; optionally ``view_emb`` ``(N, V=len(angles), D)`` and per-synset matrices in
    sorted model order, e.g. from :func:`similarity_matrices`) in the paper's layout. Files are written atomically.
    Synset = ``category_keys[label]``; model = the object id without its ``"{synset}-"`` prefix."""
    import torch

    keys = list(getattr(collection, "category_keys", collection.categories))
    pc_root = Path(pc_root)
    if view_emb is not None:
        if emb_root is None:
            raise ConfigError("emb_root: needed to export view embeddings")
        view_emb = np.asarray(view_emb, np.float32)
        if view_emb.shape[:2] != (len(collection), len(angles)):
            raise DataError(f"view_emb has shape {view_emb.shape}, expected ({len(collection)}, {len(angles)}, D)")
    for i in range(len(collection)):
        synset, model = synset_and_model(collection, i, keys)
        cloud = torch.from_numpy(np.ascontiguousarray(np.asarray(collection.points[i], np.float32)))
        atomic_write_with(pc_root / synset / model / POINTS_FILE, lambda p, c=cloud: torch.save(c, p))
        if view_emb is not None:
            for v, a in enumerate(angles):
                vec = torch.from_numpy(view_emb[i, v][None].copy())
                atomic_write_with(Path(emb_root) / synset / model / f"{synset}-{model}_r_{a:03d}.pth",
                                  lambda p, t=vec: torch.save(t, p))
    groups = _groups(collection)
    for mats, root, kind in ((similarity, labels_root, "similarity"), (distance, labels_text_root, "distance")):
        if mats is None:
            continue
        if root is None:
            raise ConfigError(f"labels{'_text' if kind == 'distance' else ''}_root: needed to export {kind} matrices")
        for synset, mat in mats.items():
            n = len(groups.get(synset, []))
            if np.shape(mat) != (n, n):
                raise DataError(f"{kind} matrix of {synset} has shape {np.shape(mat)}, the synset has {n} objects")
            atomic_save_npy(Path(root) / f"{synset}_{kind}_matrix.npy", np.asarray(mat, np.float32))
