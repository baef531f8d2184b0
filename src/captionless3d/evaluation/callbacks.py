"""Lightning callback: evaluate the validation-selected checkpoint on every configured benchmark at the end of fit."""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from captionless3d.evaluation.result import BenchmarkResult
from captionless3d.training.checkpoint_io import load_encoder_weights

log = logging.getLogger(__name__)


class TestSetEvaluation(L.Callback):
    """After ``fit``: load the best checkpoint (by the ModelCheckpoint monitor: ``val/loss`` by default, or a
    quantity of :class:`~captionless3d.evaluation.monitor.ValidationMetrics`), evaluate it on
    every attached benchmark, log ``test/<benchmark>/...`` scalars and write the results tables into ``output_dir``.
    Runs on global rank 0 only. Benchmarks come from the pipeline (``attach_benchmarks``).

    Artefacts (:func:`run_benchmarks`): the embedding projector, retrieval example grids and the confusion matrix go to
    the trainer's TensorBoard logger (or ``<output_dir>/tensorboard`` without one), and as PNG files next to the
    results.
    """

    def __init__(self, *, output_dir: str, model_name: str) -> None:
        self.output_dir = Path(output_dir)
        self.model_name = model_name
        self.benchmarks: Mapping[str, Any] = {}
        self.results: dict[str, BenchmarkResult] | None = None
        self.metrics: dict[str, dict[str, Any]] | None = None  # {benchmark: results[benchmark].metrics}
        self.oracle: dict[str, dict[str, Any]] | None = None  # teacher-oracle metrics per benchmark with renders
        self.checkpoint_path: str | None = None

    def attach_benchmarks(self, benchmarks: Mapping[str, Any]) -> TestSetEvaluation:
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
        from captionless3d.evaluation.oracle import evaluate_oracles

        self.oracle = evaluate_oracles(self.benchmarks)
        self.results = run_benchmarks(
            encoder.to(pl_module.device),
            self.benchmarks,
            model_name=self.model_name,
            output_dir=self.output_dir,
            device=pl_module.device,
            checkpoint=self.checkpoint_path,
            loggers=trainer.loggers,
            step=trainer.global_step,
            oracles=self.oracle,
            selected_on=getattr(trainer.checkpoint_callback, "monitor", None) if checkpoint else None,
        )
        self.metrics = {name: result.metrics for name, result in self.results.items()}


ORACLE_NOTE = (
    "teacher-oracle: the shape embedding is the teacher's own L2-normalised mean render-view embedding of the shape "
    "(what a student that reproduced its targets exactly would reach); distillation efficiency = student / oracle x "
    "100 (docs/student_gap.md)."
)


