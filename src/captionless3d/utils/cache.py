"""Load-or-build under a file lock: the one pattern every cache directory (world, teacher, feature store, prior
stores) is reused or rebuilt through."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

from captionless3d.errors import CacheError
from captionless3d.utils.manifest import MANIFEST_NAME

__all__ = ["load_or_build"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def load_or_build(
    directory: str | os.PathLike,
    load: Callable[[], T],
    build: Callable[[], T],
    *,
    what: str,
    lock: str | os.PathLike | None = None,
    rebuild_stale: bool = True,
) -> T:
    """``load()`` the cache in ``directory`` when it has a manifest that ``load`` accepts, else ``build()`` it.

    Both run under a file lock (``lock``, default ``<directory>.lock``), so concurrent runs that share the cache build
    it once and the others then load it. ``load`` raises :class:`CacheError` for a stale or corrupt cache (a key
    that does not match, a checksum): it is rebuilt with a warning naming ``what``, the directory and the reason, or,
    with ``rebuild_stale=False``, the error propagates. ``build`` writes the directory atomically, manifest last.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock) if lock is not None else str(directory) + ".lock"):
        if (directory / MANIFEST_NAME).is_file():
            try:
                loaded = load()
                log.info("reusing %s %s", what, directory)
                return loaded
            except CacheError as exc:
                if not rebuild_stale:
                    raise
                log.warning("%s %s is stale or corrupt (%s); rebuilding", what, directory, exc)
        return build()
