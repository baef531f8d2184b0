"""Point-cloud operators of PointNeXt in pure PyTorch (CPU first), with the semantics of OpenPoints' CUDA kernels.

Layouts: coordinates are ``(B, N, 3)``; features inside this package are *channels-last* ``(B, N, C)`` (OpenPoints
keeps ``(B, C, N)``; a 1x1 convolution over channels-last data is a plain matrix multiplication).

Semantics matched to ``openpoints/cpp/pointnet2_batch``:

* :func:`furthest_point_sample` starts at index ``start`` (the CUDA kernel always starts at 0), keeps the running
  minimum squared distance (initialised to 1e10) and picks the arg-max each step. Ties go to the lowest index here;
  the CUDA block reduction breaks exact ties in a thread-dependent order, which only matters for duplicate points.
* :func:`ball_query` returns, for each query, the *first* ``nsample`` support indices in index order whose squared
  distance is ``< radius**2`` (strict), pads the remaining slots with the first index found, and returns all zeros
  when the ball is empty (the CUDA op zero-initialises its output). Distances are computed with a matrix product
  (``[q, 1] . [-2 s, |s|^2] < r^2 - |q|^2``), so a pair within ~1e-7 of the sphere boundary may be classified
  differently from the CUDA kernel's direct differences.

All index outputs are ``int64`` and carry no gradient. The batch is split into one contiguous slice per worker thread
(:func:`run_parts`); inside a slice FPS loops over the samples, vectorised over groups of clouds sized for the cache,
and ball query works on memory-bounded chunks (several small clouds at once, or one large cloud in support blocks).

Optional GPU kernels, one registry (:data:`_CUDA_OPS`) for CUDA tensors, CPU tensors always take the PyTorch path:

* ``ops_backend: cuda``: :func:`enable_cuda_ops` imports the compiled FPS / ball-query kernels of the ``pointnext``
  package (``pip install -e ".[cuda]"``) or OpenPoints' ``pointnet2_batch_cuda`` extension; from then on
  :func:`furthest_point_sample` (with ``start=0``) and :func:`ball_query` hand CUDA tensors to them (same semantics,
  see above).
* ``ops_backend: triton``: :func:`enable_triton_ops` registers the Triton kernels of
  :mod:`captionless3d.models.triton_ops` (FPS with any ``start``, ball query, :func:`knn`): compiled at run time by
  the Triton that ships with torch, nothing to build. ``ops_backend: auto`` (:func:`enable_auto_ops`): the same when
  a CUDA device is visible and the kernels pass a self-check there, otherwise the PyTorch ops. Opt-in: ``torch``
  stays the default until a GPU measurement shows Triton faster.

Export mode (:func:`export_mode`, and automatically while ``torch.jit.trace`` / ``torch.onnx.export`` record): the
same ops with the same results, written as one traceable graph. The CPU path above cannot be recorded: its batch
slices run on worker threads (the tracer sees only the calling thread), its loops are bounded by the batch size
(the trace would freeze it), the FPS loop is a TorchScript function with ``out=`` buffers and the ball query uses
``searchsorted`` (no ONNX equivalent). In export mode FPS is a plain Python loop over the samples (unrolled by the
tracer, vectorised over the batch), ball query and kNN materialise the whole ``(B, M, N)`` distance matrix and rank
it with ``topk`` / ``argmin`` (lowest index on ties, as here), and the fused grouped layers of
:mod:`captionless3d.models.pointnext` take their plain (``fused=False``) path; the gathers trace as they are. This is
how :mod:`captionless3d.export` traces the models' own ``forward``. It is slower and needs more memory, so training
and evaluation never use it.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

import torch
from torch import Tensor

from captionless3d.errors import DataError  # a ValueError subclass: bad shapes / arguments name the op
from captionless3d.utils.threads import set_torch_threads, torch_threads

T = TypeVar("T")

__all__ = [
    "furthest_point_sample",
    "random_sample",
    "ball_query",
    "knn",
    "gather_points",
    "group_points",
    "flat_index",
    "single_thread",
    "hot_loop_workers",
    "batch_parts",
    "run_parts",
    "enable_cuda_ops",
    "enable_triton_ops",
    "enable_auto_ops",
    "disable_cuda_ops",
    "cuda_ops_source",
    "kernels_on_cpu",
    "import_cuda_ops",
    "export_mode",
    "in_export_mode",
]

#: Largest ``queries * support block`` a ball-query step materialises (float32: 4 bytes each).
BALL_QUERY_CHUNK_ELEMS = 1 << 21

#: The same bound on a GPU (no support blocks there: the whole support at once, several clouds per GEMM).
BALL_QUERY_CHUNK_ELEMS_GPU = 1 << 27

#: Support points per ball-query block; queries with ``nsample`` neighbours stop scanning (32 x 8192 points:
#: 0.79 s -> 0.55 s per worker for the first stage, measured).
BALL_QUERY_BLOCK = 1024

#: Points per FPS group: each FPS step streams every point of the group, so a group whose working set (~6 float
#: arrays of this length) stays in L2 runs faster (32 x 8192 points: 1.3 s -> 0.9 s per worker, measured).
FPS_BLOCK_POINTS = 1 << 15

#: Intra-op threads for the chunked hot loops (FPS, ball query, the fused grouped layers). Their kernels are small
#: (cache-sized chunks): on shared cores OpenMP fork/join and spin-waiting made a batch-32 train step 20x slower
#: with 2 threads than with 1 (39 s vs 1.9 s measured). The loops get their parallelism from :func:`run_parts`.
HOT_LOOP_THREADS = 1

#: Concurrent workers of the hot loops: each takes a contiguous slice of the batch on its own Python thread (torch
#: releases the GIL inside every op) with one intra-op thread. ``None``: the caller's ``torch.get_num_threads()``.
HOT_LOOP_WORKERS: int | None = None

_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)  # (pid, max_workers): a forked child must not use its parent's dead threads
_pool_lock = threading.Lock()

#: Per-thread export-mode flag (:func:`export_mode`): a thread exporting a model does not change the ops of another
#: thread that trains or evaluates one.
_export_state = threading.local()


@contextlib.contextmanager
def export_mode() -> Iterator[None]:
    """Inside the block, on this thread, the point ops take their traceable path (module doc, "Export mode"):
    same results, one graph that ``torch.jit.trace`` and ``torch.onnx.export`` can record with a dynamic batch axis.
    Nests; the previous setting is restored on exit."""
    previous = getattr(_export_state, "on", False)
    _export_state.on = True
    try:
        yield
    finally:
        _export_state.on = previous


def in_export_mode() -> bool:
    """True inside :func:`export_mode` on this thread, or while a tracer records (``torch.jit.trace``, the
    TorchScript-based ``torch.onnx.export``): a trace of the threaded CPU path would silently miss the work done on
    worker threads."""
    return getattr(_export_state, "on", False) or torch.jit.is_tracing()


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the body with at most :data:`HOT_LOOP_THREADS` intra-op threads (restores the setting afterwards)."""
    with torch_threads(max(1, min(torch.get_num_threads(), HOT_LOOP_THREADS))):
        yield


