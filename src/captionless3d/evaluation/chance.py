"""Chance levels: the expected value of each metric for a random ranking or a random classifier, exactly.

Computed once, where a benchmark is evaluated (:func:`captionless3d.evaluation.runner.embedding_metrics`), from the
sizes of the evaluated split, and keyed exactly like the metrics (:mod:`.report`'s key convention), so a table can
put a ``chance`` row under any metric column. Formulas (:data:`CHANCE_METHOD`, also in ``docs/method.md``):

- zero-shot top-k: ``min(k, C) / C`` over the ``C`` classes of the classifier; class-mean top-1, linear probe and
  fine-tune top-1: ``1 / C``;
- paper protocol top-k: ``Σ_batches min(k, b) / n`` over the shuffled batches of ``b ≤ paper_batch_size`` of the
  ``n`` (photo, shape) pairs;
- full gallery I→S R@k: ``P(hit) = 1 − C(N−1, k) / C(N, k) = min(k, N) / N`` over ``N`` gallery shapes; S→I R@k:
  ``1 − C(Q−K, k) / C(Q, k)`` for ``K`` photos per shape among ``Q`` photos; mAP: the expected average precision of
  a random ranking with ``R`` relevant of ``N`` items, ``(R−1)/(N−1) + (N−R)/(N(N−1))·H_N``;
- same-category gallery: the same with ``N`` and ``Q`` restricted to the query's category, averaged over queries
  (the shapes of one category are taken to have the same number of photos).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["CHANCE_METHOD", "SplitSizes", "chance_levels"]

CHANCE_METHOD = (
    "Chance = the expected value of the metric for a random ranking (retrieval) or a random classifier "
    "(zero-shot, linear probe, fine-tune), computed exactly from the sizes of the evaluated split: zero-shot top-k = "
    "min(k, C)/C over C classes; paper protocol top-k = Σ_batches min(k, b)/n over the shuffled batches of "
    "b ≤ paper_batch_size pairs; full gallery I→S R@k = min(k, N)/N over N gallery shapes, S→I R@k = "
    "1 − C(Q−K, k)/C(Q, k) for K photos per shape among Q photos; mAP = the expected average precision of a random "
    "ranking with R relevant of N items, (R−1)/(N−1) + (N−R)/(N(N−1))·H_N; same-category: the same with N, Q "
    "restricted to the query's own category, averaged over queries (shapes of a category are assumed to have the "
    "same number of photos)."
)


@dataclass(frozen=True)
class SplitSizes:
    """The sizes of an evaluated split that the chance levels depend on.

    Attributes:
        num_classes: classes of the zero-shot classifier (the collection's categories).
        num_pairs: (photo, shape) pairs of the retrieval protocols (0: no photos).
        paper_batch_size: batch size of the paper protocol.
        gallery: ``(photos, shapes)`` of each category in the full gallery, one entry per category with photos.
    """

    num_classes: int
    num_pairs: int = 0
    paper_batch_size: int = 128
    gallery: tuple[tuple[int, int], ...] = field(default_factory=tuple)

    def summary(self) -> dict[str, int]:
        """``{"categories", "gallery_shapes", "photo_shape_pairs"}`` (what a report prints about the split)."""
        return {
            "categories": int(self.num_classes),
            "gallery_shapes": sum(int(s) for _, s in self.gallery),
            "photo_shape_pairs": int(self.num_pairs),
        }


def _p_hit_any(k: int, relevant: int, total: int) -> float:
    """P(at least one of ``relevant`` items is in the top ``k`` of a random ranking of ``total``)."""
    if total <= 0:
        return float("nan")
    if k >= total or relevant >= total:
        return 1.0
    return 1.0 - math.comb(total - relevant, k) / math.comb(total, k)


def _expected_ap(relevant: int, total: int) -> float:
    """Expected average precision of a random ranking of ``total`` items with ``relevant`` relevant ones."""
    if total <= 1:
        return 1.0
    harmonic = sum(1.0 / i for i in range(1, total + 1))
    return (relevant - 1) / (total - 1) + (total - relevant) / (total * (total - 1)) * harmonic


def _gallery_chance(metric: str, groups: Iterable[tuple[int, int]], direction: str) -> float:
    """``groups``: ``(photos, shapes)`` of each ranking pool (the whole gallery, or one category each); the result is
    averaged over the queries of ``direction`` (i2s: photos, s2i: shapes). Percent."""
    total_weight = 0.0
    value = 0.0
    for photos, shapes in groups:
        if photos <= 0 or shapes <= 0:
            continue
        per_shape = max(1, round(photos / shapes))
        if direction == "i2s":
            weight, relevant, pool = photos, 1, shapes
        else:
            weight, relevant, pool = shapes, per_shape, photos
        if metric == "map":
            v = _expected_ap(relevant, pool)
        elif metric.startswith("r") and metric[1:].isdigit():
            v = _p_hit_any(int(metric[1:]), relevant, pool)
        else:
            return float("nan")
        value += weight * v
        total_weight += weight
    return 100.0 * value / total_weight if total_weight else float("nan")


def chance_levels(keys: Iterable[str], sizes: SplitSizes) -> dict[str, float]:
    """``{metric key: chance in percent}`` for the ``keys`` whose chance level follows from ``sizes`` (others, such
    as ``efficiency/...``, are left out)."""
    out: dict[str, float] = {}
    n_classes = int(sizes.num_classes)
    for key in keys:
        parts = key.split("/")
        if len(parts) == 2 and n_classes and (parts[0] in ("linear_probe", "finetune")
                                              or parts[1] == "class_mean_top1"):
            out[key] = 100.0 / n_classes  # top-1 and class-mean top-1 of a classifier that ignores its input
        elif len(parts) == 2 and n_classes and parts[0].startswith("zeroshot") and re.fullmatch(r"top\d+", parts[1]):
            out[key] = 100.0 * min(int(parts[1][3:]), n_classes) / n_classes
        elif len(parts) == 4 and parts[0] == "retrieval" and parts[2] == "paper":
            pairs, batch = int(sizes.num_pairs), int(sizes.paper_batch_size)
            match = re.fullmatch(r"(i2s|s2i)_top(\d+)", parts[3])
            if pairs and match:
                k = int(match.group(2))
                batches = [batch] * (pairs // batch) + ([pairs % batch] if pairs % batch else [])
                out[key] = 100.0 * sum(min(k, b) for b in batches) / pairs
        elif len(parts) == 4 and parts[0] == "retrieval" and parts[2] in ("gallery", "gallery_samecat"):
            match = re.fullmatch(r"(i2s|s2i)_(r\d+|map)", parts[3])
            if not sizes.gallery or not match:
                continue
            groups = list(sizes.gallery)
            if parts[2] == "gallery":
                groups = [(sum(p for p, _ in groups), sum(s for _, s in groups))]
            value = _gallery_chance(match.group(2), groups, match.group(1))
            if math.isfinite(value):
                out[key] = value
    return out
