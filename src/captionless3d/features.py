"""Feature extraction entry point: ``python -m captionless3d.features data=<data> teacher=<teacher> [key=value ...]``.

Builds the collection and the teacher exactly as training does (:mod:`captionless3d.pipeline`), then embeds every
view, photo and masked photo of every object, the class prompts and the landmarks into a sharded feature store
(:mod:`captionless3d.teacher.store_format`) through Lightning's predict loop
(:mod:`captionless3d.teacher.distributed`): one device by default, many with ``trainer.devices=N
trainer.strategy=ddp`` (and ``trainer.num_nodes`` on a cluster). fp16 autocast on GPU, a progress bar, and an
images/s readout at the end. The store lands in ``${paths.cache_dir}/features/<key hash>``, where training finds
and reuses it. A killed run resumes where it stopped when the same command is run again. Config:
``configs/features.yaml``.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from captionless3d.errors import CacheError, Captionless3DError, ConfigError
from captionless3d.hydra_utils import CONFIG_DIR
from captionless3d.pipeline import build_collection, build_teacher, feature_store_dir

log = logging.getLogger("captionless3d.features")


def rank_device(trainer_cfg: Any) -> str | None:
    """The CUDA device this process's rank computes on (``LOCAL_RANK``, set by the DDP launcher), or ``None`` on CPU."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if not (accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())):
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return f"cuda:{int(list(devices)[local_rank])}"
    return f"cuda:{local_rank}"


def run_features(cfg: DictConfig) -> dict[str, Any]:
    """Extract (or finish, or verify) the feature store of ``cfg.data`` x ``cfg.teacher``. Returns a summary."""
    from captionless3d.teacher.distributed import extract_features_distributed
    from captionless3d.teacher.features import feature_store_key, load_feature_store

    for name in ("shard_size", "batch_size"):
        if int(cfg[name]) < 1:
            raise ConfigError(f"{name} must be >= 1, got {cfg[name]}")
    collection = build_collection(cfg.data)
    teacher_cfg = cfg.teacher
    device = rank_device(cfg.trainer)
    if device is not None and "factory" in teacher_cfg:
        teacher_cfg = OmegaConf.create(OmegaConf.to_container(teacher_cfg, resolve=True))
        with open_dict(teacher_cfg):
            teacher_cfg.factory.device = device
    teacher = build_teacher(teacher_cfg, collection)
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else feature_store_dir(cfg, collection, teacher)
    landmarks = getattr(collection, "landmarks", None)
    if not cfg.get("force", False) and (out_dir / "manifest.json").is_file():
        key = feature_store_key(collection, teacher, prompt_template=cfg.prompt_template, landmarks=landmarks)
        try:
            store = load_feature_store(out_dir, key, verify_checksums=bool(cfg.get("verify_finished", True)))
            print(f"feature store {out_dir} is complete and verified (teacher {teacher.id}, view_emb "
                  f"{tuple(store.view_emb.shape)}); nothing to do (force=true rebuilds)", flush=True)
            return {"out_dir": str(out_dir), "reused": True, "stats": store.stats}
        except CacheError as exc:
            log.warning("feature store %s is stale or damaged (%s); rebuilding", out_dir, exc)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    store = extract_features_distributed(
        collection,
        teacher,
        out_dir,
        trainer_kwargs=trainer_kwargs,
        prompt_template=cfg.prompt_template,
        landmarks=landmarks,
        batch_size=int(cfg.batch_size),
        shard_size=int(cfg.shard_size),
        chunk_objects=None if cfg.get("chunk_objects") is None else int(cfg.chunk_objects),
        num_workers=int(cfg.get("num_workers", 0)),
        num_threads=None if cfg.get("num_threads") is None else int(cfg.num_threads),
        progress=bool(cfg.get("progress", True)),
        verify_finished=bool(cfg.get("verify_finished", True)),
    )
    return {"out_dir": str(out_dir), "reused": False, "stats": store.stats}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="features")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run_features(cfg)
    except Captionless3DError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
