"""Evaluation artefacts for people, not tables: point-cloud thumbnails, retrieval example grids, embedding projector.

* :func:`render_point_thumbnails` -- vectorised orthographic point splat (z-buffer by ``scatter_reduce``) of
  ``(M, P, 3)`` clouds into ``(M, S, S, 3)`` uint8 images, shaded by depth (near = dark blue), white background.
* :func:`topk_retrieval` -- the ``k`` best gallery items per query by cosine similarity (stable order: ties go to the
  smaller gallery index, as :mod:`.retrieval`) and whether each is a hit (same shape id).
* :func:`retrieval_grid` -- one row per query: the photo (grey frame), then its top-k shapes, each framed **green**
  when it is a hit and **red** when not. Returns the image and the pixel box of every framed cell.
* :func:`write_retrieval_examples` -- the grid for N seeded query photos of one domain (w/o or w/ background) against
  the full gallery of unique test shapes: ``retrieval_examples_{nobg|bg}.png`` (+ a ``.json`` listing queries,
  retrieved objects and hits) in the results directory and a TensorBoard image.
* :func:`write_projector` -- TensorBoard embedding projector (``SummaryWriter.add_embedding``) of the test shapes and
  photos (L2-normalised, the space cosine retrieval uses) with ``modality``/``category``/``object`` metadata.
* :func:`write_benchmark_artefacts` -- all of the above for one benchmark (used by ``callbacks.run_benchmarks``).
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captionless3d.data.pointcloud import check_points, normalise_unit_sphere, random_subset
from captionless3d.errors import ConfigError, DataError
from captionless3d.evaluation._checks import as_embeddings, as_id_list, check_same_dim, factorize
from captionless3d.utils.atomic import atomic_open, atomic_write_bytes

__all__ = [
    "ARTEFACT_DEFAULTS",
    "GREEN",
    "NEUTRAL",
    "RED",
    "check_artefact_options",
    "render_point_thumbnails",
    "retrieval_grid",
    "tensorboard_writer",
    "topk_retrieval",
    "write_benchmark_artefacts",
    "write_png",
    "write_projector",
    "write_retrieval_examples",
]

log = logging.getLogger(__name__)

GREEN = (0, 170, 0)
RED = (220, 30, 30)
NEUTRAL = (110, 110, 110)
_FAR = np.array([175, 195, 225], dtype=np.float32)
_NEAR = np.array([15, 50, 130], dtype=np.float32)

# runner ``artefacts:`` options (configs/eval/*.yaml) and their defaults
ARTEFACT_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "projector": True,
    "projector_max_items": 3000,
    "retrieval_examples": 8,  # query photos per domain; 0 = no grid
    "top_k": 5,
    "thumbnail_size": 64,
    "thumbnail_points": 1024,
    "seed": 0,
}


def render_point_thumbnails(
    points: Any,
    size: int = 64,
    *,
    azimuth_deg: float = -35.0,
    elevation_deg: float = 25.0,
    splat: int = 2,
    margin: int = 2,
) -> np.ndarray:
    """Orthographic thumbnails of clouds ``(M, P, 3)`` (y up): ``(M, size, size, 3)`` uint8.

    Each cloud is centred and scaled into the unit sphere, turned by ``azimuth_deg`` about y and ``elevation_deg``
    about x, and every point is splatted as a ``splat x splat`` pixel square; the nearest point wins each pixel
    (z-buffer with ``scatter_reduce(amax)``, no Python loop over points or clouds).
    """
    pts = torch.as_tensor(np.asarray(points, dtype=np.float32))
    check_points(pts, "thumbnail points")
    if size < 4 or splat < 1 or margin < 0 or 2 * margin + splat >= size:
        raise ConfigError(f"artefacts.thumbnail_size: {size} px is too small for splat {splat} and margin {margin}")
    pts = normalise_unit_sphere(pts)
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    ry = torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(e), -math.sin(e)], [0.0, math.sin(e), math.cos(e)]])
    view = pts @ (rx @ ry).T  # camera on +z looking at the origin
    m, p, _ = view.shape
    scale = (size - 1 - 2 * margin - (splat - 1)) / 2.0
    px = ((view[..., 0] + 1) * scale + margin).round().long()
    py = ((1 - view[..., 1]) * scale + margin).round().long()
    offsets = torch.arange(splat)
    px = (px[..., None, None] + offsets[None, None, None, :]).expand(m, p, splat, splat).reshape(m, -1)
    py = (py[..., None, None] + offsets[None, None, :, None]).expand(m, p, splat, splat).reshape(m, -1)
    depth = view[..., 2][..., None, None].expand(m, p, splat, splat).reshape(m, -1)
    flat = (torch.arange(m)[:, None] * size * size + py.clamp(0, size - 1) * size + px.clamp(0, size - 1)).reshape(-1)
    zbuf = torch.full((m * size * size,), -math.inf).scatter_reduce(0, flat, depth.reshape(-1), reduce="amax")
    hit = torch.isfinite(zbuf).numpy()
    nearness = ((zbuf.clamp(-1, 1) + 1) / 2).numpy()[:, None]
    image = np.full((m * size * size, 3), 255, dtype=np.uint8)
    image[hit] = np.round(_FAR + (_NEAR - _FAR) * nearness[hit]).astype(np.uint8)
    return image.reshape(m, size, size, 3)


def topk_retrieval(
    query_emb: Any, gallery_emb: Any, query_ids: Any, gallery_ids: Any, k: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` gallery items of each query by cosine similarity.

    ``query_emb (Q, D)``, ``gallery_emb (G, D)``, ids of the shape each query shows / each gallery item is.
    Returns ``indices (Q, k')`` int64 into the gallery (best first, ties to the smaller index), ``hits (Q, k')`` bool
    (gallery id == query id) and ``scores (Q, k')`` float32 cosine similarities, with ``k' = min(k, G)``.
    """
    q = as_embeddings(query_emb, "query_emb")
    g = as_embeddings(gallery_emb, "gallery_emb")
    check_same_dim(q, "query_emb", g, "gallery_emb")
    qid = as_id_list(query_ids, "query_ids")
    gid = as_id_list(gallery_ids, "gallery_ids")
    if len(qid) != q.shape[0] or len(gid) != g.shape[0]:
        raise DataError(f"topk_retrieval: {len(qid)} query ids for {q.shape[0]} queries, {len(gid)} gallery ids for "
                        f"{g.shape[0]} gallery items")
    if k < 1:
        raise ConfigError(f"artefacts.top_k: expected a positive integer, got {k}")
    qc, gc = factorize(qid, gid)
    sim = q @ g.T
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, : min(k, g.shape[0])]
    return order, gc[order] == qc[:, None], torch.gather(sim, 1, order)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).resize((size, size), Image.BILINEAR))


