"""Point ops of PointNeXt / Point-BERT as Triton kernels: compiled at run time, nothing to build.

Same signatures, semantics and ``int64`` outputs as :mod:`captionless3d.models.ops` (the pure-PyTorch reference, whose
docstring describes the semantics of OpenPoints' CUDA kernels):

* :func:`furthest_point_sample` ``(B, N, 3) -> (B, npoint)``: one program per cloud. Up to :data:`FPS_ON_CHIP_MAX`
  points the whole cloud and its running distances stay on chip for all ``npoint`` steps, in registers (compiled for
  sm_90, the 16,384-point block spills 88 bytes a thread to L1-cached local memory), one launch per batch instead of
  ~5 small launches per step; above that a tiled variant keeps the running distances in a global scratch
  buffer and scans the cloud in tiles of :data:`FPS_TILE` points each step. First sample ``start``; running minimum
  squared distance initialised to 1e10; arg-max with the lowest index on exact ties (the tiled variant keeps the
  first tile's winner on a tie between tiles).
* :func:`ball_query` ``(B, N, 3), (B, M, 3) -> (B, M, nsample)``: the first ``nsample`` support indices in index order
  with ``|q - s|^2 < radius^2`` (strict), short balls padded with their first index, empty balls all 0. A program
  scans the support in tiles for a block of queries and stops once every query of the block has ``nsample``
  neighbours.
* :func:`knn` ``(B, N, 3), (B, M, 3) -> (B, M, k)``: the ``k`` nearest support points in ascending squared distance,
  exact ties to the lower index. Each (distance, index) pair is packed into one ``int64`` key (the bits of a
  non-negative float32 order like the float, the index breaks ties), so a bitonic top-k over keys (per support tile,
  merged into a running list) gives exactly the stable sort of :func:`ops.knn`.

**Arithmetic.** Every squared distance is computed from direct differences as
``((dx*dx) + (dy*dy)) + (dz*dz)`` in float32 and the kernels are compiled with ``enable_fp_fusion=False``, so no
multiply-add is contracted to an FMA: each operation is rounded exactly as in the PyTorch FPS loop and ``ops.knn``,
and as in Triton's interpreter (numpy). FPS and kNN therefore pick the same indices as :mod:`ops` whenever PyTorch
rounds the same way (bit-identical on the tests' clouds). ``ops.ball_query`` uses a matrix-product expansion instead
(``|s|^2 - 2 q.s < r^2 - |q|^2``), and OpenPoints' CUDA kernel uses direct differences that nvcc contracts to FMA:
a pair within ~1e-7 (relative) of the sphere boundary may be classified differently by the three. They agree exactly
wherever the arithmetic is exact (e.g. coordinates on a dyadic grid), boundary points included.
Inputs are read as float32 (other dtypes are converted, as in :mod:`ops`); non-finite coordinates are not supported.

**Devices.** The kernels run on CUDA tensors. When the process starts with ``TRITON_INTERPRET=1`` they run in
Triton's interpreter instead, on CPU tensors too; that is how the tests check them without a GPU. The variable must
be set before ``triton`` is first imported (which ``lightning`` and others do early): Triton builds ``tl.argmax``,
``tl.sort`` and the rest of its standard library for one mode at import (:func:`interpreting` reports which). A CPU
tensor without the interpreter, or a missing ``triton`` package, raises
:class:`~captionless3d.errors.ConfigError` naming the op; bad shapes and arguments raise
:class:`~captionless3d.errors.DataError` as in :mod:`ops`. ``model.ops_backend=triton`` (see
:func:`captionless3d.models.ops.enable_triton_ops`) routes the model's CUDA tensors here.

Block sizes and warp counts are module constants, chosen by reasoning about register use, not tuned on a GPU (none
was available when this was written); ``benchmarks/bench_pointnext_gpu.py`` measures each op alone.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable

import torch
from torch import Tensor

from captionless3d.errors import ConfigError, DataError

try:  # Triton ships inside the Linux PyPI torch wheels; anything else (missing, broken install) is reported on use
    import triton
    import triton.language as tl
except Exception as _exc:  # noqa: BLE001 - ImportError, or an error from a broken install
    triton = tl = None  # type: ignore[assignment]
    _TRITON_IMPORT_ERROR: str | None = f"{type(_exc).__name__}: {_exc}"
else:
    _TRITON_IMPORT_ERROR = None

__all__ = [
    "furthest_point_sample",
    "ball_query",
    "knn",
    "available",
    "unavailable_reason",
    "interpreting",
    "FPS_ON_CHIP_MAX",
    "FPS_TILE",
]

#: Largest cloud FPS keeps on chip (x, y, z and the running distance, in registers) for all its steps.
FPS_ON_CHIP_MAX = 16384
#: Tile of the FPS variant for clouds above :data:`FPS_ON_CHIP_MAX` points.
FPS_TILE = 4096
#: Queries per ball-query program and support points per scanned tile: 16 x 64 with 4 warps compiles to 106
#: registers a thread for sm_90 (16 x 128: 197, which would limit the resident blocks per SM).
BALL_QUERY_BLOCK_M = 16
BALL_QUERY_BLOCK_N = 64
#: Queries per kNN program, and the smallest support tile (a tile is at least the next power of two >= k).
KNN_BLOCK_M = 16
KNN_BLOCK_N = 64
#: kNN keeps at most this many keys per tile (queries x tile), so large k gets fewer queries per program.
KNN_MAX_TILE = 4096


def available() -> bool:
    """Whether ``triton`` imported (it does not say a GPU is present)."""
    return _TRITON_IMPORT_ERROR is None


def unavailable_reason() -> str | None:
    """Why ``triton`` did not import, or ``None``."""
    return _TRITON_IMPORT_ERROR


def interpreting() -> bool:
    """Whether the kernels run in Triton's interpreter: ``triton`` was imported with ``TRITON_INTERPRET=1`` (its
    standard library, e.g. ``tl.argmax``, is then interpreted, and compiled kernels could not call it)."""
    if triton is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.argmax, InterpretedFunction)


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


# ----------------------------------------------------------------------------------------------------------- kernels
# Plain functions, wrapped on first use by Triton's JITFunction (CUDA) or its interpreter, in the mode Triton's own
# standard library was built in (see interpreting()); they call no helper of ours, only tl.*. The annotations are
# strings (``from __future__ import annotations``), which Triton accepts, so this module imports without Triton.


def _fps_kernel(xyz_ptr, out_ptr, N, npoint, start, stride_b, stride_n, stride_c, BLOCK: tl.constexpr):
    """One cloud per program; the cloud and its running distances stay in registers for every step."""
    b = tl.program_id(0).to(tl.int64)
    base = xyz_ptr + b * stride_b
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(base + offs * stride_n, mask=mask, other=0.0)
    y = tl.load(base + offs * stride_n + stride_c, mask=mask, other=0.0)
    z = tl.load(base + offs * stride_n + 2 * stride_c, mask=mask, other=0.0)
    # padding lanes hold -1: every real distance is >= 0, so they never win the arg-max, and min(-1, d) keeps them
    dist = tl.where(mask, tl.full([BLOCK], 1e10, tl.float32), tl.full([BLOCK], -1.0, tl.float32))
    out_row = out_ptr + b * npoint
    far = tl.zeros([], dtype=tl.int32) + start  # a tensor even if Triton specialised ``start`` to a constant
    tl.store(out_row, far)
    for i in range(1, npoint):
        # the chosen point's coordinates: three scalar loads (cache hits) instead of three block reductions
        px = tl.load(base + far * stride_n)
        py = tl.load(base + far * stride_n + stride_c)
        pz = tl.load(base + far * stride_n + 2 * stride_c)
        dx = x - px
        dy = y - py
        dz = z - pz
        d = dx * dx + dy * dy + dz * dz  # no FMA (enable_fp_fusion=False): rounded like the PyTorch loop
        dist = tl.minimum(dist, d)
        far = tl.argmax(dist, axis=0, tie_break_left=True)  # lowest index on exact ties
        tl.store(out_row + i, far)


def _fps_tiled_kernel(xyz_ptr, dist_ptr, out_ptr, N, npoint, start, stride_b, stride_n, stride_c,
                      BLOCK: tl.constexpr):
    """One cloud per program, for clouds too large for registers: the running distances live in ``dist_ptr``
    ``(B, N)`` (initialised to 1e10 by the caller) and every step scans the cloud tile by tile."""
    b = tl.program_id(0).to(tl.int64)
    base = xyz_ptr + b * stride_b
    dist_row = dist_ptr + b * N
    out_row = out_ptr + b * npoint
    far = tl.zeros([], dtype=tl.int32) + start
    tl.store(out_row, far)
    for i in range(1, npoint):
        px = tl.load(base + far * stride_n)
        py = tl.load(base + far * stride_n + stride_c)
        pz = tl.load(base + far * stride_n + 2 * stride_c)
        best = tl.full([], -1.0, tl.float32)
        best_idx = tl.zeros([], dtype=tl.int32)
        for n0 in range(0, N, BLOCK):
            offs = n0 + tl.arange(0, BLOCK)
            mask = offs < N
            x = tl.load(base + offs * stride_n, mask=mask, other=0.0)
            y = tl.load(base + offs * stride_n + stride_c, mask=mask, other=0.0)
            z = tl.load(base + offs * stride_n + 2 * stride_c, mask=mask, other=0.0)
            dx = x - px
            dy = y - py
            dz = z - pz
            d = dx * dx + dy * dy + dz * dz
            dist = tl.minimum(tl.load(dist_row + offs, mask=mask, other=-1.0), d)
            tl.store(dist_row + offs, dist, mask=mask)
            v, j = tl.max(dist, axis=0, return_indices=True, return_indices_tie_break_left=True)
            take = v > best  # strict: on a tie the earlier tile (lower index) keeps the sample
            best_idx = tl.where(take, n0 + j, best_idx)
            best = tl.where(take, v, best)
        far = best_idx
        tl.store(out_row + i, far)
        tl.debug_barrier()  # this step's distance writes before the next step reads them


def _ball_query_kernel(s_ptr, q_ptr, out_ptr, N, M, r2, nsample, s_sb, s_sn, s_sc, q_sb, q_sm, q_sc,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """A block of queries of one cloud per program. The support is scanned in index order, tile by tile, until
    every query of the block has ``nsample`` neighbours; in-ball points are written straight to their slot."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = offs_m < M
    qb = q_ptr + b * q_sb + offs_m * q_sm
    qx = tl.load(qb, mask=mmask, other=0.0)
    qy = tl.load(qb + q_sc, mask=mmask, other=0.0)
    qz = tl.load(qb + 2 * q_sc, mask=mmask, other=0.0)
    sb = s_ptr + b * s_sb
    out_rows = out_ptr + (b * M + offs_m) * nsample  # (BLOCK_M,) pointers; int64 offsets
    count = tl.zeros([BLOCK_M], dtype=tl.int32)  # in-ball points found so far (may exceed nsample)
    first = tl.zeros([BLOCK_M], dtype=tl.int32)  # index of the first one (meaningful where count > 0)
    n0 = tl.zeros([], dtype=tl.int32)
    need = tl.sum((mmask & (count < nsample)).to(tl.int32), axis=0)
    while (n0 < N) & (need > 0):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        sx = tl.load(sb + offs_n * s_sn, mask=nmask, other=0.0)
        sy = tl.load(sb + offs_n * s_sn + s_sc, mask=nmask, other=0.0)
        sz = tl.load(sb + offs_n * s_sn + 2 * s_sc, mask=nmask, other=0.0)
        dx = qx[:, None] - sx[None, :]
        dy = qy[:, None] - sy[None, :]
        dz = qz[:, None] - sz[None, :]
        d = dx * dx + dy * dy + dz * dz
        inb = (d < r2) & nmask[None, :] & mmask[:, None]  # strict <, as the CUDA op
        slot = count[:, None] + tl.cumsum(inb.to(tl.int32), axis=1) - 1  # rank of each in-ball point in its row
        tl.store(out_rows[:, None] + slot, offs_n[None, :], mask=inb & (slot < nsample))
        tile_first = tl.min(tl.where(inb, offs_n[None, :], N), axis=1)
        first = tl.where(count == 0, tile_first, first)
        count += tl.sum(inb.to(tl.int32), axis=1)
        n0 += BLOCK_N
        need = tl.sum((mmask & (count < nsample)).to(tl.int32), axis=0)
    # short balls: the remaining slots repeat the first index; empty balls are all 0 (the CUDA op zero-fills)
    ks = tl.arange(0, BLOCK_K)
    pad = tl.where(count > 0, first, 0)
    pad_mask = (ks[None, :] >= count[:, None]) & (ks[None, :] < nsample) & mmask[:, None]
    tl.store(out_rows[:, None] + ks[None, :], pad[:, None] + 0 * ks[None, :], mask=pad_mask)


