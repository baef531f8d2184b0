"""captionless3d.

``captionless3d.load(checkpoint)`` returns a trained student as a :class:`captionless3d.api.Captionless3DModel`
(imported lazily, so ``import captionless3d.<module>`` stays light).
"""
from __future__ import annotations

from typing import Any

from captionless3d.version import __version__

__all__ = ["load", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from captionless3d.api import load

        return load
    raise AttributeError(f"module 'captionless3d' has no attribute {name!r}")