def hot_loop_workers() -> int:
    """How many workers :func:`run_parts` should use (read it outside :func:`single_thread`)."""
    n = torch.get_num_threads() if HOT_LOOP_WORKERS is None else HOT_LOOP_WORKERS
    return max(1, int(n))


def batch_parts(batch: int, workers: int) -> list[tuple[int, int]]:
    """Split ``range(batch)`` into at most ``workers`` contiguous, non-empty ``(start, stop)`` slices of near-equal
    size (the larger ones first)."""
    n = max(1, min(workers, batch))
    q, r = divmod(batch, n)
    bounds = [0]
    for i in range(n):
        bounds.append(bounds[-1] + q + (1 if i < r else 0))
    return list(zip(bounds[:-1], bounds[1:]))


def _worker_pool(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_key
    with _pool_lock:
        if _pool is None or _pool_key[0] != os.getpid() or _pool_key[1] < n:
            if _pool is not None and _pool_key[0] == os.getpid():
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="captionless3d-hot-loop")
            _pool_key = (os.getpid(), n)
        return _pool


def _in_worker(fn: Callable[..., T], args: tuple, grad: bool) -> T:
    set_torch_threads(HOT_LOOP_THREADS)  # this thread's OpenMP/MKL setting only; kept for the worker's next part
    with torch.set_grad_enabled(grad):
        return fn(*args)


def run_parts(fn: Callable[..., T], parts: Sequence[tuple]) -> list[T]:
    """``[fn(*p) for p in parts]``, concurrently: ``parts[0]`` on the calling thread, the others on worker threads,
    every part with :data:`HOT_LOOP_THREADS` intra-op threads (the caller's setting is restored afterwards).

    The parts must write to disjoint memory. Every worker is waited for before this returns or re-raises the first
    exception, so no worker is still writing afterwards.
    """
    with single_thread():
        if len(parts) <= 1:
            return [fn(*p) for p in parts]
        pool = _worker_pool(len(parts) - 1)
        grad = torch.is_grad_enabled()
        futures = [pool.submit(_in_worker, fn, tuple(p), grad) for p in parts[1:]]
        try:
            first = fn(*parts[0])
        except BaseException:
            wait(futures)
            raise
        return [first, *(f.result() for f in futures)]


