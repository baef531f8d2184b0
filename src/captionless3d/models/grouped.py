"""Fused, chunked "gather -> BN -> act [-> 1x1 conv -> BN -> act] -> max over neighbours" with a hand-written backward.

This is the hot path of PointNeXt (every set abstraction and local aggregation). Plain autograd materialises several
``(B, npoint, nsample, C)`` tensors per layer (hundreds of MB at batch 32) and on CPU most of the time goes into
allocating, page-faulting and streaming them. Here the grouped tensors only ever exist one chunk of centres at a time
(a few MB, cache-resident); what is kept for backward is ``O(B * npoint * C)``.

Math (per channel; ``R = B * M * K`` grouped rows, ``h_i = u[nbr_i] - v[m_i]``):

* BN1 batch statistics of ``h`` without a pass over the grouped rows (:func:`_bn1_sums`: per-source and per-centre
  sums, combined in float64);
* forward: ``a = act1(BN1(h)) = act1(ua[nbr] - va)`` (BN1 folded into the gathered table), optionally
  ``z = a W2^T`` with BN2 statistics, and the arg-max over ``K`` of the *last BN's output*. BN is a per-channel
  affine map ``s * x + t`` whose scale has the sign of gamma, and the activation (ReLU) is monotone, so
  ``max_k act(s z_k + t) = act(s * z_sel + t)`` with ``z_sel`` the max of ``sign(gamma) * z`` over k: no full BN2
  output is ever built (:func:`_first_max_over_k`; without autograd only the values are kept);
* backward: ``dL/dy`` is non-zero only at the selected neighbour; the BN backward
  ``dx = g istd (dy - mean(dy) - xhat mean(dy xhat))`` is rebuilt chunk by chunk (recomputing ``a`` and ``z``), and
  the BN1 backward, which needs global sums before it can be applied, is pushed through the linear gather:
  ``du[n] = A (SD[n] - cnt[n] dbeta/R - SH[n] dgamma/R)``, ``dv[m] = -A (Sd[m] - K dbeta/R - Sh[m] dgamma/R)``, with
  ``SD/SH`` scatter-sums of ``d`` and ``xhat`` over the rows that read source ``n`` and ``Sd/Sh`` sums over k; the BN1
  parameter gradients come from the same sums (``dgamma = SD . uhat - Sd . vhat``).

Every pass runs one contiguous slice of the batch per worker thread (:func:`~captionless3d.models.ops.run_parts`),
so scatters of different workers never touch the same rows; partial sums are added in a fixed order.

BatchNorm semantics (batch statistics + running-stat update in training, running statistics in eval, momentum or
cumulative averaging, ``num_batches_tracked``) are those of ``torch.nn.BatchNorm``. Tests check values and all
gradients against the plain-autograd reference path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .ops import batch_parts, flat_index, hot_loop_workers, run_parts

__all__ = ["grouped_mlp_max", "supports", "CHUNK_ELEMS"]

#: Target number of float elements of one chunk's widest grouped tensor (~4 MB).
CHUNK_ELEMS = 1 << 20


def supports(blocks: list) -> bool:
    """Whether the fused path covers this block list (1 or 2 conv blocks, each conv (no bias) -> BN [-> ReLU]).

    Not for ``SyncBatchNorm``: the fused statistics are per process, SyncBatchNorm's are reduced across ranks."""
    if not 1 <= len(blocks) <= 2:
        return False
    for i, blk in enumerate(blocks):
        bn = getattr(blk, "bn", None)
        if bn is None or not bn.affine or isinstance(bn, nn.SyncBatchNorm):
            return False
        if i > 0 and blk[0].bias is not None:
            return False
    return True


@dataclass
class _BNSpec:
    bn: nn.modules.batchnorm._BatchNorm
    use_batch: bool
    update: bool
    eaf: float
    act: bool


def _spec(block) -> _BNSpec:
    bn = block.bn
    update = bool(bn.training and bn.track_running_stats and bn.running_mean is not None)
    if update and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        eaf = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else float(bn.momentum)
    else:
        eaf = 0.0 if bn.momentum is None else float(bn.momentum)
    use_batch = bool(bn.training or bn.running_mean is None)
    return _BNSpec(bn=bn, use_batch=use_batch, update=update, eaf=eaf, act=bool(block.has_act))


