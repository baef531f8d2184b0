"""Learning you can watch: cheap zero-shot and retrieval scalars after every validation pass.

:class:`ValidationMetrics` logs, for the benchmark evaluated on the training collection (``heldout``):

- ``val/<benchmark>/zeroshot/top1`` and ``val/<benchmark>/gallery/i2s_r1`` on the validation split;
- the same two on a fixed, seeded subset of the *train* split, as ``train_fit/<benchmark>/...``, so that a gap
  between fitting and generalising is visible;
- ``val/<benchmark>/oracle/...``: the teacher oracle on the validation split (:mod:`.oracle`; a constant line, the
  ceiling the two curves are heading for).

``gallery/i2s_r1`` is the full-gallery photo->shape R@1 without background (masked photos): each photo ranks every
object of the split. Every object is embedded once per pass (one seeded point subset, no augmentation), and the
same embedding serves zero-shot and the gallery, so a pass costs one forward over the split. Any of these scalars
can select the checkpoint: ``callbacks.model_checkpoint.monitor=val/heldout/gallery/i2s_r1
callbacks.model_checkpoint.mode=max`` (the default stays ``val/loss``). Nothing here touches the test split.

DDP: every rank computes the same numbers on the same objects (no all-gather), so a monitored key exists on all
ranks.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch

from captionless3d.errors import ConfigError
from captionless3d.evaluation.embedding import embed_points
from captionless3d.evaluation.oracle import evaluate_teacher_oracle
from captionless3d.evaluation.runner import embedding_metrics

log = logging.getLogger(__name__)

#: (metric key of :mod:`.report`, logged name)
LOGGED: tuple[tuple[str, str], ...] = (
    ("zeroshot/top1", "zeroshot/top1"),
    ("retrieval/nobg/gallery/i2s_r1", "gallery/i2s_r1"),
)


def split_scalars(encoder: torch.nn.Module, collection: Any, features: Any, index: np.ndarray, *, n_points: int,
                  batch_size: int = 64, seed: int = 0, device: torch.device | str = "cpu") -> dict[str, float]:
    """``{logged name: percent}`` of :data:`LOGGED` for the objects ``index`` (global indices, ``(M,)``)."""
    index = np.asarray(index, dtype=np.int64)
    shape_emb = embed_points(encoder, collection.points[index], n_points=n_points, batch_size=batch_size, seed=seed,
                             device=device)
    position = {int(g): i for i, g in enumerate(index)}
    protocols = ["zeroshot"] + (["retrieval"] if int(features.photo_emb.shape[1]) > 0 else [])
    metrics = embedding_metrics(
        shape_emb, lambda pairs: shape_emb[torch.as_tensor([position[int(g)] for g in pairs], dtype=torch.long)],
        collection, features, index, protocols=protocols, templates=("single",), teacher=None,
        paper_batch_size=128, paper_seed=0,
    ).metrics
    return {name: float(metrics[key]) for key, name in LOGGED if key in metrics}


class ValidationMetrics(L.Callback):
    """Logs :data:`LOGGED` scalars on the validation split and a fixed train subset after each validation pass.

    Args:
        benchmark: the benchmark (``eval.<name>``) whose collection is used; ``None``: the first attached benchmark
            whose collection has a ``split`` split (the training collection's ``heldout``). Without one the
            callback logs nothing and says so once.
        split: the validation split.
        train_fit_objects: size of the fixed train subset (``0``: no ``train_fit/`` scalars).
        seed: seeds the subset and the point sampling.
        n_points, batch_size: point subset per cloud and embedding batch (``None``: the benchmark runner's).
    """

    def __init__(self, *, benchmark: str | None = None, split: str = "val", train_fit_objects: int = 160,
                 seed: int = 0, n_points: int | None = None, batch_size: int | None = None) -> None:
        if int(train_fit_objects) < 0:
            raise ConfigError(f"callbacks.validation_metrics.train_fit_objects: must be >= 0, got {train_fit_objects}")
        self.benchmark_name = benchmark
        self.split = split
        self.train_fit_objects = int(train_fit_objects)
        self.seed = int(seed)
        self.n_points = n_points
        self.batch_size = batch_size
        self.benchmarks: Mapping[str, Any] = {}
        self._oracle: dict[str, float] | None = None
        self._train_fit: np.ndarray | None = None
        self._warned = False
        #: one ``{"epoch": e, "step": s, <logged key>: value, ...}`` per validation pass (train.py puts it into
        #: summary.json, so the curves outlive TensorBoard)
        self.history: list[dict[str, float]] = []

    def attach_benchmarks(self, benchmarks: Mapping[str, Any]) -> ValidationMetrics:
        self.benchmarks = dict(benchmarks)
        if self.benchmark_name is not None and self.benchmark_name not in self.benchmarks:
            raise ConfigError(f"callbacks.validation_metrics.benchmark: {self.benchmark_name!r} is not among the "
                              f"configured benchmarks {sorted(self.benchmarks)}")
        return self

    def _chosen(self) -> tuple[str, Any] | None:
        names = [self.benchmark_name] if self.benchmark_name is not None else list(self.benchmarks)
        for name in names:
            bench = self.benchmarks[name]
            if len(bench.collection.indices(self.split)) > 0:
                return name, bench
        return None

    def train_fit_index(self, collection: Any) -> np.ndarray:
        """The fixed train subset: ``train_fit_objects`` train objects drawn once with ``seed``, in index order."""
        if self._train_fit is None:
            train = np.asarray(collection.indices("train"), dtype=np.int64)
            rng = np.random.default_rng(self.seed)
            take = min(self.train_fit_objects, len(train))
            self._train_fit = np.sort(rng.choice(train, size=take, replace=False)) if take else train[:0]
        return self._train_fit

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        chosen = self._chosen()
        if chosen is None:
            if not self._warned:
                log.info("validation metrics: no benchmark with a '%s' split; nothing logged", self.split)
                self._warned = True
            return
        name, bench = chosen
        runner = dict(bench.runner)
        options = dict(n_points=int(self.n_points or runner.get("n_points", 1024)),
                       batch_size=int(self.batch_size or runner.get("batch_size", 64)), seed=self.seed,
                       device=pl_module.device)
        values = {f"val/{name}/{k}": v for k, v in split_scalars(
            pl_module.encoder, bench.collection, bench.features, bench.collection.indices(self.split),
            **options).items()}
        fit = self.train_fit_index(bench.collection)
        if len(fit):
            values.update({f"train_fit/{name}/{k}": v for k, v in split_scalars(
                pl_module.encoder, bench.collection, bench.features, fit, **options).items()})
        if self._oracle is None:
            oracle = evaluate_teacher_oracle(bench.collection, bench.features, split=self.split,
                                             protocols=("zeroshot", "retrieval"))
            self._oracle = {logged: float(oracle[key]) for key, logged in LOGGED if key in (oracle or {})}
        values.update({f"val/{name}/oracle/{k}": v for k, v in self._oracle.items()})
        for key, value in values.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False, batch_size=1)
        self.history.append({"epoch": int(trainer.current_epoch), "step": int(trainer.global_step), **values})

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}  # a resumed run keeps the curve it had

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