#: GPU kernels registered by :func:`enable_cuda_ops` / :func:`enable_triton_ops`, given contiguous float32 tensors:
#: ``fps(xyz, npoint, start)`` (returns ``None`` for a ``start`` it does not support: the PyTorch loop runs instead),
#: ``ball_query(support, query, r, k)`` and, optionally, ``knn(support, query, k)``; any integer index dtype.
_CUDA_OPS: dict[str, Callable] = {}
#: Device types dispatched to :data:`_CUDA_OPS` (a module attribute so tests can exercise the dispatch on CPU).
_CUDA_DEVICE_TYPES: tuple[str, ...] = ("cuda",)
_cuda_source: str | None = None


def import_cuda_ops() -> tuple[str, dict[str, Callable]]:
    """The first importable set of compiled CUDA point ops as ``(package name, kernels)``, without registering them
    (:func:`enable_cuda_ops` does that; ``make bench`` only reports availability). Raises :class:`ConfigError`
    naming what is missing."""
    from captionless3d.errors import ConfigError

    errors = []
    try:
        from pointnext.ops import ball_query as pn_ball_query  # type: ignore[import-not-found]
        from pointnext.ops import furthest_point_sample as pn_fps  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or an OSError from a broken compiled extension
        errors.append(f"pointnext: {type(exc).__name__}: {exc}")
    else:
        return "pointnext", {
            "fps": lambda xyz, n, start: pn_fps(xyz, n) if start == 0 else None,  # the kernel always starts at 0
            "ball_query": lambda s, q, r, k: pn_ball_query(s, q, r, k),
        }
    try:
        import pointnet2_batch_cuda as op_cuda  # type: ignore[import-not-found]  # OpenPoints' compiled extension
    except Exception as exc:
        errors.append(f"pointnet2_batch_cuda (OpenPoints): {type(exc).__name__}: {exc}")
    else:

        def op_fps(xyz: Tensor, n: int) -> Tensor:
            B, N, _ = xyz.shape
            out = torch.empty(B, n, dtype=torch.int32, device=xyz.device)
            temp = torch.full((B, N), 1e10, dtype=torch.float32, device=xyz.device)
            op_cuda.furthest_point_sampling_wrapper(B, N, n, xyz, temp, out)
            return out

        def op_ball_query(support: Tensor, query: Tensor, radius: float, k: int) -> Tensor:
            B, N, _ = support.shape
            M = query.shape[1]
            idx = torch.zeros(B, M, k, dtype=torch.int32, device=support.device)
            op_cuda.ball_query_wrapper(B, N, M, radius, k, query, support, idx)
            return idx

        return "pointnet2_batch_cuda", {
            "fps": lambda xyz, n, start: op_fps(xyz, n) if start == 0 else None,
            "ball_query": op_ball_query,
        }
    raise ConfigError(
        "model.ops_backend='cuda' needs compiled CUDA point ops: the 'pointnext' package "
        "(pip install -e \".[cuda]\", needs nvcc) or OpenPoints' 'pointnet2_batch_cuda' extension; neither is "
        "importable here (" + "; ".join(errors) + "). Use ops_backend='torch' (the default, pure PyTorch)."
    )


def enable_cuda_ops(require_device: bool = True) -> str:
    """Register the compiled CUDA kernels (see :func:`import_cuda_ops`); returns the package used.

    Raises :class:`~captionless3d.errors.ConfigError` naming the missing package, or when ``require_device`` and no
    CUDA device is visible.
    """
    from captionless3d.errors import ConfigError

    source, ops = import_cuda_ops()
    if require_device and not torch.cuda.is_available():
        raise ConfigError(f"model.ops_backend='cuda': {source} is importable but no CUDA device is available "
                          "(torch.cuda.is_available() is False); use ops_backend='torch'")
    _register(source, ops)
    return source


