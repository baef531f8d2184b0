"""Wall-clock time of a callable with its device synchronised: the measurement the benchmarks share."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["synchronize", "time_calls"]


def synchronize(device: torch.device | str) -> None:
    """Wait for the queued work of a CUDA ``device`` (``"cuda"`` = the current one); nothing on other devices."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device | str, *, warmup: int = 1, repeats: int = 5) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls; ``device`` is synchronised
    after the warm-up and after every timed call, so each time covers the call's queued GPU work."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times
