"""Linear probe on frozen embeddings (standard classification, issue #5 part 1), numbers in percent.

Protocol (the CLIP linear-probe recipe, in torch):

1. Embed the ``train``, ``val`` and ``test`` splits with the **frozen** encoder (:func:`.embedding.embed_points`: one
   seeded random subset of ``n_points`` points per object, unit-sphere normalised, no augmentation, eval mode).
2. Standardise every feature with the mean and standard deviation of the **train** embeddings (a constant feature
   gets std 1, i.e. it is only centred).
3. Multinomial logistic regression ``logits = x W + b`` fit on the whole train split (full batch) with L-BFGS
   (strong-Wolfe line search, float64) on ``mean cross-entropy + l2 * ||W||_F^2`` (the bias is not penalised).
   The grid is walked from the largest ``l2`` down, each fit warm-started from the previous one (the first from
   zero): a regularisation path, deterministic for a given grid.
4. ``l2`` is chosen from a small grid (:data:`DEFAULT_L2_GRID`) by **validation** top-1 (ties: higher validation
   class-mean top-1, then the larger ``l2``). The test split is never looked at during selection.
5. The classifier fit on train with the chosen ``l2`` (the refit is the same deterministic fit, so it is reused)
   predicts the test split once: overall top-1 and class-mean top-1 (:func:`classification_metrics`, torchmetrics).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from captionless3d.errors import ConfigError, DataError, NumericalError
from captionless3d.evaluation.classification import as_labels, classification_metrics
from captionless3d.evaluation.embedding import embed_points
from captionless3d.utils.threads import torch_threads

__all__ = [
    "DEFAULT_L2_GRID",
    "LinearProbe",
    "fit_logistic_regression",
    "linear_probe",
    "linear_probe_encoder",
]

log = logging.getLogger(__name__)

DEFAULT_L2_GRID: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
_SINGLE_THREAD_WORK = 1 << 22  # N * (D + 1) * C below which L-BFGS runs single-threaded


@dataclass
class LinearProbe:
    """A fitted probe: ``logits = ((x - mean) / std) @ weight + bias``. ``mean``/``std`` ``(D,)``, ``weight`` ``(D,
    C)``, ``bias`` ``(C,)``, all float64; ``l2`` the penalty it was fit with; ``iterations`` the L-BFGS iterations
    run."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    loss: float
    iterations: int

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, D)`` raw embeddings -> ``(N, C)`` float64 logits."""
        return ((x.double() - self.mean) / self.std) @ self.weight + self.bias


def _as_features(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise DataError(f"{name}: expected a non-empty (N, D) array of embeddings, got shape {tuple(t.shape)}")
    if not t.dtype.is_floating_point:
        raise DataError(f"{name}: expected floating point embeddings, got dtype {t.dtype}")
    t = t.detach().cpu().double()
    if not torch.isfinite(t).all():
        raise DataError(f"{name}: embeddings contain NaN/Inf")
    return t


def _check_grid(l2_grid: Sequence[float]) -> tuple[float, ...]:
    try:
        grid = tuple(float(v) for v in l2_grid)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"linear_probe.l2_grid: expected a list of numbers, got {l2_grid!r}") from exc
    if not grid or any(not math.isfinite(v) or v < 0 for v in grid):
        raise ConfigError(f"linear_probe.l2_grid: expected a non-empty list of finite values >= 0, got {list(grid)}")
    return grid


def fit_logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    l2: float,
    max_iter: int = 500,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    init: LinearProbe | None = None,
) -> LinearProbe:
    """Fit multinomial logistic regression on ``x (N, D)`` / integer ``y (N,)`` in ``[0, num_classes)``.

    Objective: ``mean_i CE(x_i W + b, y_i) + l2 * ||W||_F^2`` on features standardised with ``mean``/``std``
    (default: those of ``x``). Full-batch L-BFGS (float64, strong Wolfe, history 20), from zero (or from ``init``'s
    weights: a warm start along a regularisation path), at most ``max_iter`` iterations. Raises
    :class:`NumericalError` if the loss becomes non-finite.
    """
    xs = _as_features(x, "train embeddings")
    ys = as_labels(y, xs.shape[0], num_classes, "train labels")
    if max_iter < 1:
        raise ConfigError(f"linear_probe.max_iter: expected a positive integer, got {max_iter}")
    mean = xs.mean(dim=0) if mean is None else mean.double()
    if std is None:
        std = xs.std(dim=0, unbiased=False)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
    z = (xs - mean) / std
    d = z.shape[1]
    params = torch.zeros(d + 1, num_classes, dtype=torch.float64)
    if init is not None:
        if init.weight.shape != (d, num_classes):
            raise DataError(f"linear probe: warm start has shape {tuple(init.weight.shape)}, expected "
                            f"{(d, num_classes)}")
        params[:-1], params[-1] = init.weight, init.bias
    params.requires_grad_(True)
    design = torch.cat([z, torch.ones(len(z), 1, dtype=torch.float64)], dim=1)
    optimizer = torch.optim.LBFGS(
        [params], lr=1.0, max_iter=int(max_iter), max_eval=int(max_iter) * 2, tolerance_grad=1e-9,
        tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(design @ params, ys) + float(l2) * params[:-1].pow(2).sum()
        loss.backward()
        return loss

    # small problems: one thread (intra-op thread hand-offs cost more than the maths, badly so on a loaded machine)
    with torch_threads(1 if design.numel() * num_classes < _SINGLE_THREAD_WORK else 0):
        optimizer.step(objective)
    with torch.no_grad():
        final = float(F.cross_entropy(design @ params, ys) + float(l2) * params[:-1].pow(2).sum())
    if not math.isfinite(final):
        raise NumericalError(f"linear probe: the logistic-regression loss is not finite (l2={l2})")
    evaluations = int(optimizer.state[params].get("n_iter", 0))
    weight = params.detach()[:-1].clone()
    bias = params.detach()[-1].clone()
    return LinearProbe(mean, std, weight, bias, float(l2), final, evaluations)


def linear_probe(
    train_x: torch.Tensor,
    train_y: Any,
    val_x: torch.Tensor,
    val_y: Any,
    test_x: torch.Tensor,
    test_y: Any,
    *,
    num_classes: int,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    max_iter: int = 500,
    progress: bool = False,
) -> dict[str, Any]:
    """Choose ``l2`` on the validation split, then score the test split once (see the module docstring).

    Embeddings are ``(N_split, D)`` (any float dtype), labels integer ``(N_split,)``. Returns ``top1`` and
    ``class_mean_top1`` (test, percent), ``num_samples``, ``per_class_top1``, ``confusion_matrix`` (test) and
    ``selection``: ``{"l2": chosen, "val_top1": {l2: %}, "val_class_mean_top1": {l2: %}, "criterion": ...}``.
    ``progress``: a progress bar over the ``l2`` path.
    """
    from tqdm.auto import tqdm

    grid = _check_grid(l2_grid)
    if num_classes < 2:
        raise DataError(f"linear probe: needs at least 2 classes, got {num_classes}")
    xtr = _as_features(train_x, "train embeddings")
    xva = _as_features(val_x, "val embeddings")
    xte = _as_features(test_x, "test embeddings")
    if not xtr.shape[1] == xva.shape[1] == xte.shape[1]:
        raise DataError(
            f"linear probe: embedding sizes differ (train {xtr.shape[1]}, val {xva.shape[1]}, test {xte.shape[1]})"
        )
    ytr = as_labels(train_y, len(xtr), num_classes, "train labels")
    yva = as_labels(val_y, len(xva), num_classes, "val labels")
    mean = xtr.mean(dim=0)
    std = xtr.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))

    best: tuple[tuple[float, float, float], LinearProbe] | None = None
    val_top1: dict[float, float] = {}
    val_cmean: dict[float, float] = {}
    probe: LinearProbe | None = None
    path = sorted(set(grid), reverse=True)  # regularisation path: strongest penalty first, warm starts
    for l2 in tqdm(path, desc="linear probe l2 path", unit="l2", leave=False, disable=not progress):
        probe = fit_logistic_regression(xtr, ytr, num_classes, l2=l2, max_iter=max_iter, mean=mean, std=std, init=probe)
        val = classification_metrics(probe.logits(xva), yva)
        val_top1[l2], val_cmean[l2] = val["top1"], val["class_mean_top1"]
        score = (val["top1"], val["class_mean_top1"], l2)
        if best is None or score > best[0]:
            best = (score, probe)
    assert best is not None
    chosen = best[1]
    log.info("linear probe: l2=%g chosen on val (val top-1 %.2f %%)", chosen.l2, val_top1[chosen.l2])
    result = classification_metrics(chosen.logits(xte), test_y)
    result["selection"] = {
        "l2": chosen.l2,
        "val_top1": val_top1,
        "val_class_mean_top1": val_cmean,
        "criterion": "max val top-1, then val class-mean top-1, then larger l2",
        "train_loss": chosen.loss,
        "lbfgs_iterations": chosen.iterations,
        "num_train": int(len(xtr)),
        "num_val": int(len(xva)),
    }
    return result


def linear_probe_encoder(
    encoder: nn.Module,
    collection: Any,
    *,
    train_split: str = "train",
    val_split: str = "val",
    test_split: str = "test",
    n_points: int = 2048,
    batch_size: int = 64,
    seed: int = 0,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    max_iter: int = 500,
    test_emb: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Linear probe of a frozen ``encoder`` on ``collection``'s splits (labels = ``collection.labels``).

    ``test_emb`` ``(N_test, D)``: embeddings of ``test_split`` already computed with the same settings (reused). Each
    split gets a different embedding seed offset so no two splits share the sampling stream. :class:`DataError`
    naming the collection and split when a split is empty. ``progress``: progress bars over the embedding passes
    and the ``l2`` path.
    """
    name = getattr(collection, "name", type(collection).__name__)
    labels = torch.from_numpy(np.array(collection.labels, dtype=np.int64))
    num_classes = len(collection.categories)
    embedded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for offset, split in enumerate((train_split, val_split, test_split)):
        index = collection.indices(split)
        if len(index) == 0:
            raise DataError(
                f"linear probe on {name}: split '{split}' is empty (the probe needs '{train_split}', '{val_split}' "
                f"and '{test_split}' splits; read the collection with its training file / a val fraction)"
            )
        if split == test_split and test_emb is not None:
            emb = test_emb
        else:
            emb = embed_points(
                encoder, collection.points[index], n_points=n_points, batch_size=batch_size,
                seed=seed + 10 * (offset + 1), device=device,
                progress=f"embed {split} shapes (linear probe)" if progress else None,
            )
        embedded[split] = (emb, labels[torch.from_numpy(index)])
    (xtr, ytr), (xva, yva), (xte, yte) = (embedded[s] for s in (train_split, val_split, test_split))
    return linear_probe(xtr, ytr, xva, yva, xte, yte, num_classes=num_classes, l2_grid=l2_grid, max_iter=max_iter,
                        progress=progress)
