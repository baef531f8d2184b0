"""Torch intra-op thread counts: the one place in the package that sets them (the point ops' hot loops included,
:mod:`captionless3d.models.ops`)."""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import torch

from captionless3d.errors import ConfigError

__all__ = ["auto_threads", "busy_cores_elsewhere", "set_torch_threads", "torch_threads"]


#: How long :func:`busy_cores_elsewhere` watches the CPUs, in seconds: long enough to see a busy core at 100 Hz
#: accounting (20 ticks), short next to the work it sizes (a teacher trains for minutes).
BUSY_WINDOW_S = 0.2


def _cpu_ticks(stat_text: str, cpus: set[int] | None) -> tuple[int, int, int] | None:
    """(busy ticks, total ticks, CPUs counted) over the ``cpuN`` lines of ``/proc/stat`` text whose N is in
    ``cpus`` (all of them when ``None``); ``None`` when the text has no such line. Busy is everything but idle and
    iowait. Only the first 8 fields are summed: guest time is already inside user time."""
    busy = total = n = 0
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        fields = [int(v) for v in rest.split()[:8]]
        if len(fields) < 4:
            continue
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        busy += sum(fields) - idle
        total += sum(fields)
        n += 1
    return (busy, total, n) if n else None


def _own_ticks(self_stat_text: str) -> int:
    """utime + stime of this process (every thread), in clock ticks, from ``/proc/self/stat`` text. The command
    name (field 2) may hold spaces and parentheses, so fields are counted after its last ``)``."""
    fields = self_stat_text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), counted from the state (field 3)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def busy_cores_elsewhere(window_s: float = BUSY_WINDOW_S, *, read=_read, sleep=time.sleep,
                         cpus: set[int] | None = None) -> float | None:
    """Cores kept busy by *other* processes over the next ``window_s`` seconds, on the CPUs this process may run on
    (its affinity mask; ``cpus`` overrides it); ``None`` where ``/proc`` cannot be read (not Linux).

    Busy ticks of those CPUs (``/proc/stat``) minus this process's own (``/proc/self/stat``), divided by the
    window's total ticks per CPU. Unlike the load average, this does not count the caller's own recent work: a
    pipeline that has just generated a world on every core would otherwise see its cores as taken and train the
    teacher on one thread. ``read`` and ``sleep`` are injectable for tests.
    """
    if cpus is None and hasattr(os, "sched_getaffinity"):
        cpus = set(os.sched_getaffinity(0))
    try:
        before, own_before = _cpu_ticks(read("/proc/stat"), cpus), _own_ticks(read("/proc/self/stat"))
        sleep(window_s)
        after, own_after = _cpu_ticks(read("/proc/stat"), cpus), _own_ticks(read("/proc/self/stat"))
    except (OSError, ValueError, IndexError):
        return None
    if before is None or after is None:
        return None
    d_busy, d_total = after[0] - before[0], after[1] - before[1]
    if d_total <= 0:
        return None
    return max(0.0, (d_busy - (own_after - own_before)) * after[2] / d_total)


def auto_threads() -> int:
    """Torch intra-op threads to use now: the cores this process may use that other processes are not keeping busy
    (:func:`busy_cores_elsewhere`; the 1-minute load average where ``/proc`` is missing), at least 1 and at most
    torch's current setting.

    OpenMP barriers make every op wait for its slowest thread, so a thread that shares its core with another busy
    process slows the whole op down (docs/pointnext_speed.md has the measurement on the 2-core machine).
    """
    current = torch.get_num_threads()
    cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores = len(cpus) if cpus else (os.cpu_count() or current)
    busy = busy_cores_elsewhere(cpus=cpus)
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            return current
    return max(1, min(current, cores - int(round(busy))))


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
