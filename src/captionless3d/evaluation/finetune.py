"""Full fine-tuning for standard classification (the ULIP protocol, e.g. ScanObjectNN PB_T50_RS), numbers in percent.

Protocol:

1. A **copy** of the encoder (the caller's encoder is never modified) gets a fresh ``nn.Linear`` classification
   head on one of three feature taps (``features``):

   * ``"hidden"`` (default): the projection head without its last ``Linear`` -- the pre-projection features
     (PointNeXt-S + ``[512, 256]`` head: 256-d; the paper's / ULIP's ``ClsHead`` hidden layers);
   * ``"backbone"``: the backbone's global feature (PointNeXt-S: 512-d), the projection head is dropped;
   * ``"embedding"``: the full encoder output (the teacher-space embedding; works for any encoder module).

2. Every trainable parameter (trunk + head) is trained with AdamW and a per-step cosine schedule from ``lr`` to
   ``min_lr`` for ``epochs`` epochs on the ``train`` split, batches of ``batch_size`` in a seeded shuffled order
   (a batch of one object is dropped: BatchNorm). Batches are augmentation-free: a fresh random subset of
   ``n_points`` points per object and epoch, unit-sphere normalised (``rotation_degrees > 0`` adds the training
   rotation of the data module). Cross-entropy with optional label smoothing.
3. After each epoch the ``val`` split is classified (one fixed seeded point subset per object, eval mode); the epoch
   with the best validation top-1 (ties: better class-mean top-1, then the earlier epoch) is **selected on val**.
4. Only then is the ``test`` split read, once, with the selected epoch's weights: top-1 and class-mean top-1.

Everything runs under a forked, seeded torch RNG (head initialisation, dropout, shuffling, point subsets), so a run
is deterministic on CPU and the global RNG state of the caller is left untouched.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from captionless3d.data.pointcloud import normalise_unit_sphere, random_rotate, random_subset
from captionless3d.errors import ConfigError, DataError, NumericalError
from captionless3d.evaluation.classification import classification_metrics

__all__ = ["FEATURE_TAPS", "FinetuneClassifier", "build_classifier", "finetune_encoder"]

log = logging.getLogger(__name__)

FEATURE_TAPS = ("hidden", "backbone", "embedding")


class _Trunk(nn.Module):
    """``xyz (B, N, 3) -> (B, F)``: a backbone, optionally followed by the projection head's hidden layers."""

    def __init__(self, backbone: nn.Module, hidden: nn.Module | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.hidden = hidden if hidden is not None else nn.Identity()

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.backbone(xyz))


class FinetuneClassifier(nn.Module):
    """``forward(xyz (B, N, 3)) -> logits (B, C)``: ``trunk`` features then ``classifier = Linear(F, C)``."""

    def __init__(self, trunk: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.trunk(xyz))


def build_classifier(encoder: nn.Module, num_classes: int, features: str, example: torch.Tensor) -> FinetuneClassifier:
    """Copy ``encoder`` and put a fresh linear head on the ``features`` tap. ``example`` ``(B, N, 3)`` is one batch
    of clouds used to measure the feature size (eval mode, no grad)."""
    if features not in FEATURE_TAPS:
        raise ConfigError(f"finetune.features: expected one of {FEATURE_TAPS}, got {features!r}")
    encoder = copy.deepcopy(encoder)
    if features == "embedding":
        trunk: nn.Module = encoder
    else:
        backbone, head = getattr(encoder, "encoder", None), getattr(encoder, "head", None)
        layers = getattr(head, "head", None)
        if not isinstance(backbone, nn.Module) or not isinstance(layers, nn.Sequential):
            raise ConfigError(
                f"finetune.features={features!r} needs a backbone + projection-head encoder (PointEncoder); "
                f"{type(encoder).__name__} has none: use finetune.features=embedding"
            )
        hidden = nn.Sequential(*list(layers)[:-1]) if features == "hidden" and len(layers) > 1 else None
        trunk = _Trunk(backbone, hidden)
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        feature_dim = int(trunk(example).shape[1])
    trunk.train(was_training)
    return FinetuneClassifier(trunk, feature_dim, num_classes).to(example.device)


def _load_points(points: Any, index: np.ndarray) -> torch.Tensor:
    """``points[index]`` as float32 ``(len(index), P, 3)``, read in ascending order (memmaps, lazy arrays)."""
    order = np.argsort(index, kind="stable")
    rows = np.ascontiguousarray(points[index[order]], dtype=np.float32)
    out = np.empty_like(rows)
    out[order] = rows
    return torch.from_numpy(out)


def _batch(points: Any, index: np.ndarray, n_points: int, generator: torch.Generator,
           rotation_degrees: float) -> torch.Tensor:
    clouds = normalise_unit_sphere(random_subset(_load_points(points, index), n_points, generator))
    if rotation_degrees > 0:
        clouds = random_rotate(clouds, rotation_degrees, generator)
    return clouds


