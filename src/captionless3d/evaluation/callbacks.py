"""Lightning callback: evaluate the validation-selected checkpoint on every configured benchmark at the end of fit."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch

from captionless3d.errors import CheckpointError

log = logging.getLogger(__name__)


def load_encoder_weights(encoder: torch.nn.Module, checkpoint: str | Path) -> torch.nn.Module:
    """Load the ``encoder.*`` weights of a training checkpoint (``weights_only=True``) into ``encoder``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    prefix = "encoder."
    weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = encoder.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{checkpoint}: missing keys {missing}, unexpected keys {unexpected}")
    return encoder


class TestSetEvaluation(L.Callback):
    """After ``fit``: load the best checkpoint (by the ModelCheckpoint monitor, i.e. ``val/loss``), evaluate it on
    every attached benchmark, log ``test/<benchmark>/...`` scalars and write the results tables into ``output_dir``.
    Runs on global rank 0 only. Benchmarks come from the pipeline (``attach_benchmarks``).
    """

    def __init__(self, *, output_dir: str, model_name: str) -> None:
        self.output_dir = Path(output_dir)
        self.model_name = model_name
        self.benchmarks: Mapping[str, Any] = {}
        self.metrics: dict[str, dict[str, Any]] | None = None
        self.checkpoint_path: str | None = None

    def attach_benchmarks(self, benchmarks: Mapping[str, Any]) -> "TestSetEvaluation":
        self.benchmarks = dict(benchmarks)
        return self

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.benchmarks:
            return
        encoder = copy.deepcopy(pl_module.encoder)
        checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        if checkpoint:
            load_encoder_weights(encoder, checkpoint)
            self.checkpoint_path = checkpoint
            log.info("evaluating validation-selected checkpoint %s", checkpoint)
        else:
            log.warning("no checkpoint was selected on validation; evaluating the final weights")
        self.metrics = run_benchmarks(
            encoder.to(pl_module.device),
            self.benchmarks,
            model_name=self.model_name,
            output_dir=self.output_dir,
            device=pl_module.device,
            checkpoint=self.checkpoint_path,
            loggers=trainer.loggers,
            step=trainer.global_step,
        )


def run_benchmarks(
    encoder: torch.nn.Module,
    benchmarks: Mapping[str, Any],
    *,
    model_name: str,
    output_dir: Path,
    device: torch.device | str = "cpu",
    checkpoint: str | None = None,
    loggers: Any = (),
    step: int = 0,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``encoder`` on each benchmark; print the paper-style tables; write ``results/<benchmark>/results.*``,
    the confusion-matrix PNGs, and a combined ``results.md``; log ``test/<benchmark>/<metric>`` scalars."""
    from captionless3d.evaluation.report import ResultsTable
    from captionless3d.evaluation.runner import PROTOCOL, evaluate_encoder
    from captionless3d.evaluation.zeroshot import save_confusion_png
    from captionless3d.utils.atomic import atomic_write_bytes

    params_m = sum(p.numel() for p in encoder.parameters()) / 1e6
    all_metrics: dict[str, dict[str, Any]] = {}
    sections = []
    for name, bench in benchmarks.items():
        if len(bench.collection.indices(bench.runner.get("split", "test"))) == 0:
            log.info("benchmark %s: collection %s has no '%s' split; skipped", name, bench.collection.name, bench.runner.get("split", "test"))
            continue
        metrics = evaluate_encoder(encoder, bench.collection, bench.features, device=device, **bench.runner)
        confusion = metrics.pop("_confusion_matrix", None)
        chance = metrics.pop("_chance", {})
        bench_dir = output_dir / "results" / name
        bench_dir.mkdir(parents=True, exist_ok=True)
        if confusion is not None:
            save_confusion_png(confusion, list(bench.collection.categories), bench_dir / "confusion_matrix.png")
        protocol = f"{PROTOCOL} runner: {bench.runner}. chance levels: {chance}. checkpoint: {checkpoint}"
        table = ResultsTable(protocol=protocol, title=f"{name} ({bench.collection.name})")
        table.add(model_name, metrics, params_m=params_m)
        table.save(bench_dir)
        markdown = table.to_markdown()
        print(markdown, flush=True)
        sections.append(markdown)
        for logger in loggers or ():
            if hasattr(logger, "log_metrics"):
                logger.log_metrics({f"test/{name}/{k}": float(v) for k, v in metrics.items()}, step=step)
        all_metrics[name] = metrics
    if sections:
        atomic_write_bytes(output_dir / "results.md", "\n\n".join(sections).encode("utf-8"))
    return all_metrics
