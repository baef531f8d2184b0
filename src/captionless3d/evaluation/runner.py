"""Evaluate a point encoder on a collection's held-out split: zero-shot classification and photo↔shape retrieval.

Protocol (written into every results file):
- zero-shot: one embedding per test object from a seeded random subset of ``n_points`` points (no rotation), class
  text embeddings from the feature store's prompt template; overall top-1/top-5 and class-mean top-1.
- retrieval: every (photo, shape) pair of the test split, like Pix3D entries. "w/ background" = the raw photo,
  "w/o background" = photo × mask on black. Each pair gets its own random point sample of its shape (as the paper's
  Pix3D loader). Paper protocol: shuffled batches of 128, seed 0, exact-pair hit. Full gallery: each photo ranks all
  unique test shapes (and each shape all photos); any photo of the right shape counts.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from captionless3d.data.pointcloud import normalize_unit_sphere, random_subset
from captionless3d.errors import DataError
from captionless3d.evaluation.report import gallery_keys, paper_keys, zeroshot_keys
from captionless3d.evaluation.retrieval import full_gallery_retrieval, paper_batch_retrieval
from captionless3d.evaluation.zeroshot import zero_shot_metrics

PROTOCOL = (
    "checkpoint selected on the validation split (val/loss); test split used only here. "
    "zero-shot: single template, overall top-1/top-5. "
    "retrieval paper protocol: (photo, shape) pairs shuffled with seed 0, batches of 128, exact-pair hit "
    "(a duplicate of the right shape in the batch is a miss). "
    "full gallery: unique test shapes, a photo of / the right shape counts as a hit."
)


@torch.no_grad()
def embed_points(
    encoder: nn.Module,
    points: np.ndarray,
    *,
    n_points: int,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Embed clouds ``(M, P, 3)`` with a seeded random subset of ``n_points`` each. Returns ``(M, D)`` float32 (CPU)."""
    was_training = encoder.training
    encoder.eval()
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    try:
        for start in range(0, len(points), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(points[start : start + batch_size], dtype=np.float32))
            chunk = normalize_unit_sphere(random_subset(chunk, n_points, generator))
            outputs.append(encoder(chunk.to(device)).float().cpu())
    finally:
        encoder.train(was_training)
    embeddings = torch.cat(outputs)
    if not torch.isfinite(embeddings).all():
        raise DataError("the point encoder produced non-finite embeddings on the evaluation split")
    return embeddings


def _as_tensor(array: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


def evaluate_encoder(
    encoder: nn.Module,
    collection: Any,
    features: Any,
    *,
    split: str = "test",
    n_points: int = 2048,
    batch_size: int = 64,
    seed: int = 0,
    paper_batch_size: int = 128,
    paper_seed: int = 0,
    protocols: Sequence[str] = ("zeroshot", "retrieval"),
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """All metrics of one encoder on ``split`` of ``collection``, in percent, with the key naming of ``report``.

    Retrieval runs when the collection has photos (``features.photo_emb`` has K > 0 photos per object). Entries that
    share a shape (Pix3D: ``collection.shape_index``) are one gallery item in the full-gallery protocol.
    """
    unknown = sorted(set(protocols) - {"zeroshot", "retrieval"})
    if unknown:
        raise DataError(f"unknown evaluation protocols {unknown}; known: zeroshot, retrieval")
    index = collection.indices(split)
    if len(index) == 0:
        raise DataError(f"evaluation split '{split}' of {collection.name} is empty")
    categories: Sequence[str] = collection.categories
    all_labels = np.asarray(collection.labels)
    shape_of = np.asarray(getattr(collection, "shape_index", np.arange(len(all_labels))), dtype=np.int64)
    shape_emb = embed_points(encoder, collection.points[index], n_points=n_points, batch_size=batch_size, seed=seed, device=device)
    prompt_emb = _as_tensor(features.prompt_emb)
    if prompt_emb.shape[1] != shape_emb.shape[1]:
        raise DataError(
            f"encoder outputs {shape_emb.shape[1]}-d embeddings but the teacher's text embeddings are "
            f"{prompt_emb.shape[1]}-d: the checkpoint was trained for another teacher"
        )
    metrics: dict[str, Any] = {"_chance": {"zeroshot/top1": 100.0 / len(categories)}}
    if "zeroshot" in protocols:
        zs = zero_shot_metrics(shape_emb, prompt_emb, torch.from_numpy(all_labels[index].astype(np.int64)))
        metrics.update(zeroshot_keys(zs))
        metrics["_confusion_matrix"] = zs.get("confusion_matrix")

    n_photos = int(features.photo_emb.shape[1])
    if "retrieval" in protocols and n_photos > 0:
        pair_objects = np.repeat(index, n_photos)  # global object index of each (photo, shape) pair
        pair_categories = [categories[c] for c in all_labels[pair_objects]]
        # each pair gets its own random point sample of its shape, as the paper's Pix3D loader
        pair_shape_emb = embed_points(
            encoder, collection.points[pair_objects], n_points=n_points, batch_size=batch_size, seed=seed + 1, device=device
        )
        # full gallery: one item per unique shape (the first entry that shows it)
        shapes, first = np.unique(shape_of[index], return_index=True)
        gallery_emb = shape_emb[torch.from_numpy(first)]
        gallery_categories = [categories[c] for c in all_labels[index[first]]]
        pair_ids = torch.from_numpy(shape_of[pair_objects])
        gallery_ids = torch.from_numpy(shapes)
        for domain, array in (("nobg", features.photo_masked_emb), ("bg", features.photo_emb)):
            image_emb = _as_tensor(np.asarray(array[index]).reshape(len(index) * n_photos, -1))
            paper = paper_batch_retrieval(
                image_emb, pair_shape_emb, batch_size=paper_batch_size, seed=paper_seed, categories=pair_categories
            )
            metrics.update(paper_keys(paper, domain))
            gallery = full_gallery_retrieval(
                image_emb, pair_ids, gallery_emb, gallery_ids, categories=pair_categories, shape_categories=gallery_categories
            )
            metrics.update(gallery_keys(gallery, domain))
        metrics["_chance"].update({
            "retrieval/paper/top1": 100.0 / min(paper_batch_size, len(pair_objects)),
            "retrieval/gallery/i2s_r1": 100.0 / len(shapes),
        })
    return metrics
