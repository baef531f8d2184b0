"""Evaluation entry point: ``python -m captionless3d.eval ckpt=<path|latest|all|[p1,p2]> [baseline=[pointclip]]``.

``make eval`` evaluates the newest validation-selected checkpoint of every experiment (``ckpt=all``) plus the
training-free PointCLIP baseline, and prints one paper-style table per benchmark with a row per model.

Each checkpoint is loaded safely (``weights_only=True``); its format version and teacher are checked; the data,
teacher and feature stages its own config names are rebuilt or reused from the caches. Per-model results go to
``<run_dir>/models/<model>/``; the combined tables to ``<run_dir>/results/<benchmark>/results.{md,csv,json}`` and
``<run_dir>/results.md``.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from captionless3d.errors import Captionless3DError, CheckpointError, ConfigError
from captionless3d.evaluation.callbacks import run_benchmarks
from captionless3d.evaluation.console import compact_table
from captionless3d.evaluation.oracle import evaluate_oracles
from captionless3d.evaluation.report import ResultsTable
from captionless3d.evaluation.result import BenchmarkResult
from captionless3d.hydra_utils import CONFIG_DIR, instantiate
from captionless3d.pipeline import Prepared, prepare
from captionless3d.training.checkpoint_io import best_checkpoints, load_checkpoint, load_encoder_weights
from captionless3d.utils.atomic import atomic_write_bytes

log = logging.getLogger("captionless3d.eval")


def find_latest_checkpoint(output_dir: Path) -> Path:
    candidates = best_checkpoints(output_dir)
    if not candidates:
        raise CheckpointError(f"ckpt=latest: no checkpoints/best*.ckpt under {output_dir / 'train'}; "
                              "train first or pass ckpt=<path>")
    return candidates[-1]


def comparable_signature(meta: dict[str, Any]) -> dict[str, Any]:
    """What rows of one table must share: teacher, data, and the training budget (epochs, points, batch, seed)."""
    config = meta.get("config") or {}
    loader = (config.get("data") or {}).get("loader") or {}
    return {
        "teacher_id": meta.get("teacher_id"),
        "data_fingerprint": meta.get("data_fingerprint"),
        "max_epochs": (config.get("trainer") or {}).get("max_epochs"),
        "n_points": loader.get("n_points"),
        "batch_size": loader.get("batch_size"),
        "seed": config.get("seed"),
    }


def newest_per_experiment(output_dir: Path) -> list[Path]:
    """``ckpt=all``: the newest best checkpoint of each experiment among those comparable with the newest checkpoint
    overall (same teacher, data, epochs, points, batch size and seed); the others are logged and left out."""
    candidates = best_checkpoints(output_dir)
    if not candidates:
        raise CheckpointError(f"ckpt=all: no checkpoints/best*.ckpt under {output_dir / 'train'}; "
                              "train first or pass ckpt=<path>")
    reference: dict[str, Any] | None = None
    chosen: dict[str, Path] = {}
    for path in reversed(candidates):  # newest first
        meta = load_checkpoint(path)["captionless3d"]
        signature = comparable_signature(meta)
        reference = reference or signature
        if signature != reference:
            log.info("ckpt=all: leaving out %s (%s differs from the newest checkpoint's %s)",
                     path, signature, reference)
            continue
        chosen.setdefault(str(meta.get("experiment", path.stem)), path)
    return [chosen[name] for name in sorted(chosen)]


def select_checkpoints(spec: Any, output_dir: Path) -> list[Path]:
    """``ckpt``: a path, ``latest``, ``all``, or a list of paths; ``null``/``none`` for baselines only."""
    if spec is None or str(spec).lower() in ("none", "null", ""):
        return []
    if isinstance(spec, (list, tuple, ListConfig)):
        return [p for item in spec for p in select_checkpoints(item, output_dir)]
    if spec == "latest":
        return [find_latest_checkpoint(output_dir)]
    if spec == "all":
        return newest_per_experiment(output_dir)
    return [Path(str(spec))]


@dataclass
class ModelResult:
    name: str
    results: dict[str, BenchmarkResult]  # benchmark -> what run_benchmarks returned
    params_m: float
    notes: str

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """``{benchmark: {metric key: percent}}``."""
        return {bench: result.metrics for bench, result in self.results.items()}


def _current_benchmarks(names: Sequence[str]) -> DictConfig:
    """Today's definitions (``configs/eval/<name>.yaml``) of the benchmarks a checkpoint was trained with, so an old
    checkpoint is evaluated under the current protocols; a name with no config here keeps the checkpoint's own."""
    from hydra import compose
    from hydra.errors import MissingConfigException

    benchmarks = OmegaConf.create({})
    for name in names:
        try:
            benchmarks[name] = compose(config_name="eval", overrides=[f"eval=[{name}]"]).eval[name]
        except MissingConfigException:
            log.info("benchmark %s: no configs/eval/%s.yaml; using the checkpoint's own definition", name, name)
    return benchmarks


