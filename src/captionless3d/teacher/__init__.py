"""Frozen teachers (OpenCLIP, Hugging Face CLIP, and the project's own synthetic CLIP) and the cached FeatureStore of
their embeddings.

Heavy imports (torch, open_clip) happen inside the submodules; importing this package is cheap.
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "Teacher",
    "OpenCLIPTeacher",
    "create_teacher",
    "FeatureStore",
    "build_feature_store",
    "load_feature_store",
    "ensure_feature_store",
    "feature_store_key",
    "train_synthetic_teacher",
    "ensure_synthetic_teacher",
    "load_synthetic_teacher",
    "evaluate_teacher",
    "SYNTHETIC_CLIP_TINY",
    "HFCLIPTeacher",
    "create_hf_clip_teacher",
    "create",
    "TEACHER_BACKENDS",
    "zero_shot_classifier",
    "template_set",
    "TEMPLATE_SETS",
]

_WHERE = {
    "Teacher": "base",
    "OpenCLIPTeacher": "openclip",
    "create_teacher": "openclip",
    "FeatureStore": "features",
    "build_feature_store": "features",
    "load_feature_store": "features",
    "ensure_feature_store": "features",
    "feature_store_key": "features",
    "train_synthetic_teacher": "synthetic",
    "ensure_synthetic_teacher": "synthetic",
    "load_synthetic_teacher": "synthetic",
    "evaluate_teacher": "synthetic",
    "SYNTHETIC_CLIP_TINY": "synthetic",
    "HFCLIPTeacher": "hf_clip",
    "create_hf_clip_teacher": "hf_clip",
    "create": "registry",
    "TEACHER_BACKENDS": "registry",
    "zero_shot_classifier": "classifier",
    "template_set": "classifier",
    "TEMPLATE_SETS": "classifier",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
