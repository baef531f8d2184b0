"""captionless3d.utils.threads: how many intra-op threads a stage takes when it is told to choose."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from captionless3d.utils import threads

STAT = """cpu  {a_busy_total} 0 0 {a_idle_total} 0 0 0 0 0 0
cpu0 {b0} 0 0 {i0} 5 0 0 0 0 0
cpu1 {b1} 0 0 {i1} 0 0 0 0 0 0
intr 12345
"""


def _stat(b0: int, i0: int, b1: int, i1: int) -> str:
    return STAT.format(a_busy_total=b0 + b1, a_idle_total=i0 + i1, b0=b0, i0=i0, b1=b1, i1=i1)


def _self_stat(utime: int, stime: int) -> str:
    # the command name may hold spaces and parentheses; fields 14/15 are utime/stime
    rest = " ".join(["S"] + ["0"] * 10 + [str(utime), str(stime)] + ["0"] * 30)
    return f"4242 (python (x) y) {rest}"


def test_cpu_ticks_sums_the_chosen_cpus_and_skips_the_total_line():
    text = _stat(100, 50, 30, 120)
    assert threads._cpu_ticks(text, None) == (130, 305, 2)  # cpu0's iowait 5 counts as idle
    assert threads._cpu_ticks(text, {1}) == (30, 150, 1)
    assert threads._cpu_ticks(text, {7}) is None
    assert threads._own_ticks(_self_stat(12, 3)) == 15


def _reader(texts: dict[str, list[str]]):
    def read(path: str) -> str:
        return texts[path].pop(0)
    return read


def test_busy_cores_elsewhere_subtracts_the_callers_own_work():
    # 100 ticks per CPU pass; cpu0 fully busy, cpu1 half busy; this process used 50 of those busy ticks
    read = _reader({"/proc/stat": [_stat(0, 0, 0, 0), _stat(100, 0, 50, 50)],
                    "/proc/self/stat": [_self_stat(10, 0), _self_stat(50, 10)]})
    busy = threads.busy_cores_elsewhere(0.0, read=read, sleep=lambda s: None, cpus={0, 1})
    assert busy == pytest.approx(1.0)  # (150 - 50) busy ticks / 100 ticks per CPU

    # only this process worked: nothing else is busy (the load average would have said 1.5 cores)
    read = _reader({"/proc/stat": [_stat(0, 0, 0, 0), _stat(100, 0, 50, 50)],
                    "/proc/self/stat": [_self_stat(0, 0), _self_stat(120, 30)]})
    assert threads.busy_cores_elsewhere(0.0, read=read, sleep=lambda s: None, cpus={0, 1}) == 0.0

    # restricted to cpu1 (an affinity mask): only its ticks count
    read = _reader({"/proc/stat": [_stat(0, 0, 0, 0), _stat(100, 0, 50, 50)],
                    "/proc/self/stat": [_self_stat(0, 0), _self_stat(0, 0)]})
    assert threads.busy_cores_elsewhere(0.0, read=read, sleep=lambda s: None, cpus={1}) == pytest.approx(0.5)


def test_busy_cores_elsewhere_is_none_without_proc():
    def missing(path: str) -> str:
        raise FileNotFoundError(path)
    assert threads.busy_cores_elsewhere(0.0, read=missing, sleep=lambda s: None) is None
    read = _reader({"/proc/stat": ["intr 1\n", "intr 2\n"], "/proc/self/stat": [_self_stat(0, 0)] * 2})
    assert threads.busy_cores_elsewhere(0.0, read=read, sleep=lambda s: None) is None
    # a malformed cpu line or self-stat: no figure rather than a wrong one (auto_threads falls back to the load)
    read = _reader({"/proc/stat": ["cpu0 1 x 3 4\n"] * 2, "/proc/self/stat": [_self_stat(0, 0)] * 2})
    assert threads.busy_cores_elsewhere(0.0, read=read, sleep=lambda s: None) is None
    read = _reader({"/proc/stat": [_stat(0, 0, 0, 0)] * 2, "/proc/self/stat": ["4242 (python) S 1 2"] * 2})
    assert threads.busy_cores_elsewhere(0.0, read=read, sleep=lambda s: None) is None


@pytest.mark.parametrize(("busy", "load", "expected"), [(0.0, 2.0, 2), (1.1, 0.0, 1), (5.0, 0.0, 1),
                                                        (None, 1.0, 1), (None, 0.2, 2)])
def test_auto_threads_takes_the_cores_nobody_else_uses(monkeypatch, busy, load, expected):
    asked = []
    monkeypatch.setattr(threads, "busy_cores_elsewhere", lambda cpus=None: asked.append(cpus) or busy)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert threads.auto_threads() == expected
        assert asked == [{0, 1}]  # the affinity mask, read once, is what gets sampled
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not (sys.platform.startswith("linux") and hasattr(os, "sched_setaffinity")),
                    reason="reads /proc and pins a process to a CPU")
def test_busy_cores_elsewhere_sees_a_real_busy_process():
    cpu = min(os.sched_getaffinity(0))
    child = subprocess.Popen([sys.executable, "-c", "import os, time\n"
                              f"os.sched_setaffinity(0, {{{cpu}}})\n"
                              "t = time.time() + 30\nwhile time.time() < t: pass\n"])
    try:
        threads.busy_cores_elsewhere(0.3, cpus={cpu})  # let the child start and pin itself
        assert threads.busy_cores_elsewhere(0.5, cpus={cpu}) > 0.8
    finally:
        child.kill()
        child.wait()