def _knn_kernel(s_ptr, q_ptr, out_ptr, N, M, k, s_sb, s_sn, s_sc, q_sb, q_sm, q_sc,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, K_PAD: tl.constexpr):
    """A block of queries of one cloud per program; a running list of the ``K_PAD`` smallest keys
    ``(float32 bits of the distance) << 32 | index``, kept in descending order, is merged with each support tile's
    ``K_PAD`` smallest (ascending): ``min(top_i, cand_i)`` of a descending and an ascending list holds the ``K_PAD``
    smallest of both as a bitonic sequence (the lower half of a bitonic half-cleaner), which a ``log2(K_PAD)``-stage
    bitonic merge puts back in descending order: no full sort per tile."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = offs_m < M
    qb = q_ptr + b * q_sb + offs_m * q_sm
    qx = tl.load(qb, mask=mmask, other=0.0)
    qy = tl.load(qb + q_sc, mask=mmask, other=0.0)
    qz = tl.load(qb + 2 * q_sc, mask=mmask, other=0.0)
    sb = s_ptr + b * s_sb
    # descending; 2**63 - 1 (a literal: kernels may not read Python globals) sorts after every real key
    top = tl.full([BLOCK_M, K_PAD], 0x7FFFFFFFFFFFFFFF, tl.int64)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        sx = tl.load(sb + offs_n * s_sn, mask=nmask, other=0.0)
        sy = tl.load(sb + offs_n * s_sn + s_sc, mask=nmask, other=0.0)
        sz = tl.load(sb + offs_n * s_sn + 2 * s_sc, mask=nmask, other=0.0)
        dx = qx[:, None] - sx[None, :]
        dy = qy[:, None] - sy[None, :]
        dz = qz[:, None] - sz[None, :]
        d = dx * dx + dy * dy + dz * dz  # >= +0.0, so its int32 bits order like the float
        key = (d.to(tl.int32, bitcast=True).to(tl.int64) << 32) | offs_n[None, :].to(tl.int64)
        key = tl.where(nmask[None, :], key, 0x7FFFFFFFFFFFFFFF)
        cand = tl.topk(key, K_PAD, dim=1, descending=False)  # the tile's K_PAD smallest, ascending
        top = tl.bitonic_merge(tl.minimum(top, cand), dim=1, descending=True)
    # top[j] is the (K_PAD - 1 - j)-th nearest: write it to that slot when the slot is < k
    slot = K_PAD - 1 - tl.arange(0, K_PAD)
    out = out_ptr + (b * M + offs_m)[:, None] * k + slot[None, :]
    # int64 -> int32 keeps the low 32 bits: the index (< 2**31, so storing it as int64 restores it unchanged)
    tl.store(out, top.to(tl.int32), mask=mmask[:, None] & (slot[None, :] < k))


_KERNEL_FNS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    # name -> (function, arguments Triton must not specialise on their value: a new start/size is no recompile)
    "fps": (_fps_kernel, ("N", "npoint", "start")),
    "fps_tiled": (_fps_tiled_kernel, ("N", "npoint", "start")),
    "ball_query": (_ball_query_kernel, ("N", "M", "nsample")),
    "knn": (_knn_kernel, ("N", "M", "k")),
}
_KERNELS: dict[tuple[str, bool], object] = {}


def _kernel(name: str, interpret: bool):
    """The kernel ``name`` compiled by Triton's JIT, or wrapped by its interpreter (cached per mode)."""
    key = (name, interpret)
    if key not in _KERNELS:
        fn, no_spec = _KERNEL_FNS[name]
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction

            _KERNELS[key] = InterpretedFunction(fn, do_not_specialize=no_spec)
        else:
            _KERNELS[key] = triton.runtime.jit.JITFunction(fn, do_not_specialize=no_spec)
    return _KERNELS[key]