@torch.no_grad()
def _predict(model: nn.Module, points: Any, index: np.ndarray, *, n_points: int, batch_size: int, seed: int,
             device: torch.device) -> torch.Tensor:
    """Logits ``(len(index), C)`` (CPU float32) from one seeded point subset per object, in eval mode."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    out = [model(_batch(points, index[s : s + batch_size], n_points, generator, 0.0).to(device)).float().cpu()
           for s in range(0, len(index), batch_size)]
    return torch.cat(out)


def finetune_encoder(
    encoder: nn.Module,
    collection: Any,
    *,
    train_split: str = "train",
    val_split: str = "val",
    test_split: str = "test",
    epochs: int = 2,
    batch_size: int = 32,
    lr: float = 2e-3,
    min_lr: float = 1e-5,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.0,
    features: str = "hidden",
    n_points: int = 1024,
    rotation_degrees: float = 0.0,
    eval_batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Fine-tune a copy of ``encoder`` on ``collection``'s ``train_split``, select the epoch on ``val_split``, and
    classify ``test_split`` once (module docstring). Labels are ``collection.labels``, classes
    ``collection.categories``.

    Returns :func:`classification_metrics` of the test split (``top1``, ``class_mean_top1`` in percent, ...) and
    ``selection``: ``{"epoch": selected (1-based), "epochs", "val_top1": [per epoch], "val_class_mean_top1": [...],
    "train_loss": [per epoch mean], "features", "criterion"}``.
    """
    name = getattr(collection, "name", type(collection).__name__)
    if int(epochs) < 1:
        raise ConfigError(f"finetune.epochs: expected a positive integer, got {epochs!r}")
    if int(batch_size) < 2:
        raise ConfigError(f"finetune.batch_size: expected at least 2 (BatchNorm), got {batch_size!r}")
    for key, value in (("lr", lr), ("min_lr", min_lr), ("weight_decay", weight_decay)):
        if not math.isfinite(float(value)) or float(value) < 0:
            raise ConfigError(f"finetune.{key}: expected a finite value >= 0, got {value!r}")
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ConfigError(f"finetune.label_smoothing: expected a value in [0, 1), got {label_smoothing!r}")
    device = torch.device(device)
    splits = {}
    for split in (train_split, val_split, test_split):
        index = np.asarray(collection.indices(split), dtype=np.int64)
        if len(index) == 0:
            raise DataError(
                f"fine-tune on {name}: split '{split}' is empty (needs '{train_split}', '{val_split}' and "
                f"'{test_split}'; read the training file with a val fraction)"
            )
        splits[split] = index
    train_index, val_index, test_index = splits[train_split], splits[val_split], splits[test_split]
    if len(train_index) < 2:
        raise DataError(f"fine-tune on {name}: split '{train_split}' has {len(train_index)} object(s); needs >= 2")
    labels = torch.from_numpy(np.array(collection.labels, dtype=np.int64))  # a copy: labels may be read-only
    num_classes = len(collection.categories)
    points = collection.points

    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        example = _batch(points, train_index[: min(len(train_index), 2)], n_points, generator, 0.0).to(device)
        model = build_classifier(encoder, num_classes, features, example)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=float(lr), weight_decay=float(weight_decay))
        steps_per_epoch = sum(1 for s in range(0, len(train_index), batch_size) if len(train_index) - s >= 2)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, int(epochs) * steps_per_epoch), eta_min=float(min_lr)
        )
        history: dict[str, list[float]] = {"val_top1": [], "val_class_mean_top1": [], "train_loss": []}
        best: tuple[tuple[float, float], int, dict[str, torch.Tensor]] | None = None
        for epoch in range(1, int(epochs) + 1):
            model.train()
            order = train_index[torch.randperm(len(train_index), generator=generator).numpy()]
            losses = []
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                if len(chunk) < 2:  # BatchNorm cannot train on a single object
                    continue
                clouds = _batch(points, chunk, n_points, generator, float(rotation_degrees)).to(device)
                target = labels[torch.from_numpy(chunk)].to(device)
                loss = F.cross_entropy(model(clouds), target, label_smoothing=float(label_smoothing))
                if not torch.isfinite(loss):
                    raise NumericalError(f"fine-tune on {name}: non-finite loss at epoch {epoch}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
            val = classification_metrics(
                _predict(model, points, val_index, n_points=n_points, batch_size=eval_batch_size, seed=seed + 1,
                         device=device),
                labels[torch.from_numpy(val_index)],
            )
            history["val_top1"].append(val["top1"])
            history["val_class_mean_top1"].append(val["class_mean_top1"])
            history["train_loss"].append(float(np.mean(losses)) if losses else float("nan"))
            log.info("fine-tune %s epoch %d/%d: train loss %.4f, val top-1 %.2f %%", name, epoch, epochs,
                     history["train_loss"][-1], val["top1"])
            score = (val["top1"], val["class_mean_top1"])
            if best is None or score > best[0]:  # strict: ties keep the earlier epoch
                best = (score, epoch, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        assert best is not None
        model.load_state_dict(best[2])
        # the test split is read only now, after the epoch was selected on val
        test_logits = _predict(model, points, test_index, n_points=n_points, batch_size=eval_batch_size,
                               seed=seed + 2, device=device)
    result = classification_metrics(test_logits, labels[torch.from_numpy(test_index)])
    result["selection"] = {
        "epoch": best[1],
        "epochs": int(epochs),
        "features": features,
        "criterion": "max val top-1, then val class-mean top-1, then the earlier epoch",
        **history,
    }
    return result

