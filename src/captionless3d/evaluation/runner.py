"""Evaluate a point encoder on a collection's held-out split: zero-shot classification and photo↔shape retrieval.

Protocol (written into every results file):
- zero-shot: one embedding per test object from a seeded random subset of ``n_points`` points (no rotation), class
  text embeddings from the feature store's prompt template; overall top-1/top-5 and class-mean top-1.
- retrieval: every (photo, shape) pair of the test split, like Pix3D entries. "w/ background" = the raw photo,
  "w/o background" = photo × mask on black. Each pair gets its own random point sample of its shape (as the paper's
  Pix3D loader). Paper protocol: shuffled batches of 128, seed 0, exact-pair hit. Full gallery: each photo ranks all
  unique test shapes (and each shape all photos); any photo of the right shape counts.
- linear probe (``protocols: [..., linear_probe]``, :mod:`.linear_probe`): the frozen encoder embeds the train, val
  and test splits; multinomial logistic regression (full-batch L-BFGS on train-standardised features); the L2 weight
  is chosen on val; test top-1 and class-mean top-1. Needs train + val splits (the training collection has them).
- fine-tune (``protocols: [..., finetune]``, :mod:`.finetune`): a copy of the encoder + a linear head trained on
  train (AdamW + cosine), epoch selected on val, test classified once.

:func:`evaluate_encoder` returns a :class:`~captionless3d.evaluation.result.BenchmarkResult`: the metrics, their
chance levels (:mod:`.chance`, keyed like the metrics), the split sizes, per-category figures, what the linear probe /
fine-tune chose on val, the zero-shot confusion matrix and, with ``return_embeddings=True``, the embeddings the
TensorBoard / PNG artefacts of :mod:`.artefacts` draw.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from captionless3d.errors import ConfigError, DataError
from captionless3d.evaluation.chance import SplitSizes, chance_levels
from captionless3d.evaluation.embedding import embed_points
from captionless3d.evaluation.report import classification_keys, gallery_keys, paper_keys, zeroshot_keys
from captionless3d.evaluation.result import BenchmarkResult
from captionless3d.evaluation.retrieval import full_gallery_retrieval, paper_batch_retrieval
from captionless3d.evaluation.zeroshot import zero_shot_metrics
from captionless3d.teacher.store_format import DEFAULT_PROMPT_TEMPLATE

PROTOCOL_PARTS: dict[str, str] = {
    "selection": (
        "checkpoint selected on the validation split (val/loss); "
        "test split used only here (nothing is selected on test)."
    ),
    "zeroshot": (
        f"zero-shot: single template '{DEFAULT_PROMPT_TEMPLATE}' (zeroshot/...), plus each averaged template set "
        "named in runner.templates (zeroshot_<set>/...: every template embedded, L2-normalised, averaged per class "
        "and re-normalised, as OpenCLIP's build_zero_shot_classifier); overall top-1/top-5 and class-mean top-1."
    ),
    "retrieval": (
        "retrieval paper protocol: (photo, shape) pairs shuffled with seed 0, batches of 128, exact-pair hit "
        "(a duplicate of the right shape in the batch is a miss). "
        "full gallery: unique test shapes, a photo of / the right shape counts as a hit."
    ),
    "linear_probe": (
        "linear probe: frozen encoder, train/val/test embedded once (seeded point subset, no augmentation); "
        "features standardised with the train mean/std; multinomial logistic regression (full-batch L-BFGS, "
        "float64, from zero along a decreasing L2 path); L2 weight chosen on val top-1 from a grid (never on "
        "test); test top-1 and class-mean top-1."
    ),
    "finetune": (
        "fine-tune: a copy of the encoder + a new linear head (on the pre-projection features unless stated), "
        "all trainable weights trained on train with AdamW + per-step cosine, augmentation-free batches (fresh "
        "random point subset, unit sphere); epoch selected on val top-1; test classified once with the selected "
        "weights; top-1 and class-mean top-1."
    ),
}
# Every protocol (what a combined table of several benchmarks states); describe_protocol() gives one benchmark's.
PROTOCOL = " ".join(PROTOCOL_PARTS.values())
KNOWN_PROTOCOLS = ("zeroshot", "retrieval", "linear_probe", "finetune")


def describe_protocol(protocols: Sequence[str] = KNOWN_PROTOCOLS, selected_on: str | None = None) -> str:
    """The protocol statement for a benchmark that ran ``protocols`` (always starting with the selection rule;
    ``selected_on``: the validation quantity the checkpoint was chosen by, when not ``val/loss``)."""
    selection = PROTOCOL_PARTS["selection"]
    if selected_on and selected_on != "val/loss":
        selection = selection.replace("(val/loss)", f"({selected_on})")
    return " ".join([selection] + [PROTOCOL_PARTS[p] for p in KNOWN_PROTOCOLS if p in protocols])


def _check_options(options: Mapping[str, Any] | None, allowed: Sequence[str], key: str) -> dict[str, Any]:
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ConfigError(f"{key}: unknown option(s) {unknown}; valid: {', '.join(sorted(allowed))}")
    return opts


def _json_safe(obj: Any) -> Any:
    """Selection records with float keys / tensors -> JSON-serialisable values."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.generic, torch.Tensor)):
        return obj.item() if obj.ndim == 0 else obj.tolist()
    return obj