# --------------------------------------------------------------------------------------------------------- host side
def _launcher(op: str, *tensors: Tensor) -> bool:
    """Check that ``op`` can run on these tensors; returns whether to use the interpreter."""
    if triton is None:
        raise ConfigError(
            f"{op}: the Triton kernels need the 'triton' package, which does not import here ({_TRITON_IMPORT_ERROR}); "
            "it ships with the Linux CUDA wheels of torch (or: pip install triton). Use the pure-PyTorch ops "
            "(model.ops_backend=torch)."
        )
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise DataError(f"{op}: inputs are on different devices ({', '.join(sorted(map(str, devices)))})")
    if interpreting():
        return True
    if tensors[0].device.type != "cuda":
        if _interpret_requested():
            raise ConfigError(
                f"{op}: got a tensor on {tensors[0].device} and TRITON_INTERPRET=1 is set, but it was set after "
                "'triton' was imported, so Triton's library is compiled, not interpreted. Set TRITON_INTERPRET=1 "
                "before the process starts (or before anything imports triton or lightning)."
            )
        raise ConfigError(
            f"{op}: got a tensor on {tensors[0].device}; the Triton kernels run on CUDA tensors. Move the input to a "
            "GPU, set TRITON_INTERPRET=1 to run them in Triton's CPU interpreter (slow; for tests), or use "
            "captionless3d.models.ops (pure PyTorch)."
        )
    return False


