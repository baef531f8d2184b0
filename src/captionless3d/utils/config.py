"""Plain-dict helpers for the resolved training configs that checkpoints carry."""
from __future__ import annotations

import os
from typing import Any

__all__ = ["reroot", "with_cache_dir"]


def reroot(obj: Any, old: str, new: str) -> Any:
    """Replace the path prefix ``old`` of every string in a nested dict/list config by ``new``.

    Only whole path components match: ``/old/cache/worlds`` becomes ``/new/worlds`` but ``/old/cachex`` is kept.
    """
    if isinstance(obj, dict):
        return {k: reroot(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [reroot(v, old, new) for v in obj]
    if isinstance(obj, str) and (obj == old or obj.startswith(old.rstrip("/") + "/")):
        return new + obj[len(old):] if obj != old else new
    return obj


def with_cache_dir(config: dict[str, Any], cache_dir: str | os.PathLike | None) -> dict[str, Any]:
    """``config`` with every path under its ``paths.cache_dir`` moved to ``cache_dir`` (the caches moved since
    training); unchanged when ``cache_dir`` is ``None`` or the config records no cache directory."""
    old = (config.get("paths") or {}).get("cache_dir")
    if cache_dir is None or not old:
        return config
    return reroot(config, str(old), str(cache_dir))
