"""The teacher-oracle row: what a student that reproduced its distillation targets exactly would reach.

The student is trained to map a shape's point cloud onto the teacher's embedding of one of the shape's renders. The
oracle replaces the student's shape embedding with the teacher's own mean render embedding of the shape (the
L2-normalised mean over its views), and runs the same zero-shot and retrieval protocols on it. It exists only for
collections that have renders (the synthetic world, ShapeNet-style collections); ModelNet40, ScanObjectNN and Pix3D
have none.

*Distillation efficiency* = student metric / oracle metric, in percent, for zero-shot top-1 and full-gallery
image->shape R@1 (w/o and w/ background): how much of what the teacher knows about a shape the student recovered
from its geometry. See docs/student_gap.md.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from captionless3d.errors import DataError
from captionless3d.evaluation.runner import embedding_metrics

ORACLE_NAME = "teacher-oracle"
ORACLE_PROTOCOLS = ("zeroshot", "retrieval")

#: (student metric, efficiency key) pairs; the efficiency is student / oracle in percent.
EFFICIENCY_METRICS: tuple[tuple[str, str], ...] = (
    ("zeroshot/top1", "efficiency/zeroshot_top1"),
    ("retrieval/nobg/gallery/i2s_r1", "efficiency/nobg/gallery_i2s_r1"),
    ("retrieval/bg/gallery/i2s_r1", "efficiency/bg/gallery_i2s_r1"),
)


def has_renders(features: Any) -> bool:
    """Whether the feature store holds render-view embeddings (``view_emb`` with at least one view)."""
    view_emb = getattr(features, "view_emb", None)
    return view_emb is not None and len(view_emb.shape) == 3 and int(view_emb.shape[1]) > 0


def oracle_shape_embeddings(view_emb: Any, index: np.ndarray) -> torch.Tensor:
    """``(M, D)`` float32: the L2-normalised mean of the ``(M, V, D)`` view embeddings of the objects in ``index``."""
    views = torch.from_numpy(np.asarray(view_emb[np.asarray(index, dtype=np.int64)], dtype=np.float32))
    if views.ndim != 3 or views.shape[1] == 0:
        raise DataError(f"teacher oracle: needs view embeddings (M, V, D) with V > 0, got {tuple(views.shape)}")
    if not torch.isfinite(views).all():
        raise DataError("teacher oracle: the feature store's view embeddings contain non-finite values")
    return F.normalize(views.mean(dim=1), dim=-1)


def evaluate_teacher_oracle(
    collection: Any,
    features: Any,
    *,
    split: str = "test",
    protocols: Sequence[str] = ORACLE_PROTOCOLS,
    templates: Sequence[str] = ("single",),
    teacher: Any = None,
    paper_batch_size: int = 128,
    paper_seed: int = 0,
    **_ignored: Any,
) -> dict[str, Any] | None:
    """The oracle's metrics on ``split`` (the keys of :mod:`.report`, percent), or ``None`` when the
    collection has no renders or the split is empty. Accepts a benchmark's whole ``runner`` dict: options that only
    concern a point encoder (``n_points``, ``batch_size``, ``linear_probe``, ...) are ignored, and only the
    zero-shot and retrieval protocols run."""
    if not has_renders(features):
        return None
    index = np.asarray(collection.indices(split), dtype=np.int64)
    if len(index) == 0:
        return None
    protocols = [p for p in protocols if p in ORACLE_PROTOCOLS]
    if not protocols:
        return None
    shape_emb = oracle_shape_embeddings(features.view_emb, index)
    position = {int(g): i for i, g in enumerate(index)}

    def pair_embeddings(pair_objects: np.ndarray) -> torch.Tensor:
        return shape_emb[torch.as_tensor([position[int(g)] for g in pair_objects], dtype=torch.long)]

    return embedding_metrics(
        shape_emb, pair_embeddings, collection, features, index, protocols=protocols, templates=templates,
        teacher=teacher, paper_batch_size=paper_batch_size, paper_seed=paper_seed,
    ).metrics


def distillation_efficiency(student: Mapping[str, Any], oracle: Mapping[str, Any] | None) -> dict[str, float]:
    """``{efficiency key: 100 * student / oracle}`` for :data:`EFFICIENCY_METRICS` present in both (an oracle value
    of 0 gives no entry: the ratio is undefined)."""
    if not oracle:
        return {}
    out: dict[str, float] = {}
    for metric, key in EFFICIENCY_METRICS:
        s, o = student.get(metric), oracle.get(metric)
        if isinstance(s, (int, float)) and isinstance(o, (int, float)) and o > 0:
            out[key] = 100.0 * float(s) / float(o)
    return out


def evaluate_oracles(benchmarks: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{benchmark name: oracle metrics}`` for every benchmark (``pipeline.Benchmark``) whose collection has
    renders."""
    out: dict[str, dict[str, Any]] = {}
    for name, bench in benchmarks.items():
        runner = {k: v for k, v in dict(bench.runner).items() if k != "artefacts"}
        metrics = evaluate_teacher_oracle(bench.collection, bench.features, teacher=getattr(bench, "teacher", None),
                                          **runner)
        if metrics is not None:
            out[name] = metrics
    return out
