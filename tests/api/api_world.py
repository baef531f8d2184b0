"""Helpers of the API / CLI / export tests: a small but real checkpoint on a ~220-object synthetic world.

The checkpoint has exactly the layout :class:`captionless3d.training.module.CaptionlessModule` writes: ``state_dict``
with ``encoder.*`` weights and the ``captionless3d`` metadata (format version, teacher id/dim, data fingerprint,
experiment, the full resolved training config of ``data=synthetic_tiny teacher=synthetic_tiny`` with 45 training
objects per category). The encoder is PointNeXt-S as configured, randomly initialised with a fixed seed, BatchNorm
running statistics estimated on training clouds (so eval-mode outputs are well scaled); the world and the tiny teacher
are the real cached pipeline stages. ``tests/api/test_api_trained.py`` also runs the real training entry point.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

TINY = ["data=synthetic_tiny", "teacher=synthetic_tiny"]
#: 4 categories x (4 teacher + 45 train + 2 val + 5 test) = 224 objects; 208 outside the teacher split.
WORLD = ["data.collection.n_train=45", "data.collection.n_test=5"]


def compose_config(root: Path, overrides: Sequence[str] = ()) -> Any:
    from hydra import compose, initialize_config_dir

    from captionless3d.hydra_utils import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[*TINY, *WORLD, "experiment=avg", f"paths.cache_dir={root / 'cache'}",
                                           f"paths.output_dir={root / 'outputs'}", f"paths.run_dir={root / 'run'}",
                                           *overrides])


def build_checkpoint(root: Path, overrides: Sequence[str] = (), *, seed: int = 0) -> tuple[Path, Any, Any]:
    """Write ``<root>/run/checkpoints/best.ckpt``; returns (path, collection, teacher)."""
    from omegaconf import OmegaConf

    from captionless3d.data.pointcloud import normalise_unit_sphere
    from captionless3d.hydra_utils import instantiate
    from captionless3d.pipeline import build_collection, build_teacher
    from captionless3d.training.module import CHECKPOINT_FORMAT_VERSION

    cfg = compose_config(root, overrides)
    collection = build_collection(cfg.data)
    teacher = build_teacher(cfg.teacher, collection)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = instantiate(cfg.model, key="model", embed_dim=teacher.dim)
        norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for bn in norms:  # cumulative running statistics over two train-mode passes
            bn.momentum = None
            bn.reset_running_stats()
        train = np.asarray(collection.points[collection.indices("train")])
        n = int(cfg.data.loader.n_points)
        encoder.train()
        with torch.no_grad():
            for start in (0, 16):
                encoder(normalise_unit_sphere(torch.from_numpy(np.ascontiguousarray(train[start:start + 16, :n]))))
        for bn in norms:
            bn.momentum = 0.1
    metadata = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "teacher_id": teacher.id,
        "teacher_dim": teacher.dim,
        "data_fingerprint": collection.fingerprint,
        "experiment": str(cfg.experiment_name),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    path = root / "run" / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "captionless3d": metadata, "epoch": 0, "global_step": 0}, path)
    return path, collection, teacher


def rewrite_checkpoint(src: Path, dst: Path, **meta: Any) -> Path:
    """A copy of checkpoint ``src`` at ``dst`` with some ``captionless3d`` metadata fields replaced."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["captionless3d"].update(meta)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, dst)
    return dst


def machine_paths_in(directory: Path, *machine: Path | str) -> list[str]:
    """``"<file>: <path>"`` for each absolute path of the exporting machine found in a file of ``directory`` (every
    file, read as bytes: configs, model cards, weights, graphs; a zip archive such as a TorchScript file member by
    member, decompressed): ``machine`` (e.g. the run's root) and this checkout, the interpreter's prefix, the working
    and the home directory, each as given and resolved."""
    import os
    import sys
    import zipfile

    import captionless3d

    candidates = [*machine, Path(captionless3d.__file__).parents[2], sys.prefix, os.getcwd(), Path.home()]
    roots = {str(p) for c in candidates for p in (Path(c), Path(c).resolve()) if p.is_absolute() and len(p.parts) > 1}
    found = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = b"\n".join(archive.read(member) for member in archive.namelist())
        else:
            data = path.read_bytes()
        found += [f"{path.name}: {root}" for root in sorted(roots) if root.encode("utf-8") in data]
    return found


@dataclass
class World:
    root: Path
    ckpt: Path
    collection: Any
    teacher: Any


@dataclass
class Shapes:
    dir: Path
    paths: list[str]  # relative, "/"-separated, in object order
    objects: np.ndarray  # (S,) object index of each file