def _finish_stats(spec: _BNSpec, s: Tensor | None, ss: Tensor | None, R: int, dtype) -> tuple[Tensor, Tensor]:
    """mean, invstd (float32) from float64 sums, updating the running statistics like BatchNorm."""
    bn = spec.bn
    if spec.use_batch:
        mean = s / R
        var = (ss / R - mean * mean).clamp_min(0.0)
        if spec.update:
            unbiased = var * (R / max(R - 1, 1))
            bn.running_mean.mul_(1.0 - spec.eaf).add_(mean.to(bn.running_mean.dtype), alpha=spec.eaf)
            bn.running_var.mul_(1.0 - spec.eaf).add_(unbiased.to(bn.running_var.dtype), alpha=spec.eaf)
    else:
        mean = bn.running_mean.double()
        var = bn.running_var.double()
    invstd = torch.rsqrt(var + bn.eps)
    return mean.to(dtype), invstd.to(dtype)


class _ColumnStats:
    """Per-channel sum and sum of squares of row chunks, shifted by the first chunk's mean (less cancellation in
    ``E[x^2] - E[x]^2``); chunk sums in float32 via matrix-vector products, totals in float64."""

    def __init__(self, C: int, dtype, device=None) -> None:
        self.shift: Tensor | None = None
        self.s = torch.zeros(C, dtype=torch.float64, device=device)
        self.ss = torch.zeros(C, dtype=torch.float64, device=device)
        self.n = 0
        self._buf: Tensor | None = None

    def add(self, x2d: Tensor, ones: Tensor) -> None:
        rows = x2d.shape[0]
        if self.shift is None:
            self.shift = torch.mv(x2d.t(), ones[:rows]).div_(rows)
        if self._buf is None or self._buf.shape[0] < rows:
            self._buf = torch.empty_like(x2d)
        d = torch.sub(x2d, self.shift, out=self._buf[:rows])
        self.s += torch.mv(d.t(), ones[:rows]).double()
        self.ss += torch.mv(d.mul_(d).t(), ones[:rows]).double()
        self.n += rows

    @staticmethod
    def total(parts: list[_ColumnStats]) -> tuple[Tensor, Tensor]:
        """Unshifted float64 ``(sum, sum of squares)`` over several accumulators (added in list order)."""
        sums = [p.sums() for p in parts if p.n]
        return _sum_in_order([s for s, _ in sums]), _sum_in_order([ss for _, ss in sums])

    def sums(self) -> tuple[Tensor, Tensor]:
        """(sum, sum of squares) of the *unshifted* data, float64."""
        c = self.shift.double()
        s = self.s + self.n * c
        ss = self.ss + 2.0 * c * self.s + self.n * c * c
        return s, ss


def _bn1_sums(
    u2: Tensor, v2: Tensor, fn: Tensor, cnt: Tensor, parts: list[tuple[int, int, int, int]], cm: int
) -> tuple[Tensor, Tensor]:
    """float64 ``(sum, sum of squares)`` over all grouped rows of ``h = u[nbr] - v`` without materialising ``h``.

    With ``u~ = u - mean(u)``, ``v~ = v - mean(v)`` and ``c`` the difference of the means,
    ``sum (h - c) = sum_n cnt_n u~_n - K sum_m v~_m`` and
    ``sum (h - c)^2 = sum_n cnt_n u~_n^2 - 2 sum_m v~_m . U_m + K sum_m v~_m^2`` where ``U_m = sum_k u~[nbr_mk]`` is
    the only part that reads the neighbours (a gather and a sum over k, chunk by chunk).
    """
    BM, K = fn.shape
    C1 = u2.shape[1]
    cu, cv = u2.mean(0), v2.mean(0)
    ut = (u2 - cu).contiguous()
    vt = v2 - cv

    def part_sums(r0: int, r1: int, n0: int, n1: int) -> tuple[Tensor, Tensor]:
        buf = torch.empty(min(cm, r1 - r0) * K, C1, dtype=u2.dtype, device=u2.device)
        U = torch.empty(r1 - r0, C1, dtype=u2.dtype, device=u2.device)
        for m0 in range(r0, r1, cm):
            m1 = min(r1, m0 + cm)
            g = torch.index_select(ut, 0, fn[m0:m1].reshape(-1), out=buf[: (m1 - m0) * K])
            torch.sum(g.view(m1 - m0, K, C1), dim=1, out=U[m0 - r0 : m1 - r0])
        u64, v64, c64 = ut[n0:n1].double(), vt[r0:r1].double(), cnt[n0:n1].double().unsqueeze(1)
        cu64 = c64 * u64
        s = cu64.sum(0) - K * v64.sum(0)
        ss = (cu64 * u64).sum(0) - 2.0 * (v64 * U.double()).sum(0) + K * (v64 * v64).sum(0)
        return s, ss

    sums = run_parts(part_sums, parts)
    s = _sum_in_order([x for x, _ in sums])
    ss = _sum_in_order([x for _, x in sums])
    R = BM * K
    c = (cu - cv).double()
    return s + R * c, ss + 2.0 * c * s + R * c * c