def _device_of(t: Tensor, interpret: bool):
    """Triton launches on the current CUDA device: make it the tensor's (several GPUs in one process)."""
    return contextlib.nullcontext() if interpret or t.device.type != "cuda" else torch.cuda.device(t.device)


def _points(op: str, name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor) or t.dim() != 3 or t.shape[-1] != 3:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise DataError(f"{op} expects {name} of shape (B, N, 3), got {shape}")


def _as_float(t: Tensor) -> Tensor:
    t = t.detach()
    return t if t.dtype == torch.float32 else t.float()


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def _fps_warps(block: int) -> int:
    # ~16 points a thread: x, y, z, dist = 64 registers at 2048 points / 4 warps; 32 warps (1024 threads, the most
    # a block may have) from 16,384 points on, where some of that may spill to (L1-cached) local memory
    return max(4, min(32, block // 512))


@torch.no_grad()
def furthest_point_sample(xyz: Tensor, npoint: int, start: int = 0) -> Tensor:
    """Farthest point sampling. ``xyz (B, N, 3)`` float -> indices ``(B, npoint)`` int64, on ``xyz``'s device.

    The first sample is ``start`` for every cloud; each later one is the point with the largest squared distance to
    the chosen set (running minimum, initialised to 1e10; lowest index on exact ties). Same indices as
    :func:`captionless3d.models.ops.furthest_point_sample` (see the module docstring on rounding).
    """
    op = "triton_ops.furthest_point_sample"
    _points(op, "xyz", xyz)
    B, N, _ = xyz.shape
    if not 0 < npoint <= N:
        raise DataError(f"{op}: npoint={npoint} must be in [1, N={N}]")
    if not 0 <= start < N:
        raise DataError(f"{op}: start={start} must be in [0, N={N})")
    interpret = _launcher(op, xyz)
    xyz = _as_float(xyz)
    out = torch.empty(B, npoint, dtype=torch.int64, device=xyz.device)
    if B == 0:
        return out
    sb, sn, sc = xyz.stride()
    with _device_of(xyz, interpret):
        _launch_fps(xyz, out, npoint, start, sb, sn, sc, interpret)
    return out


def _launch_fps(xyz: Tensor, out: Tensor, npoint: int, start: int, sb: int, sn: int, sc: int, interpret: bool) -> None:
    B, N, _ = xyz.shape
    if N <= FPS_ON_CHIP_MAX:
        block = _pow2(N)
        _kernel("fps", interpret)[(B,)](xyz, out, N, npoint, start, sb, sn, sc, BLOCK=block,
                                        num_warps=_fps_warps(block), enable_fp_fusion=False)
    else:
        dist = torch.full((B, N), 1e10, dtype=torch.float32, device=xyz.device)
        _kernel("fps_tiled", interpret)[(B,)](xyz, dist, out, N, npoint, start, sb, sn, sc, BLOCK=_pow2(FPS_TILE),
                                              num_warps=8, enable_fp_fusion=False)


def _pair_args(op: str, support: Tensor, query: Tensor) -> tuple[int, int, int]:
    _points(op, "support", support)
    _points(op, "query", query)
    if support.shape[0] != query.shape[0]:
        raise DataError(f"{op}: support and query batch sizes differ ({support.shape[0]} vs {query.shape[0]})")
    return support.shape[0], support.shape[1], query.shape[1]


@torch.no_grad()
def ball_query(support: Tensor, query: Tensor, radius: float, nsample: int) -> Tensor:
    """Ball query. ``support (B, N, 3)``, ``query (B, M, 3)`` -> neighbour indices ``(B, M, nsample)`` int64.

    The first ``nsample`` support points in index order with ``|q - s|^2 < radius^2`` (strict; ``radius^2`` rounded
    to float32 as in :mod:`ops` and the CUDA op); short balls are padded with their first index; empty balls are all
    0. Direct differences, no FMA: see the module docstring on points within rounding of the boundary.
    """
    op = "triton_ops.ball_query"
    B, N, M = _pair_args(op, support, query)
    if nsample < 1:
        raise DataError(f"{op}: nsample={nsample} must be >= 1")
    interpret = _launcher(op, support, query)
    support, query = _as_float(support), _as_float(query)
    out = torch.empty(B, M, nsample, dtype=torch.int64, device=support.device)
    if out.numel() == 0:
        return out
    r2 = float(torch.tensor(radius, dtype=torch.float32) ** 2)  # exact in float32, so the kernel's fp32 r2 is too
    grid = (triton.cdiv(M, BALL_QUERY_BLOCK_M), B)
    with _device_of(support, interpret):
        _kernel("ball_query", interpret)[grid](
            support, query, out, N, M, r2, nsample, *support.stride(), *query.stride(),
            BLOCK_M=BALL_QUERY_BLOCK_M, BLOCK_N=BALL_QUERY_BLOCK_N, BLOCK_K=_pow2(nsample), num_warps=4,
            enable_fp_fusion=False,
        )
    return out


@torch.no_grad()
def knn(support: Tensor, query: Tensor, k: int) -> Tensor:
    """k nearest neighbours. ``support (B, N, 3)``, ``query (B, M, 3)`` -> indices ``(B, M, k)`` int64.

    Each row lists the ``k`` support points nearest to the query in ascending squared distance (direct differences),
    exact ties to the lower index: the same as :func:`captionless3d.models.ops.knn`.
    """
    op = "triton_ops.knn"
    B, N, M = _pair_args(op, support, query)
    if not 0 < k <= N:
        raise DataError(f"{op}: k={k} must be in [1, N={N}]")
    interpret = _launcher(op, support, query)
    support, query = _as_float(support), _as_float(query)
    out = torch.empty(B, M, k, dtype=torch.int64, device=support.device)
    if out.numel() == 0:
        return out
    k_pad = _pow2(k)
    block_n = max(k_pad, KNN_BLOCK_N)
    block_m = max(1, min(KNN_BLOCK_M, KNN_MAX_TILE // block_n))
    grid = (triton.cdiv(M, block_m), B)
    with _device_of(support, interpret):
        _kernel("knn", interpret)[grid](
            support, query, out, N, M, k, *support.stride(), *query.stride(),
            BLOCK_M=block_m, BLOCK_N=block_n, K_PAD=k_pad, num_warps=4, enable_fp_fusion=False,
        )
    return out
