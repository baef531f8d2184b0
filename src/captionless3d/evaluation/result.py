"""What evaluating one model (or the teacher oracle) on one benchmark returns: a typed record, not a dict of
metrics mixed with side channels."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["BenchmarkResult"]


@dataclass
class BenchmarkResult:
    """The outcome of one benchmark.

    Attributes:
        metrics: ``{metric key: percent}`` in :mod:`captionless3d.evaluation.report`'s key convention.
        chance: ``{metric key: percent}``: the chance level of every metric that has one, keyed exactly like
            ``metrics`` (:mod:`.chance`).
        sizes: ``{"categories", "gallery_shapes", "photo_shape_pairs"}`` of the evaluated split.
        per_category: ``{protocol key: {category: value | {metric: value}}}`` (percent): zero-shot recall per class
            (``zeroshot/top1``, ...) and the retrieval breakdowns (``retrieval/{nobg|bg}/{paper|gallery}``).
        selection: what the linear probe / fine-tune chose on the validation split (JSON-safe).
        confusion_matrix: zero-shot confusion matrix ``(C, C)`` int64, rows = truth (``None`` without zero-shot).
        embeddings: the parts :mod:`.artefacts` draws (test shape embeddings, photo embeddings per domain, gallery
            ids); ``None`` unless asked for (``return_embeddings=True``).
    """

    metrics: dict[str, float]
    chance: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    per_category: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    confusion_matrix: torch.Tensor | None = None
    embeddings: dict[str, Any] | None = None
