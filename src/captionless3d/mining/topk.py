"""Exact global k-nearest-neighbour search over all objects, label-free, in blocks (for sparse priors).

:func:`topk_similar` returns, for every row of ``x (N, d)``, its ``k`` most similar other rows, *exactly* (no
approximation), computing each pairwise score once.

How it works:

- The rows are cut into blocks of ``block_size``. For every block pair ``(I, J)`` with ``J >= I`` the score block
  ``S = X_I X_Jᵀ`` is computed **once** (one GEMM) and serves both sides: the rows of ``I`` see the columns of
  ``J`` and, through ``Sᵀ``, the rows of ``J`` see the columns of ``I``. This halves the GEMM work of a plain
  ``search(x, x)`` (what ``faiss.IndexFlatIP`` does).
- Each row keeps a running top-k. Once it is full, its k-th best score is a threshold: only entries ``>=`` it can
  enter. A block is screened through the maxima of small chunks of ``chunk`` entries (one cheap reduction per side);
  only chunks whose maximum reaches the row's threshold are looked at, so after the first blocks almost nothing is
  gathered and the GEMM dominates.
- Score and column index are packed into one int64 key (order-preserving float bits in the high 32 bits, the
  complement of the index in the low 32 bits), so every selection is a ``topk`` over unique keys: **ties are broken
  deterministically by the smaller index**, independent of block size, thread count or device.

Memory beyond the input and the ``(N, k)`` output: about ``block_size² · 12`` bytes (one fp32 score block and, for
the first block of each row block, its int64 keys), i.e. ~200 MB at the default ``block_size=4096``.

Metrics:

- ``"cosine"``: rows are L2-normalised (in float32, block by block), score = cosine; values descending.
- ``"ip"``: raw inner product, no normalisation; values descending.
- ``"l2"``: Euclidean distance. The search ranks by ``2ab − ‖a‖² − ‖b‖² = −‖a−b‖²`` (one GEMM on augmented
  vectors ``[2a, −‖a‖², −1]·[b, 1, ‖b‖²]``) in float32; the reported ``values`` are the distances ``‖a−b‖₂`` of the
  selected pairs *recomputed in float64* (no cancellation), ascending, ties by smaller index. Near-duplicates
  whose float32 squared distances tie or cross within rounding may be selected in either order.

Everything else is float32 (fp16 inputs, e.g. a memory-mapped feature cache, are upcast block by block).
"""
from __future__ import annotations

import math
from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F

from captionless3d.errors import ConfigError, DataError

__all__ = ["topk_similar", "TOPK_METRICS", "pack_keys", "unpack_keys"]

TOPK_METRICS = ("cosine", "ip", "l2")
ArrayLike = Union[np.ndarray, torch.Tensor]

_LOW = (1 << 32) - 1
_CHUNK = 16  # screening granularity (entries per chunk maximum)
_DIRECT = 0.25  # if the hit chunks cover more than this fraction of a block, screen its entries directly
_EMPTY = torch.iinfo(torch.int64).min  # key of an empty slot: below every real key


def _float_to_ordered_i32(v: torch.Tensor) -> torch.Tensor:
    """float32 -> int32 with the same total order (for finite values and ±inf; -0.0 < +0.0)."""
    bits = v.contiguous().view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _ordered_i32_to_float(k: torch.Tensor) -> torch.Tensor:
    return (k ^ ((k >> 31) & 0x7FFFFFFF)).contiguous().view(torch.float32)


