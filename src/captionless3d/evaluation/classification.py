"""Supervised classification metrics from logits (linear probe, fine-tune), numbers in percent.

* ``top1``: overall (instance) accuracy, torchmetrics ``MulticlassAccuracy(top_k=1, average="micro")``.
* ``class_mean_top1`` ("mAcc" in the ScanObjectNN / PointNeXt tables): mean per-class recall over the classes
  **present in ``labels``**, from torchmetrics ``MulticlassConfusionMatrix`` (the same definition as
  :func:`captionless3d.evaluation.zeroshot.zero_shot_metrics`, so a class without test samples never adds a 0/0 term).
* ``per_class_top1``: ``(C,)`` float tensor in percent, NaN for classes without samples; ``confusion_matrix``:
  ``(C, C)`` int64, rows = true class.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from captionless3d.errors import DataError

__all__ = ["as_labels", "classification_metrics"]


def as_labels(labels: Any, n: int, num_classes: int, name: str) -> torch.Tensor:
    """``labels`` as an int64 CPU tensor ``(n,)`` with values in ``[0, num_classes)``; :class:`DataError` otherwise."""
    t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if t.ndim != 1 or t.shape[0] != n:
        raise DataError(f"{name}: expected shape ({n},), got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise DataError(f"{name}: expected integer class indices, got dtype {t.dtype}")
    t = t.long().cpu()
    if n and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise DataError(f"{name}: values must lie in [0, {num_classes}), got range [{int(t.min())}, {int(t.max())}]")
    return t


def classification_metrics(logits: torch.Tensor, labels: Any) -> dict[str, Any]:
    """Metrics of class scores ``logits (N, C)`` (any monotone score; arg-max = prediction) against ``labels (N,)``.

    Returns ``{"top1", "class_mean_top1"}`` (floats, percent), ``"num_samples"`` (int), ``"per_class_top1"`` (``(C,)``
    float, percent, NaN where a class has no samples) and ``"confusion_matrix"`` (``(C, C)`` int64, rows = truth).
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise DataError(f"logits: expected a non-empty (N, C) tensor, got {shape}")
    logits = logits.detach().float().cpu()
    if not torch.isfinite(logits).all():
        raise DataError("logits: contain NaN/Inf (the classifier diverged)")
    n, c = logits.shape
    y = as_labels(labels, n, c, "labels")
    top1 = MulticlassAccuracy(num_classes=c, top_k=1, average="micro")(logits, y)
    cm = MulticlassConfusionMatrix(num_classes=c)(logits, y).long()
    support = cm.sum(dim=1)
    present = support > 0
    per_class = torch.full((c,), float("nan"))
    per_class[present] = (100.0 * cm.diagonal()[present].double() / support[present].double()).float()
    return {
        "top1": 100.0 * float(top1),
        "class_mean_top1": float(per_class[present].double().mean()),
        "num_samples": int(n),
        "per_class_top1": per_class,
        "confusion_matrix": cm,
    }
