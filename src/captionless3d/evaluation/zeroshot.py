"""Zero-shot classification from embeddings (docs/method.md, Evaluation protocols), numbers in percent.

Prediction = arg-max cosine between an L2-normalised point embedding and L2-normalised class (prompt) embeddings; the
logit scale and bias of the training loss do not change the ranking, so they are not needed here.

* ``top1`` / ``top5``: overall (instance) accuracy, as reported by the paper and ULIP. Computed with torchmetrics
  ``MulticlassAccuracy(top_k=k, average="micro")``. With fewer than 5 classes, top-5 is computed with
  ``k = C`` (so it is trivially 100 %); the ``k`` actually used is returned as ``top5_k``.
* ``class_mean_top1``: mean over the classes **present in ``labels``** of the per-class recall (diagonal of the
  confusion matrix / row sum). Classes without test samples are left out of the mean (their per-class value is NaN),
  so adding an unused class name to the prompt set changes predictions but never adds a 0/0 term.
* ``confusion_matrix``: ``(C, C)`` int64, rows = true class, columns = predicted class (torchmetrics
  ``MulticlassConfusionMatrix``).

Ties between class scores are resolved by ``torch.topk``/``argmax`` (implementation-defined; they essentially never
occur with float embeddings).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from captionless3d.errors import DataError
from captionless3d.evaluation._checks import as_embeddings, check_same_dim
from captionless3d.utils.atomic import atomic_open

__all__ = ["class_embeddings", "zero_shot_metrics", "save_confusion_png"]


def class_embeddings(texts_emb: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Average prompt templates into one embedding per class, as ULIP/OpenShape do.

    ``texts_emb`` is ``(C, T, D)`` (T templates per class; ``(C, D)`` is accepted as T = 1). Each template embedding is
    L2-normalised, the T are averaged, and the mean is L2-normalised again. Returns float32 ``(C, D)``.
    """
    if isinstance(texts_emb, np.ndarray):
        texts_emb = torch.from_numpy(texts_emb)
    if not isinstance(texts_emb, torch.Tensor):
        raise DataError(f"texts_emb: expected a tensor, got {type(texts_emb).__name__}")
    if texts_emb.ndim == 2:
        texts_emb = texts_emb[:, None, :]
    if texts_emb.ndim != 3:
        raise DataError(f"texts_emb: expected shape (C, T, D), got {tuple(texts_emb.shape)}")
    c, t, d = texts_emb.shape
    if c == 0 or t == 0:
        raise DataError(f"texts_emb: needs at least one class and one template, got shape {(c, t, d)}")
    flat = as_embeddings(texts_emb.reshape(c * t, d), "texts_emb (flattened to C*T rows)")
    mean = flat.reshape(c, t, d).mean(dim=1)
    if bool((mean.norm(dim=1) == 0).any()):
        raise DataError("texts_emb: template embeddings of a class cancel out (mean is the zero vector)")
    return F.normalize(mean, dim=1)