def _row_parts(B: int, N: int, M: int, workers: int) -> list[tuple[int, int, int, int]]:
    """``(r0, r1, n0, n1)`` per worker: a range of the ``B * M`` centre rows and of the ``B * N`` source rows,
    aligned to clouds (so scatters into per-source rows of different workers never touch the same row)."""
    return [(b0 * M, b1 * M, b0 * N, b1 * N) for b0, b1 in batch_parts(B, workers)]


def _first_max_over_k(z: Tensor, hit: Tensor, rank: Tensor, out_val: Tensor, out_idx: Tensor) -> None:
    """``out_val, out_idx = z.max(dim=1)`` for ``z (c, K, C)``, the *first* k on ties (as ``torch.max``).

    ``torch.max(dim)`` with indices runs ~9x slower than ``amax`` on CPU; here the index is the largest of
    ``(z >= max) * (K - k)`` in uint8 (``rank`` holds ``K - k``, ``hit`` is a bool buffer shaped like ``z``).
    """
    K = z.shape[1]
    torch.amax(z, dim=1, out=out_val)
    torch.ge(z, out_val.unsqueeze(1), out=hit)
    first = hit.view(torch.uint8).mul_(rank).amax(dim=1)
    out_idx.copy_(first).neg_().add_(K)
    out_idx.clamp_(max=K - 1)  # a NaN row matches nothing: keep the index in range, the value is NaN anyway