def _run_config(cfg: DictConfig, checkpoint_config: dict[str, Any]) -> DictConfig:
    """The checkpoint's training config with this run's paths and benchmarks (``eval=[...]`` or, when empty, the
    current definitions of the benchmarks it was trained with)."""
    run_cfg = OmegaConf.create(checkpoint_config)
    # benchmarks resolve their ${paths...}/${data...} references against the training config + these paths
    run_cfg.paths = cfg.paths
    if cfg.get("eval"):
        benchmarks = OmegaConf.to_container(cfg.eval)
    else:
        trained_with = run_cfg.get("eval") or {}
        current = _current_benchmarks(list(trained_with.keys()))
        benchmarks = {name: OmegaConf.to_container(current[name] if name in current else trained_with[name])
                      for name in trained_with}
    OmegaConf.update(run_cfg, "eval", benchmarks, merge=False)
    return run_cfg


def _unique_name(name: str, taken: Sequence[str], path: Path) -> str:
    return name if name not in taken else f"{name} ({path.parents[1].name})"


def evaluate_checkpoint(cfg: DictConfig, path: Path, taken: Sequence[str],
                        oracles: dict[str, dict[str, Any]] | None = None) -> tuple[ModelResult, Prepared]:
    """Evaluate one training checkpoint on its benchmarks; the row is named after its experiment. ``oracles``
    collects the teacher-oracle metrics of its benchmarks (the first checkpoint evaluated on a benchmark fills it)."""
    meta = load_checkpoint(path)["captionless3d"]
    name = _unique_name(str(meta.get("experiment", path.stem)), taken, path)
    run_cfg = _run_config(cfg, meta["config"])
    prepared = prepare(run_cfg, with_priors=False)
    if prepared.teacher.dim != meta["teacher_dim"]:
        raise CheckpointError(
            f"{path}: trained for a {meta['teacher_dim']}-d teacher ({meta['teacher_id']}), "
            f"but the configured teacher {prepared.teacher.id} is {prepared.teacher.dim}-d"
        )
    if prepared.teacher.id != meta["teacher_id"]:
        log.warning("teacher differs from training: %s (train) vs %s (eval)", meta["teacher_id"], prepared.teacher.id)
    encoder = instantiate(run_cfg.model, key="model", embed_dim=meta["teacher_dim"])
    load_encoder_weights(encoder, path)
    own = evaluate_oracles(prepared.benchmarks)
    if oracles is not None:
        for bench, values in own.items():
            oracles.setdefault(bench, values)
    results = run_benchmarks(
        encoder, prepared.benchmarks, model_name=name, output_dir=Path(cfg.paths.run_dir) / "models" / name,
        checkpoint=str(path), oracles=own,
    )
    params_m = sum(p.numel() for p in encoder.parameters()) / 1e6
    budget = comparable_signature(meta)
    notes = (f"checkpoint {path}; {budget['max_epochs']} epochs, {budget['n_points']} points, batch "
             f"{budget['batch_size']}, seed {budget['seed']}")
    return ModelResult(name, results, params_m, notes), prepared


