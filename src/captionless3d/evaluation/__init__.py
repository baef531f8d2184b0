"""Evaluation: pure functions on embeddings (numbers in percent), so the same code evaluates our models and baselines.

* :mod:`.zeroshot` -- zero-shot classification (top-1/top-5 overall accuracy, class-mean top-1, confusion matrix).
* :mod:`.retrieval` -- image<->shape retrieval: the paper's shuffled batch-of-128 protocol and our full-gallery one.
* :mod:`.linear_probe` -- logistic-regression probe on frozen embeddings (L2 weight chosen on val).
* :mod:`.finetune` -- full fine-tune of an encoder copy + linear head (epoch chosen on val; ULIP protocol).
* :mod:`.classification` -- top-1 / class-mean top-1 from logits (torchmetrics).
* :mod:`.artefacts` -- TensorBoard embedding projector, retrieval example grids (PNG), point-cloud thumbnails.
* :mod:`.report` -- metric key convention and :class:`ResultsTable` (Markdown / CSV / JSON in the paper's layout).
"""
from captionless3d.evaluation.classification import classification_metrics
from captionless3d.evaluation.report import (
    ResultRow,
    ResultsTable,
    classification_keys,
    gallery_keys,
    mean_std_table,
    paper_keys,
    zeroshot_keys,
)
from captionless3d.evaluation.retrieval import full_gallery_retrieval, paper_batch_retrieval, paper_permutation
from captionless3d.evaluation.zeroshot import class_embeddings, save_confusion_png, zero_shot_metrics

__all__ = [
    "ResultRow",
    "ResultsTable",
    "class_embeddings",
    "classification_keys",
    "classification_metrics",
    "full_gallery_retrieval",
    "gallery_keys",
    "mean_std_table",
    "paper_batch_retrieval",
    "paper_keys",
    "paper_permutation",
    "save_confusion_png",
    "zero_shot_metrics",
    "zeroshot_keys",
]