def _as_tensor(array: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


def _text_classifiers(
    templates: Sequence[str], prompt_emb: torch.Tensor, teacher: Any, categories: Sequence[str]
) -> dict[str, torch.Tensor]:
    """``{set name: (C, D) class embeddings}``; ``single`` = the feature store's prompts, others embedded now."""
    if isinstance(templates, str) or not templates:
        raise ConfigError(f"runner.templates: expected a non-empty list of template-set names, got {templates!r}")
    classifiers: dict[str, torch.Tensor] = {}
    for name in templates:
        if name == "single":
            classifiers[name] = prompt_emb
            continue
        if teacher is None:
            raise ConfigError(f"runner.templates: template set {name!r} needs the teacher to embed its prompts, "
                              "and none was given")
        from captionless3d.teacher.classifier import zero_shot_classifier

        classifiers[name] = zero_shot_classifier(teacher, list(categories), name)
    return classifiers


def embedding_metrics(
    shape_emb: torch.Tensor | None,
    pair_embeddings: Callable[[np.ndarray], torch.Tensor],
    collection: Any,
    features: Any,
    index: np.ndarray,
    *,
    protocols: Sequence[str],
    templates: Sequence[str],
    teacher: Any,
    paper_batch_size: int,
    paper_seed: int,
) -> BenchmarkResult:
    """Zero-shot and retrieval results (percent) of given shape embeddings: the part of :func:`evaluate_encoder` that
    does not depend on where the embeddings come from (a point encoder, or the teacher's own render embeddings for
    :mod:`.oracle`).

    Args:
        shape_emb: ``(M, D)`` one embedding per object of ``index`` (``None`` when neither protocol needs it).
        pair_embeddings: global object indices ``(P,)`` of the (photo, shape) pairs -> their shape embeddings
            ``(P, D)`` (an encoder draws a fresh point sample per pair).
        index: ``(M,)`` global indices of the evaluated split.
    Returns the metrics with their chance levels, split sizes, per-category figures, the zero-shot confusion matrix
    and (in ``embeddings``, always filled here) what :mod:`.artefacts` draws.
    """
    categories: Sequence[str] = collection.categories
    all_labels = np.asarray(collection.labels)
    shape_of = np.asarray(getattr(collection, "shape_index", np.arange(len(all_labels))), dtype=np.int64)
    n_photos = int(features.photo_emb.shape[1])
    teacher_space = "zeroshot" in protocols or ("retrieval" in protocols and n_photos > 0)
    if teacher_space:
        prompt_emb = _as_tensor(features.prompt_emb)
        if prompt_emb.shape[1] != shape_emb.shape[1]:
            raise DataError(
                f"encoder outputs {shape_emb.shape[1]}-d embeddings but the teacher's text embeddings are "
                f"{prompt_emb.shape[1]}-d: the checkpoint was trained for another teacher"
            )
    result = BenchmarkResult(metrics={})
    metrics = result.metrics
    embeddings: dict[str, Any] = {"test_index": index, "shape_emb": shape_emb, "image_emb": {}}
    sizes = SplitSizes(num_classes=len(categories), paper_batch_size=int(paper_batch_size))
    if "zeroshot" in protocols:
        labels = torch.from_numpy(all_labels[index].astype(np.int64))
        for name, classifier in _text_classifiers(templates, prompt_emb, teacher, categories).items():
            zs = zero_shot_metrics(shape_emb, classifier, labels)
            prefix = "zeroshot" if name == "single" else f"zeroshot_{name}"
            metrics.update(zeroshot_keys(zs, prefix=prefix))
            per_class = zs["per_class_top1"].tolist()
            result.per_category[f"{prefix}/top1"] = {
                c: v for c, v in zip(categories, per_class) if v == v  # NaN: no test sample of that class
            }
            if name == "single" or result.confusion_matrix is None:
                result.confusion_matrix = zs.get("confusion_matrix")

    if "retrieval" in protocols and n_photos > 0:
        pair_objects = np.repeat(index, n_photos)  # global object index of each (photo, shape) pair
        pair_categories = [categories[c] for c in all_labels[pair_objects]]
        pair_shape_emb = pair_embeddings(pair_objects)
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
                image_emb, pair_ids, gallery_emb, gallery_ids, categories=pair_categories,
                shape_categories=gallery_categories
            )
            metrics.update(gallery_keys(gallery, domain))
            result.per_category[f"retrieval/{domain}/paper"] = paper.get("per_category", {})
            result.per_category[f"retrieval/{domain}/gallery"] = gallery.get("per_category", {})
            embeddings["image_emb"][domain] = image_emb
        embeddings.update(pair_objects=pair_objects, pair_photos=np.tile(np.arange(n_photos), len(index)),
                          pair_shape_ids=shape_of[pair_objects],
                          gallery_objects=index[first], gallery_shape_ids=shapes)
        gallery_sizes = tuple(
            (pair_categories.count(c), gallery_categories.count(c)) for c in dict.fromkeys(gallery_categories)
        )
        sizes = SplitSizes(num_classes=len(categories), num_pairs=len(pair_objects),
                           paper_batch_size=int(paper_batch_size), gallery=gallery_sizes)
    result.chance = chance_levels(metrics, sizes)
    result.sizes = sizes.summary()
    result.embeddings = embeddings
    return result


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
    linear_probe: Mapping[str, Any] | None = None,
    finetune: Mapping[str, Any] | None = None,
    templates: Sequence[str] = ("single",),
    teacher: Any = None,
    return_embeddings: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> BenchmarkResult:
    """One encoder on ``split`` of ``collection``: metrics in percent with the key naming of ``report``, their chance
    levels and the side results (:class:`~captionless3d.evaluation.result.BenchmarkResult`).

    Retrieval runs when the collection has photos (``features.photo_emb`` has K > 0 photos per object). Entries that
    share a shape (Pix3D: ``collection.shape_index``) are one gallery item in the full-gallery protocol.
    ``linear_probe`` / ``finetune``: options of :func:`.linear_probe.linear_probe_encoder` (``train_split``,
    ``val_split``, ``l2_grid``, ``max_iter``) / :func:`.finetune.finetune_encoder` (``epochs``, ``lr``, ...); the
    test split is always ``split``. ``return_embeddings``: keep ``embeddings`` (test shape embeddings, photo
    embeddings per domain, gallery) for :mod:`.artefacts`.
    ``templates``: zero-shot prompt sets (:data:`captionless3d.teacher.classifier.TEMPLATE_SETS` names); ``single``
    uses the feature store's prompt embeddings (keys ``zeroshot/...``), any other set is embedded with ``teacher``
    (keys ``zeroshot_<set>/...``). ``progress``: progress bars over the embedding passes and the linear probe's
    regularisation path.
    """
    unknown = sorted(set(protocols) - set(KNOWN_PROTOCOLS))
    if unknown:
        raise ConfigError(f"runner.protocols: unknown evaluation protocols {unknown}; known: "
                          f"{', '.join(KNOWN_PROTOCOLS)}")
    probe_opts = _check_options(linear_probe, ("train_split", "val_split", "l2_grid", "max_iter"),
                                "runner.linear_probe")
    finetune_opts = _check_options(
        finetune,
        ("train_split", "val_split", "epochs", "batch_size", "lr", "min_lr", "weight_decay", "label_smoothing",
         "features", "n_points", "rotation_degrees", "eval_batch_size", "seed"),
        "runner.finetune",
    )
    index = collection.indices(split)
    if len(index) == 0:
        raise DataError(f"evaluation split '{split}' of {collection.name} is empty")
    n_photos = int(features.photo_emb.shape[1])
    teacher_space = "zeroshot" in protocols or ("retrieval" in protocols and n_photos > 0)
    shape_emb: torch.Tensor | None = None
    if teacher_space or "linear_probe" in protocols or return_embeddings:
        shape_emb = embed_points(
            encoder, collection.points[index], n_points=n_points, batch_size=batch_size, seed=seed, device=device,
            progress=f"embed {split} shapes" if progress else None,
        )

    def pair_embeddings(pair_objects: np.ndarray) -> torch.Tensor:
        # each pair gets its own random point sample of its shape, as the paper's Pix3D loader
        return embed_points(
            encoder, collection.points[pair_objects], n_points=n_points, batch_size=batch_size, seed=seed + 1,
            device=device, progress=f"embed {split} photo pairs' shapes" if progress else None,
        )

    result = embedding_metrics(
        shape_emb, pair_embeddings, collection, features, index, protocols=protocols, templates=templates,
        teacher=teacher, paper_batch_size=paper_batch_size, paper_seed=paper_seed,
    )
    classifiers: dict[str, Any] = {}
    if "linear_probe" in protocols:
        from captionless3d.evaluation.linear_probe import linear_probe_encoder

        probe = linear_probe_encoder(
            encoder, collection, test_split=split, n_points=n_points, batch_size=batch_size, seed=seed,
            test_emb=shape_emb, device=device, progress=progress, **probe_opts,
        )
        classifiers["linear_probe"] = probe
    if "finetune" in protocols:
        from captionless3d.evaluation.finetune import finetune_encoder

        finetune_opts.setdefault("n_points", n_points)
        finetune_opts.setdefault("seed", seed)
        classifiers["finetune"] = finetune_encoder(encoder, collection, test_split=split, device=device,
                                                   **finetune_opts)
    for name, outcome in classifiers.items():
        keys = classification_keys(outcome, name)
        result.metrics.update(keys)
        result.chance.update(chance_levels(keys, SplitSizes(num_classes=len(collection.categories))))
        result.selection[name] = _json_safe(outcome["selection"])
    if not return_embeddings:
        result.embeddings = None
    return result