def zero_shot_metrics(
    point_emb: torch.Tensor | np.ndarray,
    class_emb: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
) -> dict[str, Any]:
    """Zero-shot accuracy of ``point_emb (N, D)`` against ``class_emb (C, D)`` with integer ``labels (N,)`` in [0, C).

    Returns ``{"top1", "top5", "class_mean_top1"}`` (floats, percent), ``"top5_k"`` (int, ``min(5, C)``),
    ``"num_samples"`` (int), ``"per_class_top1"`` (float tensor ``(C,)`` in percent, NaN for classes without samples)
    and ``"confusion_matrix"`` (int64 tensor ``(C, C)``, rows = truth). Both embedding sets are L2-normalised here.
    """
    points = as_embeddings(point_emb, "point_emb")
    classes = as_embeddings(class_emb, "class_emb")
    check_same_dim(points, "point_emb", classes, "class_emb")
    labels_t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if labels_t.ndim != 1 or labels_t.shape[0] != points.shape[0]:
        raise DataError(f"labels: expected shape ({points.shape[0]},) to match point_emb, got {tuple(labels_t.shape)}")
    if labels_t.dtype.is_floating_point or labels_t.dtype == torch.bool or labels_t.is_complex():
        raise DataError(f"labels: expected integer class indices, got dtype {labels_t.dtype}")
    labels_t = labels_t.long().to(points.device)
    n_cls = classes.shape[0]
    lo, hi = int(labels_t.min()), int(labels_t.max())
    if lo < 0 or hi >= n_cls:
        raise DataError(f"labels: values must lie in [0, {n_cls}) (one per class embedding), got range [{lo}, {hi}]")

    logits = points @ classes.T  # cosine similarities (N, C)
    k5 = min(5, n_cls)
    top1 = MulticlassAccuracy(num_classes=n_cls, top_k=1, average="micro").to(points.device)(logits, labels_t)
    top5 = MulticlassAccuracy(num_classes=n_cls, top_k=k5, average="micro").to(points.device)(logits, labels_t)
    cm = MulticlassConfusionMatrix(num_classes=n_cls).to(points.device)(logits, labels_t).long().cpu()
    support = cm.sum(dim=1)
    per_class = torch.full((n_cls,), float("nan"))
    present = support > 0
    per_class[present] = 100.0 * cm.diagonal()[present].double().div(support[present].double()).float()
    return {
        "top1": 100.0 * float(top1),
        "top5": 100.0 * float(top5),
        "class_mean_top1": float(per_class[present].double().mean()),
        "top5_k": k5,
        "num_samples": int(points.shape[0]),
        "per_class_top1": per_class,
        "confusion_matrix": cm,
    }


def save_confusion_png(
    cm: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    *,
    normalize: bool = True,
    cell: int = 14,
    title: str | None = None,
) -> Path:
    """Write a confusion-matrix heatmap PNG (PIL only) with class names on both axes. Rows = truth, columns = predicted.

    ``normalize=True`` colours each row by its share of the row (recall); rows without samples stay white. The file is
    written atomically. Returns the path.
    """
    from PIL import Image, ImageDraw, ImageFont

    m = np.asarray(cm.cpu() if isinstance(cm, torch.Tensor) else cm, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise DataError(f"confusion matrix: expected a non-empty square (C, C) array, got shape {m.shape}")
    names = [str(n) for n in class_names]
    if len(names) != m.shape[0]:
        raise DataError(f"class_names: has {len(names)} names but the confusion matrix is {m.shape[0]}x{m.shape[0]}")
    if not np.isfinite(m).all() or (m < 0).any():
        raise DataError("confusion matrix: entries must be finite and non-negative")
    if normalize:
        rows = m.sum(axis=1, keepdims=True)
        val = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    else:
        val = m / m.max() if m.max() > 0 else m

    font = ImageFont.load_default()
    c = m.shape[0]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(s: str) -> tuple[int, int]:
        x0, y0, x1, y1 = probe.textbbox((0, 0), s, font=font)
        return int(x1 - x0), int(y1 - y0)

    label_w = max(text_size(n)[0] for n in names) + 6
    label_h = max(text_size(n)[1] for n in names)
    cell = max(cell, label_h + 2)
    title_h = (label_h + 8) if title else 0
    left, top = label_w, label_w + title_h  # column names are drawn rotated, so they need label_w of height
    width, height = left + c * cell + 2, top + c * cell + 2
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((4, 2), title, fill="black", font=font)

    # white -> dark blue colour ramp
    for i in range(c):
        for j in range(c):
            v = float(val[i, j])
            colour = (int(255 * (1 - v) + 8 * v), int(255 * (1 - v) + 48 * v), int(255 * (1 - v) + 107 * v))
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(220, 220, 220))
    for i, n in enumerate(names):  # row labels (truth)
        w, h = text_size(n)
        draw.text((left - w - 3, top + i * cell + (cell - h) // 2 - 1), n, fill="black", font=font)
    for j, n in enumerate(names):  # column labels (predicted), rotated 90 degrees
        w, h = text_size(n)
        tile = Image.new("RGB", (w + 2, h + 4), "white")
        ImageDraw.Draw(tile).text((1, 0), n, fill="black", font=font)
        tile = tile.rotate(90, expand=True)
        img.paste(tile, (left + j * cell + (cell - tile.width) // 2, top - tile.height - 3))

    target = Path(path)
    with atomic_open(target, "wb") as handle:
        img.save(handle, format="PNG")
    return target