class _GroupedMLPMax(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, u, v, nbr, g1, b1, w2, g2, b2, spec1: _BNSpec, spec2: _BNSpec | None, need_grad: bool
    ):
        workers = hot_loop_workers()
        B, N, C1 = u.shape
        _, M, K = nbr.shape
        BM, R = B * M, B * M * nbr.shape[2]
        dtype, dev = u.dtype, u.device
        u2 = u.reshape(B * N, C1).contiguous()
        v2 = v.reshape(BM, C1).contiguous()
        fn = flat_index(nbr, N).reshape(BM, K)
        # readers per source row: the BN1 statistics and the BN1 backward need it, inference does not
        cnt = torch.bincount(fn.reshape(-1), minlength=B * N) if spec1.use_batch else None
        has2 = w2 is not None
        C2 = w2.shape[0] if has2 else C1
        cm = max(1, CHUNK_ELEMS // (K * max(C1, C2)))
        parts = _row_parts(B, N, M, workers)

        # BN1 batch statistics (no pass over the grouped rows beyond one gather-and-sum)
        sums1 = _bn1_sums(u2, v2, fn, cnt, parts, cm) if spec1.use_batch else (None, None)
        mean1, invstd1 = _finish_stats(spec1, *sums1, R, dtype)
        sc1 = g1 * invstd1
        ua = torch.addcmul(b1 - mean1 * sc1, u2, sc1)  # BN1 is affine: BN1(u[nbr] - v) = ua[nbr] - va
        va = v2 * sc1

        # activations, (conv2 + BN2 statistics), selection over k; one worker per slice of the batch
        sel_val = torch.empty(BM, C2, dtype=dtype, device=dev)
        sel_idx = torch.empty(BM, C2, dtype=torch.long, device=dev) if need_grad else None
        if has2:
            sgn = torch.where(g2 >= 0, 1.0, -1.0).to(dtype)
            flip = bool((g2 < 0).any())
            w2t = w2.t()
        use_rank = need_grad and K <= 255
        rank = torch.arange(K, 0, -1, dtype=torch.uint8, device=dev).view(1, K, 1) if use_rank else None

        def select(r0: int, r1: int, n0: int, n1: int) -> _ColumnStats | None:
            rows_max = min(cm, r1 - r0) * K
            ones = torch.ones(rows_max, dtype=dtype, device=dev)
            abuf = torch.empty(rows_max, C1, dtype=dtype, device=dev)
            st2 = _ColumnStats(C2, dtype, dev) if has2 and spec2.use_batch else None
            if has2:
                zbuf = torch.empty(rows_max, C2, dtype=dtype, device=dev)
            hit = torch.empty(rows_max, C2, dtype=torch.bool, device=dev) if use_rank else None
            for m0 in range(r0, r1, cm):
                m1 = min(r1, m0 + cm)
                c, rows = m1 - m0, (m1 - m0) * K
                a = torch.index_select(ua, 0, fn[m0:m1].reshape(-1), out=abuf[:rows]).view(c, K, C1)
                a.sub_(va[m0:m1].unsqueeze(1))
                if spec1.act:
                    a.relu_()
                if has2:
                    z2d = torch.mm(a.view(-1, C1), w2t, out=zbuf[:rows])
                    if st2 is not None:
                        st2.add(z2d, ones)
                    z = z2d.view(c, K, C2)
                    if flip:
                        z.mul_(sgn)
                else:
                    z = a
                if not need_grad:  # values only: no index to keep for a backward pass
                    torch.amax(z, dim=1, out=sel_val[m0:m1])
                elif use_rank:
                    _first_max_over_k(z, hit[:rows].view(c, K, -1), rank, sel_val[m0:m1], sel_idx[m0:m1])
                else:
                    torch.max(z, dim=1, out=(sel_val[m0:m1], sel_idx[m0:m1]))
                if has2 and flip:
                    sel_val[m0:m1].mul_(sgn)
            return st2

        stats2 = run_parts(select, parts)

        if has2:
            sums2 = _ColumnStats.total(stats2) if spec2.use_batch else (None, None)
            mean2, invstd2 = _finish_stats(spec2, *sums2, R, dtype)
            sc2 = g2 * invstd2
            out = torch.addcmul(b2 - mean2 * sc2, sel_val, sc2)
            if spec2.act:
                out.relu_()
        else:
            mean2 = invstd2 = None
            out = sel_val
        ctx.dims = (B, N, M, K, C1, C2, cm, workers)
        ctx.specs = (spec1.use_batch, spec1.act, has2, spec2.use_batch if has2 else False, spec2.act if has2 else False)
        ctx.save_for_backward(u2, v2, fn, cnt, g1, b1, w2, g2, sel_val, sel_idx, out, mean1, invstd1, mean2, invstd2)
        return out.view(B, M, C2)

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):  # type: ignore[override]
        B, N, M, K, C1, C2, cm, workers = ctx.dims
        batch1, act1, has2, batch2, act2 = ctx.specs
        u2, v2, fn, cnt, g1, b1, w2, g2, sel_val, sel_idx, out, mean1, invstd1, mean2, invstd2 = ctx.saved_tensors
        BM, R = B * M, B * M * K
        dtype, dev = u2.dtype, u2.device
        gy = gout.reshape(BM, C2).to(dtype)
        if act2 if has2 else act1:
            gy = torch.ops.aten.threshold_backward(gy, out, 0.0)

        dg2 = db2 = dw2 = None
        if has2:
            zhat_sel = (sel_val - mean2) * invstd2
            db2 = gy.sum(0)
            dg2 = (gy * zhat_sel).sum(0)
            sc2 = g2 * invstd2
            if batch2:
                cz = -sc2 * dg2 / R * invstd2  # coefficient of (z - mean2)
                c0 = -sc2 * db2 / R
                c0 = c0 - cz * mean2  # dz = dsel + cz * z + c0
                w2_cz = w2.t() * cz.unsqueeze(0)
            gsel = gy * sc2  # dL/dz at the selected rows (sparse part)
        else:
            gsel = gy

        # hhat = BN1-normalised h = up[nbr] - vp
        up = (u2 - mean1) * invstd1
        vp = v2 * invstd1
        SD = torch.zeros(B * N, C1, dtype=dtype, device=dev)
        Sd = torch.empty(BM, C1, dtype=dtype, device=dev)
        SH = torch.zeros(B * N, C1, dtype=dtype, device=dev) if batch1 else None
        Sh = torch.empty(BM, C1, dtype=dtype, device=dev) if batch1 else None

        def part_backward(r0: int, r1: int, n0: int, n1: int) -> tuple[Tensor | None, Tensor, Tensor]:
            rows_max = min(cm, r1 - r0) * K
            hbuf = torch.empty(rows_max, C1, dtype=dtype, device=dev)
            abuf = torch.empty(rows_max, C1, dtype=dtype, device=dev)
            dbuf = torch.empty(rows_max, C2, dtype=dtype, device=dev)
            if has2:
                dabuf = torch.empty(rows_max, C1, dtype=dtype, device=dev)
                dw2_p = torch.zeros_like(w2)
            else:
                dw2_p = None
            for m0 in range(r0, r1, cm):
                m1 = min(r1, m0 + cm)
                c, rows = m1 - m0, (m1 - m0) * K
                idx = fn[m0:m1].reshape(-1)
                hhat = torch.index_select(up, 0, idx, out=hbuf[:rows]).view(c, K, C1).sub_(vp[m0:m1].unsqueeze(1))
                a = torch.addcmul(b1, hhat, g1, out=abuf[:rows].view(c, K, C1))
                if act1:
                    a.relu_()
                sel, gs = sel_idx[m0:m1].unsqueeze(1), gsel[m0:m1].unsqueeze(1)
                if has2 and batch2:  # dz = dsel + cz * (a W2^T) + c0, with a W2^T recomputed
                    dz = torch.addmm(c0, a.view(-1, C1), w2_cz, out=dbuf[:rows]).view(c, K, C2)
                    dz.scatter_add_(1, sel, gs)
                else:
                    dz = dbuf[:rows].view(c, K, C2).zero_().scatter_(1, sel, gs)
                if has2:
                    a2d, dz2d = a.view(-1, C1), dz.view(-1, C2)
                    dw2_p.addmm_(dz2d.t(), a2d)
                    d = torch.mm(dz2d, w2, out=dabuf[:rows]).view(c, K, C1)
                else:
                    d = dz
                if act1:
                    torch.ops.aten.threshold_backward.grad_input(d, a, 0.0, grad_input=d)
                SD.index_add_(0, idx, d.view(-1, C1))
                torch.sum(d, dim=1, out=Sd[m0:m1])
                if batch1:
                    SH.index_add_(0, idx, hhat.view(-1, C1))
                    torch.sum(hhat, dim=1, out=Sh[m0:m1])
            # BN1 parameter gradients of this slice from its per-source / per-centre sums:
            # sum_rows d = sum_m Sd_m and sum_rows d * hhat = sum_n SD_n . up_n - sum_m Sd_m . vp_m
            Sd64 = Sd[r0:r1].double()
            db1_p = Sd64.sum(0)
            dg1_p = (SD[n0:n1].double() * up[n0:n1].double()).sum(0) - (Sd64 * vp[r0:r1].double()).sum(0)
            return dw2_p, db1_p, dg1_p

        results = run_parts(part_backward, _row_parts(B, N, M, workers))
        dw2 = _sum_in_order([r[0] for r in results]) if has2 else None
        db1 = _sum_in_order([r[1] for r in results]).to(dtype)
        dg1 = _sum_in_order([r[2] for r in results]).to(dtype)
        A1 = g1 * invstd1
        if batch1:
            cntf = cnt.to(dtype).unsqueeze(1)
            du = (SD - cntf * (db1 / R) - SH * (dg1 / R)) * A1
            dv = (Sd - K * (db1 / R) - Sh * (dg1 / R)) * (-A1)
        else:
            du = SD * A1
            dv = Sd * (-A1)
        return (du.view(B, N, C1), dv.view(B, M, C1), None, dg1, db1, dw2, dg2, db2, None, None, None)


def _sum_in_order(xs: list[Tensor]) -> Tensor:
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total


def grouped_mlp_max(u: Tensor, v: Tensor, nbr: Tensor, blocks: list) -> Tensor:
    """``max_k blocks[1:](post0(u[nbr] - v))`` -> ``(B, M, C_out)`` with ``post0`` = BN/act of ``blocks[0]``.

    ``u (B, N, C1)`` per-source pre-activations, ``v (B, M, C1)`` per-centre offsets, ``nbr (B, M, K)`` int64.
    """
    spec1 = _spec(blocks[0])
    bn1 = blocks[0].bn
    if len(blocks) == 2:
        blk2 = blocks[1]
        spec2 = _spec(blk2)
        w2 = blk2.weight2d
        g2, b2 = blk2.bn.weight, blk2.bn.bias
    else:
        spec2, w2, g2, b2 = None, None, None, None
    tensors = (u, v, bn1.weight, bn1.bias, w2, g2, b2)
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return _GroupedMLPMax.apply(u, v, nbr, bn1.weight, bn1.bias, w2, g2, b2, spec1, spec2, need_grad)