def retrieval_grid(
    photos: np.ndarray, thumbnails: np.ndarray, hits: Any, *, frame: int = 3, pad: int = 4, gap: int = 10
) -> tuple[np.ndarray, list[list[tuple[int, int, int, int]]]]:
    """Compose ``photos (Q, H, W, 3)`` and their retrieved shapes ``thumbnails (Q, k, S, S, 3)`` (uint8) into one image.

    Row ``q``: the photo resized to ``S x S`` with a grey frame, a ``gap``, then the ``k`` thumbnails, each inside a
    ``frame``-pixel frame, :data:`GREEN` when ``hits[q, j]`` else :data:`RED`. Returns the ``(H_img, W_img, 3)``
    uint8 image and ``boxes[q][c] = (x0, y0, x1, y1)`` (inclusive) of every framed cell (``c = 0`` the photo,
    ``c = 1 + j`` the j-th retrieved shape).
    """
    photos = np.asarray(photos)
    thumbs = np.asarray(thumbnails)
    marks = np.asarray(hits.cpu() if isinstance(hits, torch.Tensor) else hits, dtype=bool)
    if thumbs.ndim != 5 or thumbs.shape[2] != thumbs.shape[3] or thumbs.shape[4] != 3:
        raise DataError(f"thumbnails: expected (Q, k, S, S, 3), got {thumbs.shape}")
    nq, k, s = thumbs.shape[:3]
    if photos.ndim != 4 or photos.shape[0] != nq or photos.shape[3] != 3:
        raise DataError(f"photos: expected ({nq}, H, W, 3) to match the thumbnails, got {photos.shape}")
    if marks.shape != (nq, k):
        raise DataError(f"hits: expected shape {(nq, k)}, got {marks.shape}")
    cell = s + 2 * frame
    width = 2 * pad + gap + (k + 1) * cell + k * pad
    height = pad + nq * (cell + pad)
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    boxes: list[list[tuple[int, int, int, int]]] = []
    for qi in range(nq):
        y0 = pad + qi * (cell + pad)
        row = []
        tiles = [(_resize(photos[qi], s), NEUTRAL)] + [
            (thumbs[qi, j], GREEN if marks[qi, j] else RED) for j in range(k)
        ]
        for c, (tile, colour) in enumerate(tiles):
            x0 = pad + c * (cell + pad) + (gap if c > 0 else 0)
            image[y0 : y0 + cell, x0 : x0 + cell] = colour
            image[y0 + frame : y0 + frame + s, x0 + frame : x0 + frame + s] = tile
            row.append((x0, y0, x0 + cell - 1, y0 + cell - 1))
        boxes.append(row)
    return image, boxes


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an ``(H, W, 3)`` uint8 image as PNG, atomically."""
    from PIL import Image

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(target, "wb") as handle:
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(handle, format="PNG")
    return target


def _read_sorted(array: Any, index: np.ndarray) -> np.ndarray:
    """``array[index]`` read in ascending index order (memmaps, lazy readers), returned in ``index`` order."""
    index = np.asarray(index, dtype=np.int64)
    unique, inverse = np.unique(index, return_inverse=True)
    return np.asarray(array[unique])[inverse]


def write_retrieval_examples(
    directory: str | Path,
    collection: Any,
    embeddings: Mapping[str, Any],
    domain: str,
    *,
    n_queries: int = 8,
    top_k: int = 5,
    thumbnail_size: int = 64,
    thumbnail_points: int = 1024,
    seed: int = 0,
    writer: Any = None,
    tag: str | None = None,
    step: int = 0,
) -> Path | None:
    """Retrieval examples of one photo domain (``nobg`` = photo x mask on black, ``bg`` = raw photo).

    ``embeddings``: the ``_embeddings`` record of :func:`runner.evaluate_encoder` (``image_emb[domain] (Q, D)``,
    ``pair_objects``, ``pair_photos``, ``pair_shape_ids``, ``shape_emb``, ``gallery_objects``,
    ``gallery_shape_ids``). ``n_queries`` photos are drawn with a seeded permutation; each ranks the full gallery of
    unique test shapes. Returns the PNG path, or ``None`` when the collection has no photos or the domain was not
    evaluated.
    """
    if domain not in ("nobg", "bg"):
        raise DataError(f"retrieval examples: domain must be 'nobg' or 'bg', got {domain!r}")
    image_emb = embeddings.get("image_emb", {}).get(domain)
    photos = getattr(collection, "photos", None)
    if image_emb is None or photos is None or n_queries <= 0:
        return None
    pair_objects = np.asarray(embeddings["pair_objects"])
    pair_photos = np.asarray(embeddings["pair_photos"])
    gallery_objects = np.asarray(embeddings["gallery_objects"])
    test_index = np.asarray(embeddings["test_index"])
    position = {int(o): i for i, o in enumerate(test_index)}
    gallery_emb = embeddings["shape_emb"][torch.as_tensor([position[int(o)] for o in gallery_objects])]
    generator = torch.Generator().manual_seed(int(seed))
    queries = torch.randperm(len(pair_objects), generator=generator)[: int(n_queries)].sort().values.numpy()
    order, hits, _ = topk_retrieval(
        image_emb[torch.from_numpy(queries)], gallery_emb, np.asarray(embeddings["pair_shape_ids"])[queries],
        np.asarray(embeddings["gallery_shape_ids"]), k=int(top_k),
    )
    objects = pair_objects[queries]
    query_photos = np.stack([np.asarray(photos[int(o)])[int(k)] for o, k in zip(objects, pair_photos[queries])])
    if domain == "nobg":
        masks = getattr(collection, "masks", None)
        if masks is None:
            raise DataError(f"{getattr(collection, 'name', 'collection')}: photos without masks, cannot show 'w/o bg'")
        query_masks = np.stack([np.asarray(masks[int(o)])[int(k)] for o, k in zip(objects, pair_photos[queries])])
        query_photos = query_photos * query_masks[..., None].astype(np.uint8)
    retrieved = gallery_objects[order.numpy()]  # (n, k) global object indices
    clouds = torch.from_numpy(_read_sorted(collection.points, retrieved.reshape(-1)).astype(np.float32, copy=False))
    clouds = random_subset(clouds, min(int(thumbnail_points), clouds.shape[1]), generator)
    thumbs = render_point_thumbnails(clouds, int(thumbnail_size)).reshape(*retrieved.shape, thumbnail_size,
                                                                          thumbnail_size, 3)
    image, _ = retrieval_grid(query_photos, thumbs, hits)
    directory = Path(directory)
    path = write_png(image, directory / f"retrieval_examples_{domain}.png")
    ids = list(getattr(collection, "object_ids", [str(i) for i in range(len(collection.labels))]))
    categories = list(collection.categories)
    labels = np.asarray(collection.labels)
    record = [
        {
            "query_pair": int(q),
            "query_object": ids[int(o)],
            "query_photo": int(p),
            "category": categories[int(labels[o])],
            "retrieved": [ids[int(r)] for r in row],
            "retrieved_categories": [categories[int(labels[r])] for r in row],
            "hits": [bool(h) for h in hit_row],
        }
        for q, o, p, row, hit_row in zip(queries, objects, pair_photos[queries], retrieved, hits.tolist())
    ]
    atomic_write_bytes(directory / f"retrieval_examples_{domain}.json",
                       json.dumps({"domain": domain, "gallery": "unique test shapes", "top_k": int(top_k),
                                   "queries": record}, indent=1).encode("utf-8"))
    if writer is not None:
        writer.add_image(tag or f"retrieval_examples/{domain}", image, global_step=step, dataformats="HWC")
    return path


def write_projector(
    writer: Any,
    collection: Any,
    embeddings: Mapping[str, Any],
    *,
    tag: str,
    max_items: int = 3000,
    seed: int = 0,
    step: int = 0,
) -> int:
    """Add the test shapes (and, when evaluated, photos w/o and w/ background) to the TensorBoard projector.

    Rows are L2-normalised; metadata columns ``modality`` (``shape`` / ``photo w/o bg`` / ``photo w/ bg``),
    ``category``, ``object``. More than ``max_items`` rows are subsampled with a seeded permutation. Returns the
    number of rows written.
    """
    ids = list(getattr(collection, "object_ids", [str(i) for i in range(len(collection.labels))]))
    categories = list(collection.categories)
    labels = np.asarray(collection.labels)
    blocks = [(embeddings["shape_emb"], "shape", np.asarray(embeddings["test_index"]))]
    for domain, label in (("nobg", "photo w/o bg"), ("bg", "photo w/ bg")):
        if domain in embeddings.get("image_emb", {}):
            blocks.append((embeddings["image_emb"][domain], label, np.asarray(embeddings["pair_objects"])))
    matrix = torch.cat([as_embeddings(b[0], f"projector {b[1]}") for b in blocks])
    rows = [[label, categories[int(labels[o])], ids[int(o)]] for _, label, objs in blocks for o in objs]
    if len(rows) > max_items > 0:
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(int(seed)))[:max_items].sort().values
        matrix = matrix[keep]
        rows = [rows[i] for i in keep.tolist()]
    writer.add_embedding(matrix, metadata=rows, metadata_header=["modality", "category", "object"], tag=tag,
                         global_step=step)
    return len(rows)


def check_artefact_options(options: Mapping[str, Any] | None, key: str = "runner.artefacts") -> dict[str, Any]:
    """``options`` merged over :data:`ARTEFACT_DEFAULTS`; :class:`ConfigError` naming ``key`` for unknown keys."""
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(ARTEFACT_DEFAULTS))
    if unknown:
        raise ConfigError(f"{key}: unknown option(s) {unknown}; valid: {', '.join(sorted(ARTEFACT_DEFAULTS))}")
    return {**ARTEFACT_DEFAULTS, **opts}


def write_benchmark_artefacts(
    directory: str | Path,
    name: str,
    collection: Any,
    embeddings: Mapping[str, Any] | None,
    *,
    writer: Any = None,
    step: int = 0,
    options: Mapping[str, Any] | None = None,
    confusion_png: str | Path | None = None,
) -> dict[str, Path]:
    """Every artefact of benchmark ``name`` into ``directory`` (PNG/JSON) and ``writer`` (TensorBoard, optional):
    retrieval example grids per domain, the embedding projector and the confusion-matrix image.
    Tags: ``test/<name>/retrieval_examples_{nobg|bg}``, ``test/<name>/confusion_matrix``, projector
    ``test/<name>/shapes_and_photos``. Returns the files written."""
    opts = check_artefact_options(options, f"eval.{name}.runner.artefacts")
    written: dict[str, Path] = {}
    if not opts["enabled"]:
        return written
    if embeddings is not None:
        for domain in ("nobg", "bg"):
            path = write_retrieval_examples(
                directory, collection, embeddings, domain, n_queries=int(opts["retrieval_examples"]),
                top_k=int(opts["top_k"]), thumbnail_size=int(opts["thumbnail_size"]),
                thumbnail_points=int(opts["thumbnail_points"]), seed=int(opts["seed"]), writer=writer,
                tag=f"test/{name}/retrieval_examples_{domain}", step=step,
            )
            if path is not None:
                written[f"retrieval_examples_{domain}"] = path
        if writer is not None and opts["projector"] and embeddings.get("shape_emb") is not None:
            write_projector(writer, collection, embeddings, tag=f"test/{name}/shapes_and_photos",
                            max_items=int(opts["projector_max_items"]), seed=int(opts["seed"]), step=step)
    if writer is not None and confusion_png is not None and Path(confusion_png).is_file():
        from PIL import Image

        with Image.open(confusion_png) as img:
            writer.add_image(f"test/{name}/confusion_matrix", np.asarray(img.convert("RGB")), global_step=step,
                             dataformats="HWC")
    return written


def tensorboard_writer(loggers: Sequence[Any] | None, fallback_dir: str | Path | None) -> tuple[Any, bool]:
    """The SummaryWriter of the first TensorBoard logger in ``loggers``; else a new one in ``fallback_dir`` (owned:
    the caller closes it); else ``None``. Returns ``(writer, owned)``."""
    for logger in loggers or ():
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_embedding") and hasattr(experiment, "add_image"):
            return experiment, False
    if fallback_dir is None:
        return None, False
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        log.warning("tensorboard is not installed; evaluation artefacts go to PNG files only")
        return None, False
    return SummaryWriter(str(fallback_dir)), True
