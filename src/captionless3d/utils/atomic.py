"""Atomic artefact writes: temp file in the same directory -> fsync -> os.replace.

A reader never sees a half-written file: either the old artefact or the complete new one. If the writer raises, the
temp file is removed and the old artefact stays untouched. The renamed file gets the permissions a plain ``open(path,
"w")`` would have given it (``0o666 & ~umask``), not ``mkstemp``'s private ``0o600``, so shared caches stay readable.

A process killed with SIGKILL mid-write leaves a ``.<name>.<random>.tmp`` file next to the target (never the target
itself); :func:`remove_stale_temps` deletes such leftovers.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.errors import CacheError, Captionless3DError

TEMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Mode of every file written here: what ``open(path, "w")`` gives under the process umask (read once at import).
FILE_MODE = 0o666 & ~_current_umask()


def _make_temp(target: Path, error: type[Captionless3DError]) -> tuple[int, Path]:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as exc:  # read-only or full file system, missing permissions
        raise error(f"could not write {target}: cannot create a temp file in {target.parent}: {exc}") from exc
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:  # filesystems without POSIX modes
        pass
    return fd, Path(tmp_name)


def _fail(target: Path, tmp: Path, exc: BaseException, error: type[Captionless3DError]) -> None:
    """Remove the temp file; re-raise interrupts and our own errors as they are, wrap anything else naming
    ``target``."""
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    if isinstance(exc, (KeyboardInterrupt, SystemExit, Captionless3DError)):
        raise exc
    raise error(f"could not write {target}: {type(exc).__name__}: {exc}; the previous file (if any) is intact") from exc


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
def atomic_open(path: str | os.PathLike, mode: str = "wb", *,
                error: type[Captionless3DError] = CacheError) -> Iterator[io.IOBase]:
    """Open a temp file next to ``path``; on clean exit fsync it and rename it over ``path``.

    Any exception inside the block deletes the temp file and re-raises wrapped in ``error`` (default
    :class:`CacheError`) naming ``path``; interrupts (KeyboardInterrupt, SystemExit) and our own errors pass unchanged.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open needs a write mode, got {mode!r}")
    target = Path(path)
    fd, tmp = _make_temp(target, error)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        _fail(target, tmp, exc, error)


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


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None], *,
                      error: type[Captionless3DError] = CacheError) -> None:
    """Run ``writer(tmp_path)`` (for libraries that insist on a path, e.g. ``torch.save``), then rename atomically."""
    target = Path(path)
    fd, tmp = _make_temp(target, error)
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        _fail(target, tmp, exc, error)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, error: type[Captionless3DError] = CacheError) -> Iterator[Path]:
    """Build a whole directory artefact (several files + manifest) in a temp sibling and swap it in on success.

    Yields the temp directory to write into. If the body raises, the temp directory is removed and the old
    ``path`` is untouched. On success the old directory is renamed aside, the new one renamed into place, and the old
    one deleted; a crash between the two renames leaves ``path`` missing (a cache miss), never a mix of old and new.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmpdir", dir=target.parent))
    except OSError as exc:
        raise error(f"could not write {target}: cannot create a temp directory in {target.parent}: {exc}") from exc
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_current_umask())
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}") if target.exists() else None
        if old is not None:
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temps(directory: str | os.PathLike, *, older_than_s: float = 3600.0) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files that a killed writer left in ``directory`` (only those older than
    ``older_than_s`` seconds, so a concurrent writer's live temp file is never touched). Returns what was removed."""
    import time

    removed = []
    now = time.time()
    for tmp in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        try:
            if now - tmp.stat().st_mtime >= older_than_s:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            continue
    return removed


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
