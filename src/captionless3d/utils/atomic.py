"""Atomic artefact writes: temp file in the same directory -> fsync -> os.replace.

A reader never sees a half-written file: either the old artefact or the complete new one. If the writer raises, the
temp file is removed and the old artefact stays untouched.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from captionless3d.errors import CacheError


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temp file next to ``path``; on clean exit fsync it and rename it over ``path``.

    Any exception inside the block deletes the temp file and re-raises wrapped in :class:`CacheError` naming ``path``.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open needs a write mode, got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, (KeyboardInterrupt, SystemExit, CacheError)):
            raise
        raise CacheError(f"could not write {target}: {type(exc).__name__}: {exc}; the previous file (if any) is intact") from exc


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    payload = json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode("utf-8")
    atomic_write_bytes(path, payload)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` through :func:`atomic_open` (no pickles: object arrays are refused)."""
    array = np.asarray(array)
    if array.dtype == object:
        raise CacheError(f"refusing to write object array to {path}")
    with atomic_open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Run ``writer(tmp_path)`` (for libraries that insist on a path, e.g. ``torch.save``), then rename atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, (KeyboardInterrupt, SystemExit, CacheError)):
            raise
        raise CacheError(f"could not write {target}: {type(exc).__name__}: {exc}; the previous file (if any) is intact") from exc


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
