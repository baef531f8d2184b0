"""Exact global k-nearest-neighbour search over all objects, label-free, in blocks (for sparse priors).

:func:`topk_similar` returns, for every row of ``x (N, d)``, its ``k`` most similar other rows, *exactly* (no
approximation), computing each pairwise score once.

How it works:

- The rows are cut into blocks of ``block_size``. For every block pair ``(I, J)`` with ``J >= I`` the score block
  ``S = X_I X_Jᵀ`` is computed **once** (one float32 GEMM into a preallocated buffer) and serves both sides: the
  rows of ``I`` see the columns of ``J`` and, through ``Sᵀ``, the rows of ``J`` see the columns of ``I``. This
  halves the GEMM work of a plain ``search(x, x)`` (what ``faiss.IndexFlatIP`` does); the GEMMs are most of the
  time, so everything else is built to touch each score block as little as possible.
- **Threshold screening.** Each row keeps up to ``k + slack`` candidate keys and a threshold: the value of its k-th
  best key at its last compaction (exact top-k of its slots, done when the slack is full), a lower bound of its
  final k-th best. Only scores ``>=`` the threshold can still enter (``>=``, not ``>``: an equal score with a
  smaller index must win, so equal scores are kept and the exact selection decides).
- A block is screened through maxima of small chunks of ``chunk`` entries; only chunks whose maximum reaches a
  threshold are gathered. The first block a row sees (its diagonal block) has no threshold yet: the k-th largest
  of the row's chunk maxima is one (k distinct entries reach it), so ~k candidates per row come out of it.
- **Block order.** With ≥ ``_ORDER_MIN_BLOCKS`` blocks the rows are first grouped by similarity (a few rounds of
  spherical k-means on a sample, centroids chained by similarity, rows sorted by centroid; cheap next to the
  GEMMs), and the diagonal blocks and their neighbours are scored first. Most neighbours of a row then share its
  block, so its threshold is near final before the other blocks come, and those yield almost no candidates; an
  off-diagonal block is then screened by ``chunk x chunk`` tiles from one pass of column-chunk maxima, for both
  sides at once. The order is a speed heuristic only: every pair is still scored and screened exactly.
- Score and column index are packed into one int64 key (order-preserving float bits in the high 32 bits, the
  complement of the original index in the low 32 bits), so every selection is a ``topk`` over unique keys: **ties
  are broken deterministically by the smaller index**. The selection does not depend on block size, chunk, row
  order, thread count or device (only the float32 rounding of a score may differ between GEMM kernels; scores
  that are exact in float32, e.g. of small integers or duplicated rows, tie exactly everywhere).
- Threads (CPU): the GEMMs use every intra-op thread. The screening is many small steps and runs in one thread;
  the single passes over a block (chunk maxima) and the screening of the diagonal blocks pick one thread or all
  by timing both now and then (on a machine whose cores other processes also use, every parallel step waits at a
  barrier for a preempted thread, and one thread is several times faster).

Memory beyond the input: the ``(N, k)`` outputs, ``N · (k + slack)`` int64 running keys (``slack = k``), and per
block about ``1.75 · block_size² · 4`` bytes (the float32 score block, its chunk maxima and the gathered chunks)
plus ``_GROUP + 2`` converted row blocks: ~0.3 GB at the default ``block_size=4096`` (measured peak RSS increase
0.2–0.3 GB at N = 100 000, k = 64, d = 512, outputs included).

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
import time
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from captionless3d.errors import ConfigError, DataError
from captionless3d.utils.threads import torch_threads

__all__ = ["topk_similar", "TOPK_METRICS", "pack_keys", "unpack_keys"]

TOPK_METRICS = ("cosine", "ip", "l2")
ArrayLike = np.ndarray | torch.Tensor

_LOW = (1 << 32) - 1
_CHUNK = 16  # screening granularity (entries per chunk maximum)
_SLACK = 1.0  # extra key slots per row, as a fraction of k (threshold refresh every ~k new candidates)
_EMPTY = torch.iinfo(torch.int64).min  # key of an empty slot: below every real key
_FLOOR = -torch.finfo(torch.float32).max  # screening floor: -inf scores (excluded self pairs, padding) never enter
_TILED_MAX = 0.05  # tile screening only while the hit tiles cover less than this fraction of a block
_SCREEN_THREADS = 1  # intra-op threads for everything but the GEMMs (0: unchanged), see topk_similar
_PROBE = 16  # the pass-thread tuner re-times the other thread count every this many passes
_GROUP = 4  # row blocks held at once in the last pass (each right block is read once per group)
_FINAL_ROWS = 1 << 16  # rows per final top-k selection (bounds its temporaries)
_ORDER_MIN_BLOCKS = 3  # cluster the rows into blocks from this many blocks on (see _cluster_order)
_ORDER_PER_BLOCK = 8  # k-means centroids per block
_ORDER_SAMPLE = 64  # k-means sample rows per centroid
_ORDER_ITERS = 15  # Lloyd steps


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
    """Float32 (optionally normalised / augmented) row blocks of the input, converted on demand.

    ``order`` (set by :func:`_cluster_order`) lists the original row of every position: block ``[start, stop)``
    holds the rows ``order[start:stop]``. Without it, position = row."""

    def __init__(self, x: ArrayLike, metric: str, device: torch.device) -> None:
        self.x = x
        self.metric = metric
        self.device = device
        self.is_torch = isinstance(x, torch.Tensor)
        self.order: np.ndarray | None = None

    def raw(self, start: int, stop: int, check: bool = False, ordered: bool = False) -> torch.Tensor:
        """Rows ``start..stop-1`` (original numbering, or positions in ``order`` if ``ordered``) as float32."""
        sel = slice(start, stop) if not ordered or self.order is None else self.order[start:stop]
        if self.is_torch:
            b = self.x[sel] if isinstance(sel, slice) else self.x[torch.from_numpy(sel).to(self.x.device)]
        else:
            b = torch.from_numpy(np.ascontiguousarray(self.x[sel]))
        b = b.to(device=self.device, dtype=torch.float32)
        if check and b.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(b))).all()):  # NaN propagates
            raise DataError(f"topk_similar: x rows {start}..{stop - 1} contain NaN or Inf")
        return b

    def left(self, start: int, stop: int, check: bool = False) -> torch.Tensor:
        """Block of positions ``[start, stop)`` as the left GEMM operand."""
        b = self.raw(start, stop, check=check, ordered=True)
        if self.metric == "cosine":
            return F.normalize(b, dim=1)
        if self.metric == "l2":
            sq = (b * b).sum(1, keepdim=True)
            return torch.cat([2.0 * b, -sq, -torch.ones_like(sq)], dim=1)
        return b

    def right(self, start: int, stop: int, left: torch.Tensor | None = None) -> torch.Tensor:
        """Block of positions ``[start, stop)`` as the right GEMM operand (transposed later)."""
        if self.metric == "l2":
            b = self.raw(start, stop, ordered=True) if left is None else left[:, :-2] * 0.5
            sq = (b * b).sum(1, keepdim=True)
            return torch.cat([b, torch.ones_like(sq), sq], dim=1)
        if left is not None:
            return left
        b = self.raw(start, stop, ordered=True)
        return F.normalize(b, dim=1) if self.metric == "cosine" else b


def _cluster_order(blocks: _Blocks, n: int, block_size: int, threads: int = 0) -> np.ndarray | None:
    """A row order that puts similar rows into the same block (a speed heuristic only: every pair is still scored).

    Spherical k-means (a few Lloyd steps on a fixed-seed sample, ``_ORDER_PER_BLOCK`` centroids per block), the
    centroids chained greedily by similarity, rows sorted by their centroid's place in the chain, then ascending
    within each block. When a row's neighbours share its block, its threshold is near final after the diagonal pass
    and the other blocks yield almost no candidates. ``None`` (natural order) below ``_ORDER_MIN_BLOCKS`` blocks.
    ``threads``: intra-op threads for its GEMMs (``0``: unchanged)."""
    nblocks = -(-n // block_size)
    if nblocks < _ORDER_MIN_BLOCKS:
        return None
    c = min(n, nblocks * _ORDER_PER_BLOCK)
    g = torch.Generator().manual_seed(0)
    sample = np.sort(torch.randperm(n, generator=g)[: min(n, c * _ORDER_SAMPLE)].numpy())
    xs = blocks.x[torch.from_numpy(sample).to(blocks.x.device)] if blocks.is_torch else blocks.x[sample]
    xs = F.normalize(torch.as_tensor(xs).to(device=blocks.device, dtype=torch.float32), dim=1)
    cent = xs[torch.randperm(xs.shape[0], generator=g)[:c].to(blocks.device)]
    for _ in range(_ORDER_ITERS):
        with torch_threads(threads):
            assign = torch.mm(xs, cent.T).argmax(1)
        acc = torch.zeros_like(cent).index_add_(0, assign, xs)
        cent = torch.where(acc.norm(dim=1, keepdim=True) > 0, F.normalize(acc, dim=1), cent)
    # chain the centroids: start anywhere, always step to the most similar unvisited one
    sim = torch.mm(cent, cent.T).cpu()
    rank = torch.empty(c, dtype=torch.int64)
    cur, seen = 0, torch.zeros(c, dtype=torch.bool)
    for r in range(c):
        rank[cur], seen[cur] = r, True
        if r + 1 < c:
            cur = int(sim[cur].masked_fill(seen, -math.inf).argmax())
    rank = rank.to(blocks.device)
    labels = torch.empty(n, dtype=torch.int64)
    for s in range(0, n, block_size):
        e = min(n, s + block_size)
        with torch_threads(threads):
            near = torch.mm(F.normalize(blocks.raw(s, e), dim=1), cent.T).argmax(1)
        labels[s:e] = rank[near].cpu()
    order = torch.argsort(labels, stable=True).numpy()
    for s in range(0, n, block_size):
        order[s : s + block_size].sort()
    return order


class _Running:
    """Per-row candidate keys ``(N, k + slack)`` (unsorted), their fill counts and the exact screening thresholds.

    A row's threshold is its k-th best key's value as of its last compaction (``-inf`` while it holds fewer than
    ``k`` entries): a lower bound of its final k-th best, so any score below it can be discarded. New candidates are
    appended to the slack slots; a row is compacted (exact top-k of its slots, threshold refreshed) only when its
    slack is full, so the number of exact selections per row grows with log(N), not with the number of blocks."""

    def __init__(self, n: int, k: int, slack: int, device: torch.device) -> None:
        self.k = k
        self.width = k + slack
        self.keys = torch.full((n, self.width), _EMPTY, dtype=torch.int64, device=device)
        self.fill = torch.zeros(n, dtype=torch.int64, device=device)
        self.thr = torch.full((n,), -math.inf, dtype=torch.float32, device=device)

    def _compact(self, rs: int, idx: torch.Tensor, rows: torch.Tensor | None = None,
                 cand: torch.Tensor | None = None) -> None:
        """Exact top-k of the slots of local rows ``idx`` (ascending), together with extra candidates ``cand`` of
        local ``rows`` (ascending, each in ``idx``), written back as the first slots; thresholds refreshed."""
        keys = self.keys[rs + idx]
        if rows is not None and rows.numel():
            slot = torch.searchsorted(idx, rows)
            pos = torch.arange(rows.numel(), device=rows.device) - torch.searchsorted(rows, rows)
            pad = torch.full((idx.numel(), int(pos.max()) + 1), _EMPTY, dtype=torch.int64, device=keys.device)
            pad[slot, pos] = cand
            keys = torch.cat([keys, pad], dim=1)
        top = torch.topk(keys, self.k, dim=1, sorted=False).values
        real = (top != _EMPTY).sum(1)
        if bool((real < self.k).any()):  # fewer than k entries: real ones first, appends go after them
            top = torch.sort(top, dim=1, descending=True).values
        new = torch.full((idx.numel(), self.width), _EMPTY, dtype=torch.int64, device=keys.device)
        new[:, : self.k] = top
        self.keys[rs + idx] = new
        self.fill[rs + idx] = real
        kth = top.amin(1)
        self.thr[rs + idx] = torch.where(kth == _EMPTY, -math.inf, unpack_keys(kth)[0])

    def add(self, rs: int, b: int, rows: torch.Tensor, cand: torch.Tensor) -> None:
        """Append candidate keys ``cand`` of local rows ``rows`` (ascending) of the row range ``[rs, rs + b)``."""
        if rows.numel() == 0:
            return
        fill = self.fill[rs : rs + b]
        cnt = torch.bincount(rows, minlength=b)
        over = fill + cnt > self.width
        if bool(over.any()):  # slack full: exact selection of the old slots and the new candidates together
            sel = over[rows]
            self._compact(rs, over.nonzero().squeeze(1), rows[sel], cand[sel])
            keep = ~sel
            rows, cand = rows[keep], cand[keep]
            cnt.masked_fill_(over, 0)
        if rows.numel():
            first = torch.cumsum(cnt, 0) - cnt  # position of each row's first candidate (rows ascending)
            flat = (rows + rs) * self.width + (fill - first)[rows] + torch.arange(rows.numel(), device=rows.device)
            self.keys.view(-1).index_put_((flat,), cand)
            fill += cnt
        need = (fill >= self.k) & torch.isneginf(self.thr[rs : rs + b])
        if bool(need.any()):  # first k entries of a row: compact at once to get a threshold
            self._compact(rs, need.nonzero().squeeze(1))

    def result(self, order: torch.Tensor | None) -> torch.Tensor:
        """Sorted top-k keys ``(N, k)`` of every row, rows put back to their original place (row ``order[p]``)."""
        n = self.keys.shape[0]
        out = torch.empty((n, self.k), dtype=torch.int64, device=self.keys.device)
        for s in range(0, n, _FINAL_ROWS):
            top = torch.topk(self.keys[s : s + _FINAL_ROWS], self.k, dim=1, sorted=True).values
            if order is None:
                out[s : s + top.shape[0]] = top
            else:
                out[order[s : s + top.shape[0]]] = top
        return out


def _seed_bound(cmax: torch.Tensor, k: int, dim: int) -> torch.Tensor | None:
    """Per-row lower bound of the final k-th best score from one block alone: the k-th largest of its chunk maxima
    (k distinct entries reach it), or ``None`` if the block has fewer than ``k`` chunks."""
    if cmax.shape[dim] < k:
        return None
    return torch.topk(cmax, k, dim=dim, sorted=False).values.amin(dim)


def _row_maxima(scores: torch.Tensor, b: int, chunk: int) -> torch.Tensor:
    """Maxima of the first ``b`` rows of ``scores (bp, cp)`` over chunks of ``chunk`` columns: ``(b, cp / chunk)``."""
    return F.max_pool1d(scores[None, :b], chunk, chunk)[0] if chunk > 1 else scores[:b]


def _screen_rows(st: _Running, rs: int, b: int, scores: torch.Tensor, col_ids: torch.Tensor, chunk: int,
                 cmax: torch.Tensor) -> None:
    """Candidates of the positions ``[rs, rs + b)`` among the columns of ``scores (bp, cp)`` (padded to chunk
    multiples with -inf; column ``c`` is the object ``col_ids[c]``); ``cmax`` from :func:`_row_maxima`."""
    bp, cp = scores.shape
    nc = cp // chunk
    thr = st.thr[rs : rs + b]
    if bool(torch.isneginf(thr).any()):
        bound = _seed_bound(cmax, st.k, 1)
        if bound is not None:
            thr = torch.maximum(thr, bound)
    thr = thr.clamp_min(_FLOOR)
    f = (cmax >= thr[:, None]).view(-1).nonzero().squeeze(1)  # hit chunks, row-major
    if f.numel() == 0:
        return
    vals = scores.view(-1, chunk).index_select(0, f)  # (hits, chunk): a row's chunks are contiguous (cp = nc * chunk)
    rf = torch.div(f, nc, rounding_mode="floor")
    ok = (vals >= thr[rf][:, None]).view(-1).nonzero().squeeze(1)
    h = torch.div(ok, chunk, rounding_mode="floor")
    rows = rf[h]
    cols = (f[h] - rows * nc) * chunk + (ok - h * chunk)
    st.add(rs, b, rows, pack_keys(vals.view(-1)[ok], col_ids[cols]))


class _Threads:
    """Intra-op thread count for one kind of step over a score block (a chunk-maxima pass, the screening of a
    diagonal block, ...), chosen by timing.

    Such a step is memory-bound or made of many small ops: on an idle machine every thread makes it faster, but
    when other processes hold cores, each parallel op waits at its barrier for a preempted thread, and one thread
    is several times faster. Both counts are timed in the first calls and then every ``_PROBE``-th call (the load
    changes); the one with the lower recent time per score is used. Results do not depend on it."""

    def __init__(self, many: int) -> None:
        self.options = (many, 1) if many > 1 else (1,)
        self.cost: dict[int, float] = {}
        self.calls = 0

    def pick(self) -> int:
        self.calls += 1
        if len(self.options) == 1:
            return 1
        best = min(self.options, key=lambda t: self.cost.get(t, 0.0))
        if self.calls <= 2 * len(self.options) or self.calls % _PROBE == 0:
            return self.options[self.calls % len(self.options)]
        return best

    def record(self, threads: int, seconds: float, size: int) -> None:
        c = seconds / max(1, size)
        old = self.cost.get(threads)
        self.cost[threads] = c if old is None else 0.7 * old + 0.3 * c


def _col_maxima(scores: torch.Tensor, chunk: int) -> torch.Tensor:
    """Maxima of ``scores (bp, cp)`` over chunks of ``chunk`` rows: ``(bp / chunk, cp)`` (one pass, vectorised along
    the contiguous columns)."""
    bp, cp = scores.shape
    return scores.view(bp // chunk, chunk, cp).amax(dim=1) if chunk > 1 else scores


def _screen_cols(st: _Running, rs: int, b: int, scores: torch.Tensor, row_ids: torch.Tensor, chunk: int,
                 cmax: torch.Tensor) -> None:
    """Candidates of the positions ``[rs, rs + b)`` = the first ``b`` columns of ``scores (bp, cp)`` among its rows
    (row ``r`` is the object ``row_ids[r]``); ``cmax`` from :func:`_col_maxima`."""
    bp, cp = scores.shape
    nr = bp // chunk
    thr = st.thr[rs : rs + b]
    cmax = cmax[:, :b]  # (nr, b)
    if bool(torch.isneginf(thr).any()):
        bound = _seed_bound(cmax, st.k, 0)
        if bound is not None:
            thr = torch.maximum(thr, bound)
    thr = thr.clamp_min(_FLOOR)
    hit = (cmax >= thr[None, :]).T.contiguous().view(-1)  # (b, nr), column-major over the block
    g = hit.nonzero().squeeze(1)
    if g.numel() == 0:
        return
    col = torch.div(g, nr, rounding_mode="floor")
    base = (g - col * nr) * (chunk * cp) + col
    idx = base[:, None] + torch.arange(0, chunk * cp, cp, device=g.device)
    vals = scores.view(-1)[idx.view(-1)].view(-1, chunk)
    ok = (vals >= thr[col][:, None]).view(-1).nonzero().squeeze(1)
    q = idx.view(-1)[ok]
    r = torch.div(q, cp, rounding_mode="floor")
    cols = q - r * cp
    st.add(rs, b, cols, pack_keys(vals.view(-1)[ok], row_ids[r]))


def _screen_tiles(st: _Running, i0: int, bi: int, j0: int, bj: int, scores: torch.Tensor, row_ids: torch.Tensor,
                  col_ids: torch.Tensor, chunk: int, cmax: torch.Tensor) -> bool:
    """Both sides of an off-diagonal block without another pass over it, once thresholds are strong.

    The column-side chunk maxima ``cmax`` give the maxima of ``chunk x chunk`` tiles (a cheap pooling of ``cmax``).
    A tile is looked at only if its maximum reaches the smallest threshold of its rows or of its columns; each hit
    tile is gathered once and compared with the exact thresholds of both its rows (row side) and its columns
    (column side). Returns ``False`` (nothing done) while some threshold is unset or too many tiles hit; then the
    caller screens the two sides separately."""
    bp, cp = scores.shape
    nr, nc = bp // chunk, cp // chunk
    thr_r, thr_c = st.thr[i0 : i0 + bi], st.thr[j0 : j0 + bj]
    if chunk == 1 or bool(torch.isneginf(thr_r).any()) or bool(torch.isneginf(thr_c).any()):
        return False
    thr_r = F.pad(thr_r, (0, bp - bi), value=math.inf)  # padded rows / columns never hit
    thr_c = F.pad(thr_c, (0, cp - bj), value=math.inf)
    tmax = F.max_pool1d(cmax[None], chunk, chunk)[0]  # (nr, nc)
    low = torch.minimum(thr_r.view(nr, chunk).amin(1)[:, None], thr_c.view(nc, chunk).amin(1)[None, :])
    t = (tmax >= low).view(-1).nonzero().squeeze(1)
    if t.numel() * chunk * chunk > _TILED_MAX * bp * cp:
        return False
    if t.numel() == 0:
        return True
    ar = torch.arange(chunk, device=t.device)
    tr = torch.div(t, nc, rounding_mode="floor")
    tc = t - tr * nc
    rows = ((tr * chunk)[:, None] + ar).view(-1)  # the row of each gathered segment (tile row)
    cols = ((tc * chunk)[:, None] + ar).repeat_interleave(chunk, dim=0)  # (segments, chunk) its columns
    vals = scores.view(-1, chunk).index_select(0, rows * nc + tc.repeat_interleave(chunk))  # (segments, chunk)
    ok = (vals >= thr_r[rows][:, None]).view(-1).nonzero().squeeze(1)  # row side
    if ok.numel():
        r = rows[torch.div(ok, chunk, rounding_mode="floor")]
        r, o = torch.sort(r, stable=True)
        ok = ok[o]
        st.add(i0, bi, r, pack_keys(vals.view(-1)[ok], col_ids[cols.view(-1)[ok]]))
    ok = (vals >= thr_c[cols]).view(-1).nonzero().squeeze(1)  # column side
    if ok.numel():
        c = cols.view(-1)[ok]
        c, o = torch.sort(c, stable=True)
        ok = ok[o]
        st.add(j0, bj, c, pack_keys(vals.view(-1)[ok], row_ids[rows[torch.div(ok, chunk, rounding_mode="floor")]]))
    return True


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
    block_size = -(-n // -(-n // block_size))  # as many blocks as block_size needs, all of (nearly) equal size
    chunk = max(1, min(int(chunk or _CHUNK), block_size))
    dev = torch.device(device)
    blocks = _Blocks(x, metric, dev)
    st = _Running(n, k, max(1, int(round(_SLACK * k))), dev)
    starts = list(range(0, n, block_size))
    total = len(starts) * (len(starts) + 1) // 2
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="top-k blocks", unit="blk", leave=False)
    side = -(-min(block_size, n) // chunk) * chunk  # block side padded to a multiple of the chunk
    buf = torch.empty(side * side, dtype=torch.float32, device=dev)

    def padded(m: torch.Tensor) -> torch.Tensor:
        extra = -m.shape[0] % chunk
        return F.pad(m, (0, 0, 0, extra)) if extra else m

    gemm_threads = torch.get_num_threads()
    tuners: dict[str, _Threads] = {}

    def timed(kind: str, fn, size: int):
        """``fn()`` (a step of the kind ``kind`` over a block of ``size`` scores) with the thread count its tuner
        picks (CPU), timed for the tuner."""
        if dev.type != "cpu":
            return fn()
        tuner = tuners.setdefault(kind, _Threads(gemm_threads))
        threads = tuner.pick()
        t0 = time.perf_counter()
        with torch_threads(threads):
            out = fn()
        tuner.record(threads, time.perf_counter() - t0, size)
        return out

    def pair(i0: int, j0: int, left: torch.Tensor, right: torch.Tensor | None = None) -> None:
        i1, j1 = min(n, i0 + block_size), min(n, j0 + block_size)
        if right is None and j0 == i0:
            right = left if metric != "l2" else padded(blocks.right(j0, j1, left[: i1 - i0]))
        elif right is None:
            right = padded(blocks.right(j0, j1))
        scores = buf[: left.shape[0] * right.shape[0]].view(left.shape[0], right.shape[0])
        with torch_threads(gemm_threads):
            torch.mm(left, right.T, out=scores)
        if i1 - i0 < left.shape[0]:
            scores[i1 - i0 :] = -math.inf
        if j1 - j0 < right.shape[0]:
            scores[:, j1 - j0 :] = -math.inf
        col_ids = ids[j0 : j0 + scores.shape[1]]
        if j0 == i0:
            if exclude_self:
                scores.fill_diagonal_(-math.inf)

            def seed() -> None:  # the diagonal block holds both directions
                _screen_rows(st, i0, i1 - i0, scores, col_ids, chunk, _row_maxima(scores, i1 - i0, chunk))

            timed("diagonal", seed, scores.numel())
        else:
            row_ids = ids[i0 : i0 + scores.shape[0]]
            cmax = timed("maxima", lambda: _col_maxima(scores, chunk), scores.numel())
            if not _screen_tiles(st, i0, i1 - i0, j0, j1 - j0, scores, row_ids, col_ids, chunk, cmax):

                def separate() -> None:
                    _screen_cols(st, j0, j1 - j0, scores, row_ids, chunk, cmax)
                    _screen_rows(st, i0, i1 - i0, scores, col_ids, chunk, _row_maxima(scores, i1 - i0, chunk))

                timed("separate", separate, scores.numel())
        if bar is not None:
            bar.update(1)

    # Threads (CPU): the GEMMs (and the final selection) use every intra-op thread; the tile screening and the
    # bookkeeping are many small steps and run in one thread; the passes over a block and the screening of the
    # diagonal blocks use whichever of the two their tuner timed faster. On an idle machine more threads help a
    # little; when other processes hold cores, every parallel step waits at its barrier for a preempted thread
    # (on a loaded 2-core machine that made the screening several times slower than in one thread).
    with torch.inference_mode(), torch_threads(_SCREEN_THREADS if dev.type == "cpu" else 0):
        blocks.order = _cluster_order(blocks, n, block_size, gemm_threads)
        ids = torch.arange(n + side, device=dev) if blocks.order is None else torch.from_numpy(blocks.order).to(dev)
        if blocks.order is not None:  # padded positions: any index (their scores are -inf)
            ids = torch.cat([ids, torch.zeros(side, dtype=torch.int64, device=dev)])
        # The diagonal blocks first: with clustered blocks they hold most neighbours, so every threshold is strong
        # before the off-diagonal pairs are screened. Each right after the one before it, with the pair of the two
        # (the chain of centroids puts a cluster cut by a block border into both neighbouring blocks).
        prev = None
        for i0 in starts:
            i1 = min(n, i0 + block_size)
            left = padded(blocks.left(i0, i1, check=True))
            pair(i0, i0, left)
            if prev is not None:
                right = left if metric != "l2" else padded(blocks.right(i0, i1, left[: i1 - i0]))
                pair(prev[0], i0, prev[1], right)
            prev = (i0, left)
        del prev
        # then the rest
        # (_GROUP row blocks at a time, so that each right block is read and converted once per group)
        for g in range(0, len(starts) - 2, _GROUP):
            group = starts[g : min(g + _GROUP, len(starts) - 2)]
            lefts = [padded(blocks.left(i0, min(n, i0 + block_size))) for i0 in group]
            for bj in range(g + 2, len(starts)):
                j0 = starts[bj]
                right = padded(blocks.right(j0, min(n, j0 + block_size)))
                for gi, (i0, left) in enumerate(zip(group, lefts)):
                    if bj >= g + gi + 2:
                        pair(i0, j0, left, right)
            del lefts
        if bar is not None:
            bar.close()
        buf = None  # free it (pair() above reads the name, so it is rebound, not deleted)
        with torch_threads(gemm_threads):  # one large selection
            keys = st.result(None if blocks.order is None else ids[:n])
        st = ids = None  # free them (as buf)
        if bool((keys[:, -1] == _EMPTY).any()):
            raise DataError("topk_similar: fewer than k finite scores for some rows (scores overflowed float32?)")
        values, indices = unpack_keys(keys)
        del keys
    if metric == "l2":
        with torch.inference_mode():
            dist = _l2_exact(blocks, indices, n)
            # re-sort by (distance asc, index asc): stable sort by index first, then by distance
            o1 = torch.argsort(indices, dim=1, stable=True)
            dist, indices = dist.gather(1, o1), indices.gather(1, o1)
            o2 = torch.argsort(dist, dim=1, stable=True)
            values, indices = dist.gather(1, o2), indices.gather(1, o2)
    return values, indices
