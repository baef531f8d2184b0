"""The Python API: ``captionless3d.load(checkpoint)`` -> :class:`Captionless3DModel` (encode points / images /
texts, zero-shot classification, a persistent shape index and search). See :mod:`captionless3d.api.model`."""
from __future__ import annotations

from captionless3d.api.model import DEFAULT_PROMPT_TEMPLATE, Captionless3DModel, build_teacher_from_config, load
from captionless3d.shape_index import Hit, ShapeIndex

__all__ = ["load", "Captionless3DModel", "ShapeIndex", "Hit", "DEFAULT_PROMPT_TEMPLATE", "build_teacher_from_config"]