def _selection_notes(selection: Mapping[str, Any]) -> str:
    """One line on what the linear probe / fine-tune chose on the validation split."""
    parts = []
    probe = selection.get("linear_probe")
    if probe:
        l2 = probe["l2"]
        val_top1 = probe["val_top1"][str(l2)]
        parts.append(f"linear probe: L2 weight {float(l2):g} chosen on val (val top-1 {val_top1:.1f} %)")
    tuned = selection.get("finetune")
    if tuned:
        epoch = int(tuned["epoch"])
        parts.append(
            f"fine-tune ({tuned['features']} features): epoch {epoch}/{tuned['epochs']} chosen on val "
            f"(val top-1 {tuned['val_top1'][epoch - 1]:.1f} %)"
        )
    return "; ".join(parts)


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
    tensorboard_dir: str | Path | None = "auto",
    oracles: Mapping[str, Mapping[str, Any]] | None = None,
    selected_on: str | None = None,
) -> dict[str, BenchmarkResult]:
    """Evaluate ``encoder`` on each benchmark; print a compact table per benchmark (:mod:`.console`); write the
    paper-style ``results/<benchmark>/results.*``
    (each stating its protocol, including that the checkpoint was selected on val), ``selection.json`` (what the
    linear probe / fine-tune chose on val), the confusion-matrix and retrieval-example PNGs, and a combined
    ``results.md``; log ``test/<benchmark>/<metric>`` scalars.

    TensorBoard artefacts (projector, retrieval examples, confusion matrix) go to the first TensorBoard logger in
    ``loggers`` (the two images also to every logger with a ``log_image`` method, e.g. W&B, under the same tags);
    without one to a writer in ``tensorboard_dir`` (``"auto"``: ``<output_dir>/tensorboard``; ``None``: no TensorBoard).
    A benchmark's ``runner.artefacts`` options (:data:`.artefacts.ARTEFACT_DEFAULTS`) tune or disable them.

    ``oracles`` (:func:`.oracle.evaluate_oracles`): a benchmark that has one gets a ``teacher-oracle`` reference row
    in its table, and the encoder's metrics get the ``efficiency/...`` keys (student / oracle, percent).
    ``selected_on``: the validation quantity the checkpoint was selected by (stated in the protocol).

    Returns ``{benchmark: BenchmarkResult}`` (the metrics include the ``efficiency/...`` keys when an oracle was
    given).
    """
    from captionless3d.evaluation.artefacts import check_artefact_options, tensorboard_writer, write_benchmark_artefacts
    from captionless3d.evaluation.console import compact_table
    from captionless3d.evaluation.oracle import ORACLE_NAME, distillation_efficiency
    from captionless3d.evaluation.report import ResultsTable
    from captionless3d.evaluation.runner import KNOWN_PROTOCOLS, describe_protocol, evaluate_encoder
    from captionless3d.evaluation.zeroshot import save_confusion_png
    from captionless3d.utils.atomic import atomic_write_bytes, atomic_write_json

    output_dir = Path(output_dir)
    params_m = sum(p.numel() for p in encoder.parameters()) / 1e6
    results: dict[str, BenchmarkResult] = {}
    sections = []
    fallback = (output_dir / "tensorboard") if tensorboard_dir == "auto" else tensorboard_dir
    writer, owned, writer_checked = None, False, False
    try:
        for name, bench in benchmarks.items():
            runner = dict(bench.runner)
            artefacts = check_artefact_options(runner.pop("artefacts", None), f"eval.{name}.runner.artefacts")
            split = runner.get("split", "test")
            if len(bench.collection.indices(split)) == 0:
                log.info("benchmark %s: collection %s has no '%s' split; skipped", name, bench.collection.name, split)
                continue
            result = evaluate_encoder(
                encoder, bench.collection, bench.features, device=device, return_embeddings=artefacts["enabled"],
                teacher=getattr(bench, "teacher", None), progress=True, **runner,
            )
            metrics = result.metrics
            bench_dir = output_dir / "results" / name
            bench_dir.mkdir(parents=True, exist_ok=True)
            confusion_png = None
            if result.confusion_matrix is not None:
                confusion_png = save_confusion_png(result.confusion_matrix, list(bench.collection.categories),
                                                   bench_dir / "confusion_matrix.png")
            if result.selection:
                atomic_write_json(bench_dir / "selection.json", result.selection)
            if result.per_category:
                atomic_write_json(bench_dir / "per_category.json", result.per_category)
            protocols = runner.get("protocols", ("zeroshot", "retrieval"))
            protocol = (
                f"{describe_protocol([p for p in KNOWN_PROTOCOLS if p in protocols], selected_on)} "
                f"runner: {bench.runner}. test split: {result.sizes}. checkpoint: {checkpoint}"
            )
            oracle = dict((oracles or {}).get(name, {}))
            metrics.update(distillation_efficiency(metrics, oracle))
            table = ResultsTable(protocol=protocol + (f" {ORACLE_NOTE}" if oracle else ""),
                                 title=f"{name} ({bench.collection.name})", chance=result.chance)
            table.add(model_name, metrics, params_m=params_m, notes=_selection_notes(result.selection))
            if oracle:
                table.add(ORACLE_NAME, oracle, notes="the teacher's own mean render embedding of each shape",
                          reference=True)
            table.save(bench_dir)
            sections.append(table.to_markdown())
            print(compact_table(table, bench_dir / "results.md"), flush=True)
            if artefacts["enabled"] and not writer_checked:  # open (or find) the writer once, when first needed
                writer, owned = tensorboard_writer(loggers, fallback)
                writer_checked = True
            written = write_benchmark_artefacts(
                bench_dir, name, bench.collection, result.embeddings, writer=writer, step=step, options=artefacts,
                confusion_png=confusion_png,
            )
            # the same images to loggers that take images (W&B), under TensorBoard's tags
            images = {f"test/{name}/{key}": path for key, path in written.items() if Path(path).suffix == ".png"}
            if artefacts["enabled"] and confusion_png is not None and Path(confusion_png).is_file():
                images[f"test/{name}/confusion_matrix"] = Path(confusion_png)
            for logger in loggers or ():
                if hasattr(logger, "log_metrics"):
                    logger.log_metrics({f"test/{name}/{k}": float(v) for k, v in metrics.items()}, step=step)
                if callable(getattr(logger, "log_image", None)):
                    for tag, path in images.items():
                        logger.log_image(key=tag, images=[str(path)], step=step)
            results[name] = result
    finally:
        if owned and writer is not None:
            writer.close()
    if sections:
        atomic_write_bytes(output_dir / "results.md", "\n\n".join(sections).encode("utf-8"))
    return results
