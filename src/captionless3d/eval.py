"""Evaluation entry point: ``python -m captionless3d.eval ckpt=<path|latest>`` (``make eval``).

Loads a training checkpoint safely (``weights_only=True``), checks its format version and teacher, rebuilds or reuses
the data/teacher/feature stages its own config names, and writes the results table into the eval run directory.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from captionless3d.errors import Captionless3DError, CheckpointError
from captionless3d.evaluation.callbacks import load_encoder_weights, run_benchmarks
from captionless3d.hydra_utils import CONFIG_DIR, instantiate
from captionless3d.pipeline import prepare
from captionless3d.training.module import CHECKPOINT_FORMAT_VERSION

log = logging.getLogger("captionless3d.eval")


def find_latest_checkpoint(output_dir: Path) -> Path:
    candidates = sorted((output_dir / "train").glob("**/checkpoints/best*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"ckpt=latest: no checkpoints/best*.ckpt under {output_dir / 'train'}; train first or pass ckpt=<path>")
    return candidates[-1]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a Lightning checkpoint with ``weights_only=True`` and validate its captionless3d metadata."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated/corrupt file or a non-checkpoint pickle
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    meta = checkpoint.get("captionless3d") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a captionless3d training checkpoint (no 'captionless3d' metadata)")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this code reads "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade captionless3d"
        )
    return checkpoint


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on the benchmarks of ``eval=[...]`` (default: those it was trained with)."""
    path = find_latest_checkpoint(Path(cfg.paths.output_dir)) if cfg.ckpt == "latest" else Path(cfg.ckpt)
    checkpoint = load_checkpoint(path)
    meta = checkpoint["captionless3d"]
    run_cfg = OmegaConf.create(meta["config"])
    if cfg.get("eval"):
        # new benchmarks resolve their ${paths...}/${data...} references against the training config + these paths
        run_cfg.paths = cfg.paths
        OmegaConf.update(run_cfg, "eval", OmegaConf.to_container(cfg.eval), merge=False)
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
    return run_benchmarks(
        encoder,
        prepared.benchmarks,
        model_name=str(meta.get("experiment", path.stem)),
        output_dir=Path(cfg.paths.run_dir),
        checkpoint=str(path),
    )


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
