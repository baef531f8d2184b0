"""Lightning callback: evaluate the validation-selected checkpoint on the held-out test split at the end of fit."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from captionless3d.errors import CheckpointError

log = logging.getLogger(__name__)


class TestSetEvaluation(L.Callback):
    """After ``fit``: load the best checkpoint (by the ModelCheckpoint monitor, i.e. val/loss), evaluate it with
    :func:`captionless3d.evaluation.runner.evaluate_encoder`, log ``test/...`` scalars, and write results.md/.csv/.json
    into ``output_dir``. Runs on global rank 0 only.
    """

    def __init__(self, *, output_dir: str, model_name: str, eval_kwargs: dict[str, Any] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.model_name = model_name
        self.eval_kwargs = dict(eval_kwargs or {})
        self.collection: Any = None
        self.features: Any = None
        self.metrics: dict[str, Any] | None = None
        self.checkpoint_path: str | None = None

    def attach(self, collection: Any, features: Any) -> "TestSetEvaluation":
        self.collection, self.features = collection, features
        return self

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.collection is None:
            return
        encoder = copy.deepcopy(pl_module.encoder)
        checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        if checkpoint:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            prefix = "encoder."
            weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
            missing, unexpected = encoder.load_state_dict(weights, strict=False)
            if missing or unexpected:
                raise CheckpointError(f"{checkpoint}: missing keys {missing}, unexpected keys {unexpected}")
            self.checkpoint_path = checkpoint
            log.info("evaluating validation-selected checkpoint %s", checkpoint)
        else:
            log.warning("no checkpoint was selected on validation; evaluating the final weights")
        run_evaluation_report(
            encoder.to(pl_module.device),
            self.collection,
            self.features,
            model_name=self.model_name,
            output_dir=self.output_dir,
            eval_kwargs={**self.eval_kwargs, "device": pl_module.device},
            params_m=sum(p.numel() for p in encoder.parameters()) / 1e6,
            checkpoint=self.checkpoint_path,
            loggers=trainer.loggers,
            step=trainer.global_step,
            sink=self,
        )


def run_evaluation_report(
    encoder: torch.nn.Module,
    collection: Any,
    features: Any,
    *,
    model_name: str,
    output_dir: Path,
    eval_kwargs: dict[str, Any],
    params_m: float,
    checkpoint: str | None,
    loggers: list[Any] = (),
    step: int = 0,
    sink: Any = None,
) -> dict[str, Any]:
    """Evaluate, print the paper-style table, write results files and the confusion-matrix PNG, log scalars."""
    from captionless3d.evaluation.report import ResultsTable
    from captionless3d.evaluation.runner import PROTOCOL, evaluate_encoder
    from captionless3d.evaluation.zeroshot import save_confusion_png

    metrics = evaluate_encoder(encoder, collection, features, **eval_kwargs)
    confusion = metrics.pop("_confusion_matrix", None)
    chance = metrics.pop("_chance", {})
    output_dir.mkdir(parents=True, exist_ok=True)
    if confusion is not None:
        save_confusion_png(confusion, list(collection.categories), output_dir / "confusion_matrix.png")
    table = ResultsTable(protocol=PROTOCOL + f" chance levels: {chance}. checkpoint: {checkpoint}")
    table.add(model_name, metrics, params_m=params_m)
    table.save(output_dir)
    print(table.to_markdown(), flush=True)
    for logger in loggers:
        if hasattr(logger, "log_metrics"):
            logger.log_metrics({f"test/{k}": float(v) for k, v in metrics.items()}, step=step)
    if sink is not None:
        sink.metrics = metrics
    return metrics
