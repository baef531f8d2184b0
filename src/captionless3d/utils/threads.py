"""Torch intra-op thread counts: the one place in the package that sets them (the point ops' hot loops included,
:mod:`captionless3d.models.ops`)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from captionless3d.errors import ConfigError

__all__ = ["auto_threads", "set_torch_threads", "torch_threads"]


def auto_threads() -> int:
    """Torch intra-op threads to use now: the cores not already busy (1-minute load average), at least 1 and at most
    torch's current setting.

    OpenMP barriers make every op wait for its slowest thread, so a thread that shares its core with another busy
    process slows the whole op down (docs/pointnext_speed.md has the measurement on the 2-core machine).
    """
    current = torch.get_num_threads()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return current
    free = (os.cpu_count() or current) - int(round(load))
    return max(1, min(current, free))


def _resolve(num_threads: int | None) -> int:
    if num_threads is None:
        return auto_threads()
    if isinstance(num_threads, bool) or int(num_threads) < 0:
        raise ConfigError("num_threads: expected a thread count >= 0 (0: unchanged) or null (auto), got "
                          f"{num_threads!r}")
    return int(num_threads) or torch.get_num_threads()


def set_torch_threads(num_threads: int | None) -> int:
    """Set torch's intra-op thread count for the rest of the process and return it: ``n >= 1`` threads, ``0``
    unchanged, ``None`` :func:`auto_threads`."""
    n = _resolve(num_threads)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[int]:
    """Temporarily ``num_threads`` intra-op threads (``0``: unchanged, ``None``: :func:`auto_threads`); the previous
    count is restored on exit. Yields the count in effect."""
    previous = torch.get_num_threads()
    n = _resolve(num_threads)
    if n == previous:
        yield n
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)