def pack_keys(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering (value desc, index asc) as key desc. ``indices`` must be in [0, 2³²)."""
    hi = _float_to_ordered_i32(values.to(torch.float32) + 0.0).to(torch.int64) << 32  # + 0.0: -0.0 -> +0.0
    return hi | (_LOW - indices.to(torch.int64))


def unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_keys`: ``(values float32, indices int64)``."""
    values = _ordered_i32_to_float((keys >> 32).to(torch.int32))
    indices = _LOW - (keys & _LOW)
    return values, indices


class _Blocks:
    """Float32 (optionally normalised / augmented) row blocks of the input, converted on demand."""

    def __init__(self, x: ArrayLike, metric: str, device: torch.device) -> None:
        self.x = x
        self.metric = metric
        self.device = device
        self.is_torch = isinstance(x, torch.Tensor)

    def raw(self, start: int, stop: int, check: bool = False) -> torch.Tensor:
        if self.is_torch:
            b = self.x[start:stop]
        else:
            b = torch.from_numpy(np.ascontiguousarray(self.x[start:stop]))
        b = b.to(device=self.device, dtype=torch.float32)
        if check and not bool(torch.isfinite(b).all()):
            raise DataError(f"topk_similar: x rows {start}..{stop - 1} contain NaN or Inf")
        return b

    def left(self, start: int, stop: int) -> torch.Tensor:
        """Row block as the left GEMM operand (every row passes here once: the finiteness check)."""
        b = self.raw(start, stop, check=True)
        if self.metric == "cosine":
            return F.normalize(b, dim=1)
        if self.metric == "l2":
            sq = (b * b).sum(1, keepdim=True)
            return torch.cat([2.0 * b, -sq, -torch.ones_like(sq)], dim=1)
        return b

    def right(self, start: int, stop: int, left: torch.Tensor | None = None) -> torch.Tensor:
        """Row block as the right GEMM operand (transposed later)."""
        if self.metric == "l2":
            b = self.raw(start, stop) if left is None else left[:, :-2] * 0.5
            sq = (b * b).sum(1, keepdim=True)
            return torch.cat([b, torch.ones_like(sq), sq], dim=1)
        if left is not None:
            return left
        b = self.raw(start, stop)
        return F.normalize(b, dim=1) if self.metric == "cosine" else b


def _merge(run: torch.Tensor, rows: torch.Tensor, keys: torch.Tensor, k: int) -> None:
    """Merge candidate ``keys`` of local ``rows`` (sorted ascending) into the running keys ``run (B, k)`` in place."""
    if rows.numel() == 0:
        return
    urows, counts = torch.unique_consecutive(rows, return_counts=True)
    width = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(rows.numel(), device=rows.device) - torch.repeat_interleave(starts, counts)
    slot = torch.repeat_interleave(torch.arange(urows.numel(), device=rows.device), counts)
    pad = torch.full((urows.numel(), width), _EMPTY, dtype=torch.int64, device=run.device)
    pad[slot, pos] = keys
    both = torch.cat([run[urows], pad], dim=1)
    run[urows] = torch.topk(both, k, dim=1, sorted=True).values


def _full_select(run: torch.Tensor, scores: torch.Tensor, col_offset: int, k: int) -> None:
    """Exact top-k of every row of ``scores (B, C)`` (columns ``col_offset + c``) merged into ``run (B, k)``.

    A float ``topk(k + 1)`` fixes the top-k *set* of every row whose k-th and (k+1)-th values differ; rows with a
    tie across the boundary are redone over int64 keys (value, then smaller index)."""
    b, c = scores.shape
    if k + 1 <= c:
        v, ix = torch.topk(scores, k + 1, dim=1, sorted=True)
        best = pack_keys(v[:, :k], ix[:, :k] + col_offset)
        tie = (v[:, k - 1] == v[:, k]).nonzero(as_tuple=True)[0]
        if tie.numel():
            sub = scores[tie]
            cols = torch.arange(col_offset, col_offset + c, device=scores.device)
            best[tie] = torch.topk(pack_keys(sub, cols.expand_as(sub)), k, dim=1).values
    else:
        cols = torch.arange(col_offset, col_offset + c, device=scores.device)
        best = pack_keys(scores, cols.expand_as(scores))
    both = torch.cat([run, best], dim=1)
    run.copy_(torch.topk(both, k, dim=1, sorted=True).values)


def _screen_rows(run: torch.Tensor, scores: torch.Tensor, col_offset: int, k: int, chunk: int) -> None:
    """Row side of a block: candidates of rows of ``scores (B, C)`` that reach the row thresholds."""
    b, c = scores.shape
    thr = unpack_keys(run[:, k - 1])[0]  # (B,) k-th best score so far
    main = (c // chunk) * chunk
    if main:
        # chunk maxima (B, C/chunk); max_pool1d is much faster than amax over a short innermost dim
        cmax = F.max_pool1d(scores[None], chunk, chunk)[0] if chunk > 1 else scores
        r, ch = (cmax >= thr[:, None]).nonzero(as_tuple=True)  # row-major: r ascending
        if r.numel() * chunk > _DIRECT * b * main:  # many hits (early blocks): compare entries directly
            r, cc = (scores[:, :main] >= thr[:, None]).nonzero(as_tuple=True)
            _merge(run, r, pack_keys(scores[r, cc], cc + col_offset), k)
        elif r.numel():
            vals = scores[r[:, None], ch[:, None] * chunk + torch.arange(chunk, device=scores.device)]  # (n, chunk)
            hn, hj = (vals >= thr[r][:, None]).nonzero(as_tuple=True)  # hn ascending: rows stay sorted
            _merge(run, r[hn], pack_keys(vals[hn, hj], ch[hn] * chunk + hj + col_offset), k)
    if main != c:
        tail = scores[:, main:]
        r, cc = (tail >= thr[:, None]).nonzero(as_tuple=True)
        _merge(run, r, pack_keys(tail[r, cc], cc + (main + col_offset)), k)


def _screen_cols(run: torch.Tensor, scores: torch.Tensor, row_offset: int, k: int, chunk: int) -> None:
    """Column side of a block: candidates for the *columns* of ``scores (B, C)`` (rows of ``run (C, k)``)."""
    b, c = scores.shape
    thr = unpack_keys(run[:, k - 1])[0]  # (C,)
    main = (b // chunk) * chunk
    if main:
        view = scores[:main].view(main // chunk, chunk, c)
        cmax_t = view.amax(dim=1).T  # (C, B/chunk)
        col, rch = (cmax_t >= thr[:, None]).nonzero(as_tuple=True)  # col ascending
        if col.numel() * chunk > _DIRECT * main * c:  # many hits (early blocks): compare entries directly
            cc, r = (scores[:main].T >= thr[:, None]).nonzero(as_tuple=True)  # cc ascending
            _merge(run, cc, pack_keys(scores[r, cc], r + row_offset), k)
        elif col.numel():
            vals = view[rch, :, col]  # (n, chunk)
            hn, hj = (vals >= thr[col][:, None]).nonzero(as_tuple=True)
            _merge(run, col[hn], pack_keys(vals[hn, hj], rch[hn] * chunk + hj + row_offset), k)
    if main != b:
        tail = scores[main:].T  # (C, b - main)
        cc, r = (tail >= thr[:, None]).nonzero(as_tuple=True)
        _merge(run, cc, pack_keys(tail[cc, r], r + (main + row_offset)), k)


def _l2_exact(blocks: _Blocks, indices: torch.Tensor, n: int, rows_per_chunk: int = 256) -> torch.Tensor:
    """float64 Euclidean distances of the selected pairs ``(N, k)``, returned as float32."""
    out = torch.empty(indices.shape, dtype=torch.float32, device=indices.device)
    for s in range(0, n, rows_per_chunk):
        e = min(n, s + rows_per_chunk)
        a = blocks.raw(s, e).double()
        idx = indices[s:e]
        if blocks.is_torch:
            nb = blocks.x[idx.reshape(-1).to(blocks.x.device)]
        else:
            uniq, inv = np.unique(idx.cpu().numpy().reshape(-1), return_inverse=True)
            nb = torch.from_numpy(np.asarray(blocks.x[uniq], dtype=np.float64))[torch.from_numpy(inv.reshape(-1))]
        nb = nb.to(device=a.device, dtype=torch.float64).reshape(idx.shape[0], idx.shape[1], -1)
        out[s:e] = torch.linalg.vector_norm(a[:, None, :] - nb, dim=2).float()
    return out


def topk_similar(
    x: ArrayLike,
    k: int,
    *,
    block_size: int = 4096,
    exclude_self: bool = True,
    metric: Literal["cosine", "ip", "l2"] = "cosine",
    device: str | torch.device = "cpu",
    progress: bool = True,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k neighbours of every row of ``x (N, d)``: ``(values (N, k) float32, indices (N, k) int64)``.

    Rows are sorted best first (cosine/ip: value descending; l2: distance ascending); equal values are ordered by
    the smaller index (also at the k boundary). ``exclude_self`` drops the pair (i, i) (needs ``k <= N - 1``),
    otherwise ``k <= N``. ``x`` may be a numpy array (a memory map is read block by block) or a tensor; results are
    CPU tensors for numpy input and on ``device`` otherwise. See the module docstring for the algorithm.
    """
    if metric not in TOPK_METRICS:
        raise ConfigError(f"mining.metric: unknown top-k metric {metric!r}, expected one of {TOPK_METRICS}")
    if getattr(x, "ndim", None) != 2:
        raise DataError(f"topk_similar: x must be (N, d), got shape {tuple(getattr(x, 'shape', ()))}")
    n = int(x.shape[0])
    k = int(k)
    limit = n - 1 if exclude_self else n
    if not 1 <= k <= limit:
        raise ConfigError(f"mining.k: must be in [1, {limit}] for {n} objects (exclude_self={exclude_self}), got {k}")
    if n >= 1 << 32:
        raise DataError(f"topk_similar: {n} rows exceed the 2^32 index range")
    block_size = int(block_size)
    if block_size < 1:
        raise ConfigError(f"mining.block_size: must be >= 1, got {block_size}")
    chunk = max(1, min(int(chunk or _CHUNK), block_size))
    dev = torch.device(device)
    blocks = _Blocks(x, metric, dev)
    run = torch.full((n, k), _EMPTY, dtype=torch.int64, device=dev)
    filled = torch.zeros(n, dtype=torch.int64)  # number of columns seen per row block (uniform within a block)
    starts = list(range(0, n, block_size))
    total = len(starts) * (len(starts) + 1) // 2
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="top-k blocks", unit="blk", leave=False)
    buf = torch.empty(min(block_size, n) ** 2, dtype=torch.float32, device=dev)

    def side(rs: int, re_: int, scores: torch.Tensor, col_off: int, rows_side: bool) -> None:
        r = run[rs:re_]
        if int(filled[rs]) < k:  # not enough columns seen yet: exact selection of the whole block
            _full_select(r, scores if rows_side else scores.T.contiguous(), col_off, k)
        elif rows_side:
            _screen_rows(r, scores, col_off, k, chunk)
        else:
            _screen_cols(r, scores, col_off, k, chunk)

    with torch.inference_mode():
        for bi, i0 in enumerate(starts):
            i1 = min(n, i0 + block_size)
            left = blocks.left(i0, i1)
            for j0 in starts[bi:]:
                j1 = min(n, j0 + block_size)
                right = blocks.right(j0, j1, left if j0 == i0 else None)
                scores = buf[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
                torch.mm(left, right.T, out=scores)
                if j0 == i0:
                    if exclude_self:
                        scores.fill_diagonal_(-math.inf)
                    side(i0, i1, scores, j0, True)  # the diagonal block holds both directions
                    filled[i0:i1] += j1 - j0 - (1 if exclude_self else 0)
                else:
                    side(i0, i1, scores, j0, True)
                    side(j0, j1, scores, i0, False)
                    filled[i0:i1] += j1 - j0
                    filled[j0:j1] += i1 - i0
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        values, indices = unpack_keys(run)
        del run, buf
        if metric == "l2":
            dist = _l2_exact(blocks, indices, n)
            # re-sort by (distance asc, index asc): stable sort by index first, then by distance
            o1 = torch.argsort(indices, dim=1, stable=True)
            dist, indices = dist.gather(1, o1), indices.gather(1, o1)
            o2 = torch.argsort(dist, dim=1, stable=True)
            values, indices = dist.gather(1, o2), indices.gather(1, o2)
    return values, indices
