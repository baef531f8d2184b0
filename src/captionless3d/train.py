"""Training entry point: ``python -m captionless3d.train [experiment=avg] [key=value ...]``.

Runs (or reuses) the data, teacher, feature and prior stages, trains the student with Lightning, then evaluates the
validation-selected checkpoint on the test split and writes the results table into the run directory.
"""
from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from captionless3d.errors import Captionless3DError
from captionless3d.hydra_utils import CONFIG_DIR, instantiate, resolve_ckpt_path
from captionless3d.pipeline import prepare
from captionless3d.training.module import CaptionlessModule
from captionless3d.utils.atomic import atomic_write_json
from captionless3d.utils.threads import set_torch_threads

log = logging.getLogger("captionless3d.train")

#: summary.json entries left out of the one-line "run summary" log record (they are in the file)
_BULKY = ("metrics", "chance", "test_split")


def build_module(cfg: DictConfig, prepared: Any) -> tuple[Any, CaptionlessModule]:
    """The data module and the LightningModule of one run. Call it right after ``L.seed_everything(cfg.seed)``: the
    variants (baseline, I2I, (I2L)², AVG) differ only in their priors, which consume no random numbers, so one seed
    gives every variant the same initial weights (and, through DeterministicResume, the same batches): paired seeds
    (tests/training/test_paired_seeds.py)."""
    datamodule = instantiate(cfg.data.loader, key="data.loader").attach(
        prepared.collection, prepared.features.view_emb, priors=prepared.priors
    )
    encoder = instantiate(cfg.model, key="model", embed_dim=prepared.teacher.dim)
    loss = instantiate(cfg.loss, key="loss")
    metadata = {
        "teacher_id": prepared.teacher.id,
        "teacher_dim": prepared.teacher.dim,
        "data_fingerprint": prepared.collection.fingerprint,
        "experiment": cfg.experiment_name,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    module = CaptionlessModule(
        encoder,
        loss,
        prepared.priors,
        lr=cfg.optim.lr,
        min_lr=cfg.optim.min_lr,
        weight_decay=cfg.optim.weight_decay,
        warmup_epochs=cfg.optim.warmup_epochs,
        loss_weight_decay=bool(cfg.optim.get("loss_weight_decay", True)),
        object_ids=list(prepared.collection.object_ids),
        metadata=metadata,
    )
    return datamodule, module


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one configuration. Returns the run summary (timings, metrics, paths)."""
    started = time.perf_counter()
    run_dir = Path(cfg.paths.run_dir)
    if cfg.get("num_threads"):
        set_torch_threads(int(cfg.num_threads))
    L.seed_everything(cfg.seed, workers=True)
    prepared = prepare(cfg)
    # building cold caches consumes random numbers: reseed so the student's initial weights never depend on them
    L.seed_everything(cfg.seed, workers=True)

    datamodule, module = build_module(cfg, prepared)

    callbacks = [instantiate(c, _convert_="all") for c in (cfg.get("callbacks") or {}).values() if c is not None]
    for callback in callbacks:
        if hasattr(callback, "attach_benchmarks"):
            callback.attach_benchmarks(prepared.benchmarks)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    if not loggers:  # logger=none: Lightning's LearningRateMonitor refuses to run without a logger
        kept = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
        if len(kept) != len(callbacks):
            log.info("logger=none: leaving out the learning-rate monitor (it needs a logger)")
        callbacks = kept
    trainer: L.Trainer = instantiate(cfg.trainer, key="trainer", callbacks=callbacks, logger=loggers or False,
                                     default_root_dir=str(run_dir))

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    evaluation = next((c for c in callbacks if getattr(c, "results", None) is not None), None)
    results = evaluation.results if evaluation is not None else {}
    metrics = {name: result.metrics for name, result in results.items()} if evaluation is not None else None
    summary = {
        "experiment": cfg.experiment_name,
        "seed": int(cfg.seed),
        "run_dir": str(run_dir),
        "stage_seconds": prepared.timings,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "best_checkpoint": getattr(trainer.checkpoint_callback, "best_model_path", None),
        "teacher_id": prepared.teacher.id,
        "metrics": metrics,
        # per benchmark: the chance level of every metric (same keys) and the sizes of the evaluated split
        "chance": {name: result.chance for name, result in results.items()},
        "test_split": {name: result.sizes for name, result in results.items()},
        "oracle": getattr(evaluation, "oracle", None),
        # per validation pass: val/ and train_fit/ zero-shot and gallery R@1 (captionless3d.evaluation.monitor)
        "validation_history": next((c.history for c in callbacks if hasattr(c, "history")), None),
    }
    if trainer.is_global_zero:
        atomic_write_json(run_dir / "summary.json", summary)
        log.info("run summary: %s", json.dumps({k: v for k, v in summary.items() if k not in _BULKY}))
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        summary = run_training(cfg)
    except Captionless3DError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # the sweep objective: zero-shot top-1 of the first benchmark that has one
    for metrics in (summary.get("metrics") or {}).values():
        if "zeroshot/top1" in metrics:
            return float(metrics["zeroshot/top1"])
    return None


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