def evaluate_baseline(cfg: DictConfig, name: str, prepared: Prepared,
                      oracles: dict[str, dict[str, Any]] | None = None) -> ModelResult:
    """A training-free baseline (``configs/baseline/<name>.yaml``) built around the reference checkpoint's teacher."""
    encoder = instantiate(cfg.baseline[name], key=f"baseline.{name}", teacher=prepared.teacher)
    results = run_benchmarks(encoder, prepared.benchmarks, model_name=name,
                             output_dir=Path(cfg.paths.run_dir) / "models" / name, oracles=oracles)
    params_m = sum(p.numel() for p in encoder.parameters() if p.requires_grad) / 1e6
    return ModelResult(name, results, params_m, f"training-free, teacher {prepared.teacher.id}")


def write_combined_tables(results: Sequence[ModelResult], output_dir: Path,
                          oracles: dict[str, dict[str, Any]] | None = None) -> dict[str, ResultsTable]:
    """One table per benchmark with a row per model (and the ``teacher-oracle`` reference row where the benchmark
    has renders), written to ``<output_dir>/results/<benchmark>/`` and ``<output_dir>/results.md``; returns
    ``{benchmark: table}``.
    The chance row is the first model's (every model is evaluated on the same split)."""
    from captionless3d.evaluation.callbacks import ORACLE_NOTE
    from captionless3d.evaluation.oracle import ORACLE_NAME
    from captionless3d.evaluation.runner import PROTOCOL

    benchmarks = list(dict.fromkeys(b for r in results for b in r.results))
    tables: dict[str, ResultsTable] = {}
    for bench in benchmarks:
        oracle = (oracles or {}).get(bench)
        chance = next(r.results[bench].chance for r in results if bench in r.results)
        table = ResultsTable(protocol=PROTOCOL + (f" {ORACLE_NOTE}" if oracle else ""), title=f"{bench}: all models",
                             chance=chance)
        for result in results:
            if bench in result.results:
                table.add(result.name, result.results[bench].metrics, params_m=result.params_m, notes=result.notes)
        if oracle:
            table.add(ORACLE_NAME, oracle, notes="the teacher's own mean render embedding of each shape",
                      reference=True)
        table.save(output_dir / "results" / bench)
        tables[bench] = table
    text = "\n\n".join(t.to_markdown() for t in tables.values())
    atomic_write_bytes(output_dir / "results.md", text.encode("utf-8"))
    return tables


def run_eval(cfg: DictConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """Evaluate the checkpoints of ``ckpt`` and the baselines of ``baseline=[...]`` on the benchmarks of ``eval=[...]``
    (default: those each checkpoint was trained with). Returns ``{model: {benchmark: metrics}}``."""
    output_dir = Path(cfg.paths.output_dir)
    paths = select_checkpoints(cfg.get("ckpt"), output_dir)
    baselines = list((cfg.get("baseline") or {}).keys())
    if not paths:
        raise ConfigError("ckpt: no checkpoint selected; baselines need a checkpoint's data and teacher config "
                          "(ckpt=<path>|latest|all)")
    results: list[ModelResult] = []
    reference: Prepared | None = None
    oracles: dict[str, dict[str, Any]] = {}
    for path in paths:
        result, prepared = evaluate_checkpoint(cfg, path, [r.name for r in results], oracles)
        results.append(result)
        reference = reference or prepared
    for name in baselines:
        results.append(evaluate_baseline(cfg, name, reference, evaluate_oracles(reference.benchmarks)))
    run_dir = Path(cfg.paths.run_dir)
    tables = write_combined_tables(results, run_dir, oracles)
    if len(results) > 1:  # a single model's table was already printed by run_benchmarks
        for bench, table in tables.items():
            print(compact_table(table, run_dir / "results" / bench / "results.md"), flush=True)
    return {r.name: r.metrics for r in results}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run_eval(cfg)
    except Captionless3DError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