def enable_triton_ops(require_device: bool = True) -> str:
    """Register the Triton kernels of :mod:`captionless3d.models.triton_ops` for CUDA tensors; returns ``"triton"``.

    Raises :class:`~captionless3d.errors.ConfigError` when ``triton`` does not import, when ``require_device`` and no
    CUDA device is visible, or when the kernels fail the self-check on the device (:func:`_triton_self_check`).
    """
    from captionless3d.errors import ConfigError

    from . import triton_ops

    if not triton_ops.available():
        raise ConfigError(
            "model.ops_backend='triton' needs the 'triton' package, which does not import here "
            f"({triton_ops.unavailable_reason()}); it ships with torch's Linux CUDA wheels (or: pip install triton). "
            "Use ops_backend='torch' (pure PyTorch) or 'auto'."
        )
    if require_device:
        if not torch.cuda.is_available():
            raise ConfigError("model.ops_backend='triton': no CUDA device is available (torch.cuda.is_available() is "
                              "False) and the Triton kernels run on CUDA tensors; use ops_backend='torch' or 'auto'")
        problem = _triton_self_check(torch.device("cuda"))
        if problem:
            raise ConfigError(f"model.ops_backend='triton': the Triton kernels failed their self-check on "
                              f"{torch.cuda.get_device_name()}: {problem}; use ops_backend='torch'")
    _register("triton", {"fps": triton_ops.furthest_point_sample, "ball_query": triton_ops.ball_query,
                         "knn": triton_ops.knn})
    return "triton"


def enable_auto_ops() -> str | None:
    """``ops_backend=auto``: the Triton kernels for CUDA tensors when a CUDA device is visible, ``triton`` imports
    and the kernels pass :func:`_triton_self_check` there; otherwise the PyTorch ops everywhere (a warning says why
    when a GPU is visible but Triton is not usable). Returns ``"triton"`` or ``None``."""
    from . import triton_ops

    disable_cuda_ops()
    if not torch.cuda.is_available():
        return None  # the PyTorch ops are the only option: nothing to warn about
    if not triton_ops.available():
        problem = f"triton does not import ({triton_ops.unavailable_reason()})"
    else:
        problem = _triton_self_check(torch.device("cuda"))
    if problem:
        warnings.warn(f"model.ops_backend='auto': using the pure-PyTorch point ops on the GPU: {problem}",
                      RuntimeWarning, stacklevel=2)
        return None
    return enable_triton_ops(require_device=False)


def _triton_self_check(device: torch.device) -> str | None:
    """Run the Triton kernels once on ``device`` against the PyTorch ops on the CPU; ``None`` if every index agrees,
    else what went wrong. The cloud is a shuffled 4 x 4 x 4 grid with spacing 1/4: every distance is exact in float32
    (so the answers must be identical on any device), with exact FPS ties, points exactly on the ball-query sphere
    and tied kNN distances."""
    from . import triton_ops

    g = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(4.0)] * 3, indexing="ij"), -1).reshape(1, 64, 3) / 4
    xyz = grid[:, torch.randperm(64, generator=g)]
    query = xyz[:, :16]
    x, q = xyz.to(device), query.to(device)
    try:
        checks = {
            "furthest_point_sample": (triton_ops.furthest_point_sample(x, 48, 5), furthest_point_sample(xyz, 48, 5)),
            "ball_query": (triton_ops.ball_query(x, q, 0.5, 8), ball_query(xyz, query, 0.5, 8)),
            "knn": (triton_ops.knn(x, q, 10), knn(xyz, query, 10)),
        }
    except Exception as exc:  # noqa: BLE001 - a compiler / driver failure of any kind: report it, do not crash
        return f"{type(exc).__name__}: {exc}"[:500]
    bad = [name for name, (a, b) in checks.items() if not torch.equal(a.cpu(), b)]
    return f"indices differ from the PyTorch ops in {', '.join(bad)}" if bad else None


def _register(source: str, kernels: dict[str, Callable]) -> None:
    global _cuda_source
    _CUDA_OPS.clear()
    _CUDA_OPS.update(kernels)
    _cuda_source = source


def disable_cuda_ops() -> None:
    """Back to the PyTorch kernels on every device."""
    global _cuda_source
    _CUDA_OPS.clear()
    _cuda_source = None


def cuda_ops_source() -> str | None:
    """Name of the package whose GPU kernels are registered (``pointnext``, ``pointnet2_batch_cuda``, ``triton``), or
    ``None``."""
    return _cuda_source


@contextlib.contextmanager
def kernels_on_cpu() -> Iterator[None]:
    """Inside the block, CPU tensors also go to the registered GPU kernels. Only useful with Triton's interpreter
    (``TRITON_INTERPRET=1`` from process start): the benchmark's ``--cpu-smoke`` runs the model through the Triton
    kernels on a machine without a GPU this way. Not thread-safe (a module setting)."""
    global _CUDA_DEVICE_TYPES
    saved = _CUDA_DEVICE_TYPES
    _CUDA_DEVICE_TYPES = (*saved, "cpu")
    try:
        yield
    finally:
        _CUDA_DEVICE_TYPES = saved


def _use_cuda_ops(t: Tensor) -> bool:
    return bool(_CUDA_OPS) and t.device.type in _CUDA_DEVICE_TYPES


