"""Stage runner: world/data → teacher → feature store → prior stores.

Each stage is cached on disk behind a manifest; ``prepare`` reuses every cache whose manifest matches and (re)builds
the rest. The default synthetic run and a real ShapeNet + OpenCLIP run go through exactly this code; only the Hydra
configs differ.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from captionless3d.errors import ConfigError, DataError
from captionless3d.hydra_utils import instantiate
from captionless3d.utils.manifest import stable_hash

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Everything a training or evaluation run needs, with the seconds each stage took."""

    collection: Any
    teacher: Any
    features: Any
    priors: list[Any]
    benchmarks: dict[str, Benchmark] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Benchmark:
    """One evaluation benchmark: a collection, its teacher features and the runner settings (``eval.<name>``)."""

    name: str
    collection: Any
    features: Any
    runner: dict[str, Any]
    teacher: Any = None  # embeds averaged prompt sets (runner.templates) at evaluation time


def _timed(timings: dict[str, float], name: str):
    class _Timer:
        def __enter__(self):
            self.start = time.perf_counter()
            log.info("stage %s ...", name)

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.start, 2)
            if exc[0] is None:
                log.info("stage %s done in %.1f s", name, timings[name])

    return _Timer()


def build_collection(data_cfg: DictConfig) -> Any:
    if "collection" not in data_cfg:
        raise ConfigError("data.collection is missing: a data config must say how to build its collection")
    return instantiate(data_cfg.collection, key="data.collection", _convert_="all")


def build_teacher(teacher_cfg: DictConfig, collection: Any | None) -> Any:
    if "factory" not in teacher_cfg:
        raise ConfigError("teacher.factory is missing: a teacher config must name its factory (_target_)")
    if teacher_cfg.get("trained_on_collection", False):
        if collection is None:
            raise ConfigError("teacher.trained_on_collection=true needs the data collection")
        return instantiate(teacher_cfg.factory, collection, key="teacher.factory", _convert_="all")
    return instantiate(teacher_cfg.factory, key="teacher.factory", _convert_="all")


def feature_store_dir(cfg: DictConfig, collection: Any, teacher: Any) -> Path:
    """``<paths.cache_dir>/features/<hash of the store key>``: where training looks for (and builds) the feature
    store of this (collection, teacher, prompt template, landmarks); ``python -m captionless3d.features`` writes there
    too, so a store extracted ahead of time (e.g. on many GPUs) is reused by training."""
    from captionless3d.teacher.features import feature_store_key

    landmarks = getattr(collection, "landmarks", None)
    key = feature_store_key(collection, teacher, prompt_template=cfg.prompt_template, landmarks=landmarks)
    return Path(cfg.paths.cache_dir) / "features" / stable_hash(key)


def build_features(cfg: DictConfig, collection: Any, teacher: Any) -> Any:
    """The feature store of (collection, teacher): reused, built, or — for a collection that ships precomputed view
    embeddings instead of renders (the paper's ``.pth`` layout, OpenShape ``image_feat``) — imported."""
    from captionless3d.teacher.features import ensure_feature_store

    views = getattr(collection, "views", None)
    if getattr(collection, "view_emb", None) is not None and (views is None or int(views.shape[1]) == 0):
        from captionless3d.teacher.interop import ensure_imported_feature_store

        return ensure_imported_feature_store(
            collection,
            teacher,
            feature_store_dir(cfg, collection, teacher),
            source=f"{getattr(collection, 'name', 'collection')}.view_emb",
            prompt_template=cfg.prompt_template,
            landmarks=getattr(collection, "landmarks", None),
        )
    return ensure_feature_store(
        collection,
        teacher,
        feature_store_dir(cfg, collection, teacher),
        prompt_template=cfg.prompt_template,
        landmarks=getattr(collection, "landmarks", None),
    )


def build_priors(cfg: DictConfig, collection: Any, features: Any) -> list[Any]:
    """The run's prior stores (dense, sparse or none; guarded when ``mining.guard`` is set): reused from the cache or
    built by :func:`captionless3d.mining.build.ensure_prior_stores`."""
    from captionless3d.mining.build import ensure_prior_stores

    mining = OmegaConf.to_container(cfg.mining, resolve=True)
    return ensure_prior_stores(mining, features=features, collection=collection, cache_dir=cfg.paths.cache_dir)


def build_benchmarks(cfg: DictConfig, collection: Any, teacher: Any, features: Any) -> dict[str, Benchmark]:
    """``eval.<name>`` entries → benchmarks; ``collection: null`` means the training collection's held-out split."""
    benchmarks: dict[str, Benchmark] = {}
    for name, bench_cfg in (cfg.get("eval") or {}).items():
        if bench_cfg is None or "runner" not in bench_cfg:
            raise ConfigError(f"eval.{name}: a benchmark needs a 'runner' section (split, n_points, protocols)")
        if bench_cfg.get("collection") is None:
            bench_collection, bench_features = collection, features
        else:
            bench_collection = instantiate(bench_cfg.collection, key=f"eval.{name}.collection", _convert_="all")
            bench_features = build_features(cfg, bench_collection, teacher)
        runner = OmegaConf.to_container(bench_cfg.runner, resolve=True)
        benchmarks[name] = Benchmark(name, bench_collection, bench_features, runner, teacher)
    return benchmarks


def prepare(cfg: DictConfig, *, with_priors: bool = True) -> Prepared:
    """Run (or reuse) every stage up to the prior stores."""
    timings: dict[str, float] = {}
    with _timed(timings, "data"):
        collection = build_collection(cfg.data)
    if with_priors:  # training needs a train and a validation split; the test split is optional
        for split in ("train", "val"):
            if len(collection.indices(split)) == 0:
                raise DataError(f"data split '{split}' of {collection.name} is empty: nothing to train/validate on")
    with _timed(timings, "teacher"):
        teacher = build_teacher(cfg.teacher, collection)
    with _timed(timings, "features"):
        features = build_features(cfg, collection, teacher)
    priors: list[Any] = []
    if with_priors:
        with _timed(timings, "priors"):
            priors = build_priors(cfg, collection, features)
    with _timed(timings, "benchmarks"):
        benchmarks = build_benchmarks(cfg, collection, teacher, features)
    return Prepared(collection, teacher, features, priors, benchmarks, timings)