@torch.no_grad()
def furthest_point_sample(xyz: Tensor, npoint: int, start: int = 0) -> Tensor:
    """Farthest point sampling. ``xyz (B, N, 3)`` -> indices ``(B, npoint)`` int64.

    Deterministic: the first sample is ``start`` for every cloud, then each step takes the point whose squared
    distance to the chosen set is largest (lowest index on exact ties).
    """
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise DataError(f"furthest_point_sample expects (B, N, 3), got {tuple(xyz.shape)}")
    B, N, _ = xyz.shape
    if not 0 < npoint <= N:
        raise DataError(f"furthest_point_sample: npoint={npoint} must be in [1, N={N}]")
    if not 0 <= start < N:
        raise DataError(f"furthest_point_sample: start={start} must be in [0, N={N})")
    xyz = xyz.detach().float()
    if in_export_mode():
        return _fps_traceable(xyz, npoint, start)
    if _use_cuda_ops(xyz):
        idx = _CUDA_OPS["fps"](xyz.contiguous(), npoint, start)
        if idx is not None:  # None: this kernel cannot start at ``start``
            return idx.long()
    out = torch.empty(B, npoint, dtype=torch.long, device=xyz.device)
    out[:, 0] = start
    if npoint == 1:
        return out
    loop, scripted = _fps_loop()
    on_cpu = xyz.device.type == "cpu"
    # the loop's ops are small: in eager mode splitting the batch over worker threads only adds GIL contention
    # (measured slower), while the TorchScript loop runs without the GIL and splits well. On a GPU one thread
    # launches the kernels for the whole batch.
    parts = batch_parts(B, hot_loop_workers() if scripted and on_cpu else 1)
    step = max(1, FPS_BLOCK_POINTS // N) if on_cpu else B

    def part(b0: int, b1: int) -> None:
        for c0 in range(b0, b1, step):  # clouds in cache-sized groups: each step streams all their points
            loop(xyz[c0 : min(b1, c0 + step)], out[c0 : min(b1, c0 + step)])

    run_parts(part, parts)
    return out


def _fps_into(xyz: Tensor, out: Tensor) -> None:
    """The FPS loop for one slice of the batch; ``out[:, 0]`` holds the start index. TorchScript-compatible."""
    B, N = xyz.shape[0], xyz.shape[1]
    far = out[:, :1].clone()
    x0 = xyz[:, :, 0].contiguous()
    x1 = xyz[:, :, 1].contiguous()
    x2 = xyz[:, :, 2].contiguous()
    dist = torch.full([B, N], 1e10, dtype=torch.float32, device=xyz.device)
    t = torch.empty_like(dist)
    d = torch.empty_like(dist)
    for i in range(1, out.shape[1]):
        # same arithmetic order as the CUDA kernel: (x - x1)^2 + (y - y1)^2 + (z - z1)^2
        torch.sub(x0, x0.gather(1, far), out=t)
        torch.mul(t, t, out=d)
        torch.sub(x1, x1.gather(1, far), out=t)
        d.addcmul_(t, t)
        torch.sub(x2, x2.gather(1, far), out=t)
        d.addcmul_(t, t)
        torch.minimum(dist, d, out=dist)
        far = torch.max(dist, 1, True)[1]  # first index on ties; ~3x faster than argmax here
        out[:, i : i + 1] = far


def _fps_traceable(xyz: Tensor, npoint: int, start: int) -> Tensor:
    """Export-mode FPS (:func:`export_mode`), ``xyz (B, N, 3)`` float32 -> ``(B, npoint)`` int64: the arithmetic of
    :func:`_fps_into` (``d = t0*t0 + t1*t1 + t2*t2`` of the direct differences, running minimum, first index of the
    maximum) without ``out=`` buffers or batch-size constants; a tracer unrolls the ``npoint - 1`` steps."""
    x0, x1, x2 = xyz[..., 0], xyz[..., 1], xyz[..., 2]  # (B, N)
    dist = torch.full_like(x0, 1e10)
    far = torch.full_like(x0[:, :1], start, dtype=torch.long)  # (B, 1)
    picks = [far]
    for _ in range(1, npoint):
        t0 = x0 - x0.gather(1, far)
        t1 = x1 - x1.gather(1, far)
        t2 = x2 - x2.gather(1, far)
        dist = torch.minimum(dist, t0 * t0 + t1 * t1 + t2 * t2)
        far = dist.argmax(dim=1, keepdim=True)  # first index on ties (ONNX ArgMax: select_last_index=0)
        picks.append(far)
    return torch.cat(picks, dim=1)


_FPS_LOOP: tuple[Callable[[Tensor, Tensor], None], bool] | None = None


def _fps_loop() -> tuple[Callable[[Tensor, Tensor], None], bool]:
    """``(loop, scripted)``: :func:`_fps_into` compiled by TorchScript (no Python overhead per op, and it releases
    the GIL, so batch slices run in parallel: 0.16 s -> 0.07 s for 32 x 2048 -> 1024 points on 2 cores), or the
    eager function where scripting is unavailable. TorchScript is deprecated upstream; the eager loop gives the
    same indices."""
    global _FPS_LOOP
    if _FPS_LOOP is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.script is deprecated"
                _FPS_LOOP = (torch.jit.script(_fps_into), True)
        except Exception:  # noqa: BLE001 - any scripting failure: the eager loop is exact, only slower
            _FPS_LOOP = (_fps_into, False)
    return _FPS_LOOP


def random_sample(xyz: Tensor, npoint: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform random indices with replacement, ``(B, npoint)`` int64 (OpenPoints' ``random_sample``)."""
    B, N, _ = xyz.shape
    return torch.randint(0, N, (B, npoint), device=xyz.device, generator=generator)


@torch.no_grad()
def ball_query(support: Tensor, query: Tensor, radius: float, nsample: int) -> Tensor:
    """Ball query. ``support (B, N, 3)``, ``query (B, M, 3)`` -> neighbour indices ``(B, M, nsample)`` int64.

    First ``nsample`` support points (in index order) with ``|q - s|^2 < radius^2``; short balls are padded with
    their first index; empty balls are all 0 (as the CUDA op).
    """
    if support.dim() != 3 or query.dim() != 3 or support.shape[-1] != 3 or query.shape[-1] != 3:
        raise DataError(f"ball_query expects (B, N, 3) and (B, M, 3), got {tuple(support.shape)}, {tuple(query.shape)}")
    if support.shape[0] != query.shape[0]:
        raise DataError("ball_query: support and query batch sizes differ")
    if nsample < 1:
        raise DataError(f"ball_query: nsample={nsample} must be >= 1")
    B, N, _ = support.shape
    M = query.shape[1]
    support = support.detach().float()
    query = query.detach().float()
    r2 = float(torch.tensor(radius, dtype=torch.float32) ** 2)
    if in_export_mode():
        return _ball_query_traceable(support, query, r2, nsample)
    if _use_cuda_ops(support):
        return _CUDA_OPS["ball_query"](support.contiguous(), query.contiguous(), float(radius), nsample).long()
    k = min(nsample, N)
    # the j-th in-ball point of a row is where its running count of in-ball points first reaches j
    ranks = torch.arange(1, k + 1, dtype=torch.float32, device=support.device)
    s_aug, q_aug, thr = _ball_operands(support, query, r2)
    out = torch.empty(B, M, nsample, dtype=torch.long, device=support.device)
    if support.device.type != "cpu":  # one batched GEMM per memory-bounded chunk, from one thread
        _ball_query_chunks(s_aug, q_aug, thr, ranks, out, block=N, chunk_elems=BALL_QUERY_CHUNK_ELEMS_GPU)
        return out
    workers = hot_loop_workers()

    def part(b0: int, b1: int) -> None:
        _ball_query_chunks(s_aug[b0:b1], q_aug[b0:b1], thr[b0:b1], ranks, out[b0:b1])

    run_parts(part, batch_parts(B, workers))
    return out


def _ball_query_traceable(support: Tensor, query: Tensor, r2: float, nsample: int) -> Tensor:
    """Export-mode ball query (:func:`export_mode`): the in-ball test of :func:`_ball_operands` on the whole
    ``(B, M, N)`` matrix, then the first ``k`` in-ball indices by ``topk`` of the keys ``N..1`` (larger key = lower
    index, 0 = outside the ball; exact in float32 for ``N < 2^24``, the same bound as the running count of the CPU
    path), padded as :func:`_write_padded` does."""
    n = support.shape[1]
    k = min(nsample, n)
    s_aug, q_aug, thr = _ball_operands(support, query, r2)
    inside = torch.bmm(q_aug, s_aug) < thr.unsqueeze(-1)  # (B, M, N)
    keys = torch.arange(n, 0, -1, dtype=torch.float32, device=support.device)
    top = torch.where(inside, keys, torch.zeros_like(keys)).topk(k, dim=-1, largest=True, sorted=True).values
    idx = (n - top).long()  # (B, M, k); where top == 0 this is n: not a neighbour
    valid = top > 0
    first = torch.where(valid[..., :1], idx[..., :1], torch.zeros_like(idx[..., :1]))
    idx = torch.where(valid, idx, first)
    if k < nsample:
        idx = torch.cat([idx, first.expand(-1, -1, nsample - k)], dim=-1)
    return idx


def _ball_operands(support: Tensor, query: Tensor, r2: float) -> tuple[Tensor, Tensor, Tensor]:
    """``|q - s|^2 < r^2  <=>  [q, 1] . [-2 s, |s|^2] < r^2 - |q|^2``: one GEMM, no bias to broadcast.

    Returns ``s_aug (B, 4, N)``, ``q_aug (B, M, 4)`` and the per-query threshold ``thr (B, M)``."""
    s_aug = torch.cat([support * -2.0, (support * support).sum(-1, keepdim=True)], dim=-1)
    q_aug = torch.cat([query, torch.ones_like(query[..., :1])], dim=-1)
    return s_aug.transpose(1, 2).contiguous(), q_aug, r2 - (query * query).sum(-1)


def _ball_query_chunks(
    s_aug: Tensor, q_aug: Tensor, thr: Tensor, ranks: Tensor, out: Tensor, block: int | None = None,
    chunk_elems: int | None = None,
) -> None:
    """Ball query of one slice of the batch, in chunks of at most ``chunk_elems`` pair distances.

    Clouds of at most ``block`` points (default :data:`BALL_QUERY_BLOCK`) are handled several clouds at a time (one
    batched GEMM per chunk). Larger clouds go one at a time, and their support is scanned in blocks of that size in
    index order: a query leaves the scan once it has ``k`` neighbours, and most queries of a dense cloud finish long
    before the last block.
    """
    B, _, N = s_aug.shape
    M = out.shape[1]
    k = ranks.numel()
    block = BALL_QUERY_BLOCK if block is None else block
    chunk_elems = BALL_QUERY_CHUNK_ELEMS if chunk_elems is None else chunk_elems
    if N <= block:
        bstep = max(1, chunk_elems // (M * N))
        mstep = M if bstep > 1 else max(1, chunk_elems // N)
        for b0 in range(0, B, bstep):
            b1 = min(B, b0 + bstep)
            for m0 in range(0, M, mstep):
                m1 = min(M, m0 + mstep)
                e = torch.bmm(q_aug[b0:b1, m0:m1], s_aug[b0:b1])  # |s|^2 - 2 q.s, (b, m, N)
                count = e.lt_(thr[b0:b1, m0:m1].unsqueeze(-1)).cumsum_(-1)  # running in-ball count
                pos = torch.searchsorted(count, ranks.expand(b1 - b0, m1 - m0, k).contiguous())
                _write_padded(out[b0:b1, m0:m1], pos, N)
        return
    mstep = max(1, chunk_elems // block)
    for b in range(B):
        for m0 in range(0, M, mstep):
            m1 = min(M, m0 + mstep)
            pos = _first_in_ball(s_aug[b], q_aug[b, m0:m1], thr[b, m0:m1], ranks, block)
            _write_padded(out[b, m0:m1], pos, N)


def _write_padded(out: Tensor, pos: Tensor, N: int) -> None:
    """``out (..., nsample)`` from the positions ``pos (..., k)`` of the first in-ball points (``N``: none): short
    balls repeat their first index, empty balls are all 0 (as the CUDA op)."""
    k = pos.shape[-1]
    first = pos[..., :1]
    first = first.masked_fill(first == N, 0)
    out[..., :k] = torch.where(pos < N, pos, first)
    if k < out.shape[-1]:
        out[..., k:] = first


def _first_in_ball(s_aug: Tensor, q_aug: Tensor, thr: Tensor, ranks: Tensor, block: int) -> Tensor:
    """``(m, k)`` indices of the first ``k`` in-ball support points of each query (``N`` where there are fewer).

    The j-th in-ball point is where the running count of in-ball points first reaches j: a ``searchsorted`` of
    ``ranks = 1..k`` in the running count (exact in float32 for N < 2^24), offset by the count of earlier blocks.
    ``s_aug (4, N)``, ``q_aug (m, 4)``, ``thr (m,)``.
    """
    N = s_aug.shape[1]
    m, k = q_aug.shape[0], ranks.numel()
    pos = torch.full((m, k), N, dtype=torch.long, device=s_aug.device)
    base = torch.zeros(m, dtype=ranks.dtype, device=s_aug.device)  # in-ball points found in earlier blocks
    active = torch.arange(m, device=s_aug.device)  # rows still short of k neighbours
    for s0 in range(0, N, block):
        s1 = min(N, s0 + block)
        b0 = base[active]
        e = torch.mm(q_aug[active], s_aug[:, s0:s1])  # |s|^2 - 2 q.s
        count = e.lt_(thr[active].unsqueeze(1)).cumsum_(-1).add_(b0.unsqueeze(1))
        p = torch.searchsorted(count, ranks.expand(active.numel(), k).contiguous())
        pos[active] = torch.where((p < s1 - s0) & (ranks > b0.unsqueeze(1)), p + s0, pos[active])
        base[active] = total = count[:, -1]
        active = active[total < k]
        if active.numel() == 0:
            break
    return pos


#: Largest ``queries * support`` block of squared distances :func:`knn` materialises at once (float32).
KNN_CHUNK_ELEMS = 1 << 22


@torch.no_grad()
def knn(support: Tensor, query: Tensor, k: int) -> Tensor:
    """k nearest neighbours. ``support (B, N, 3)``, ``query (B, M, 3)`` -> indices ``(B, M, k)`` int64.

    Each row lists the ``k`` support points closest to the query in ascending squared distance
    ``(qx-sx)^2 + (qy-sy)^2 + (qz-sz)^2`` (direct differences, not a GEMM expansion, so exact ties stay exact), and
    exact ties go to the lower index (a stable sort). This is the grouping of Point-BERT-style encoders (FPS centres +
    kNN). Work is chunked over queries so that at most :data:`KNN_CHUNK_ELEMS` distances exist at once.
    """
    if support.dim() != 3 or query.dim() != 3 or support.shape[-1] != 3 or query.shape[-1] != 3:
        raise DataError(f"knn expects (B, N, 3) and (B, M, 3), got {tuple(support.shape)}, {tuple(query.shape)}")
    if support.shape[0] != query.shape[0]:
        raise DataError("knn: support and query batch sizes differ")
    B, N, _ = support.shape
    M = query.shape[1]
    if not 0 < k <= N:
        raise DataError(f"knn: k={k} must be in [1, N={N}]")
    support = support.detach().float()
    query = query.detach().float()
    if in_export_mode():
        return _knn_traceable(support, query, k)
    if "knn" in _CUDA_OPS and _use_cuda_ops(support):
        return _CUDA_OPS["knn"](support.contiguous(), query.contiguous(), k).long()
    out = torch.empty(B, M, k, dtype=torch.long, device=support.device)
    mstep = max(1, KNN_CHUNK_ELEMS // max(1, B * N))
    for m0 in range(0, M, mstep):
        m1 = min(M, m0 + mstep)
        d = (query[:, m0:m1, None, :] - support[:, None, :, :]).square_().sum(-1)  # (B, m, N)
        out[:, m0:m1] = torch.sort(d, dim=-1, stable=True).indices[..., :k]
    return out


def _knn_traceable(support: Tensor, query: Tensor, k: int) -> Tensor:
    """Export-mode kNN (:func:`export_mode`): the squared distances of :func:`knn` on the whole ``(B, M, N)``
    matrix, ranked by ``k`` steps of "first index of the minimum, then rule it out". That is the order of the stable
    sort (ascending distance, lower index on ties); ``torch.sort(stable=True)`` itself has no ONNX export, and
    ``topk`` does not promise an order for ties in PyTorch."""
    d = (query[:, :, None, :] - support[:, None, :, :]).square().sum(-1)  # (B, M, N)
    picks = []
    for _ in range(k):
        nearest = d.argmin(dim=-1, keepdim=True)  # (B, M, 1), first index on ties
        picks.append(nearest)
        d = d.scatter(-1, nearest, float("inf"))  # finite inputs (k <= N): a taken point is never the minimum again
    return torch.cat(picks, dim=-1)


def flat_index(idx: Tensor, n: int) -> Tensor:
    """Per-cloud indices ``(B, ...)`` into ``[0, n)`` -> flat indices into a ``(B * n, C)`` table."""
    B = idx.shape[0]
    offset = torch.arange(B, device=idx.device, dtype=idx.dtype).mul_(n)
    return idx + offset.view(B, *([1] * (idx.dim() - 1)))


def gather_points(x: Tensor, idx: Tensor) -> Tensor:
    """Channels-last gather: ``x (B, N, C)``, ``idx (B, M)`` -> ``(B, M, C)``. Differentiable in ``x``."""
    B, N, C = x.shape
    return x.reshape(B * N, C).index_select(0, flat_index(idx, N).reshape(-1)).view(*idx.shape, C)


def group_points(x: Tensor, idx: Tensor) -> Tensor:
    """Channels-last grouping: ``x (B, N, C)``, ``idx (B, M, K)`` -> ``(B, M, K, C)``. Differentiable in ``x``."""
    return gather_points(x, idx)
