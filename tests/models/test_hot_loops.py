"""The CPU hot loops: batch slices on worker threads, the fused grouped layer under any worker count, the cheap
first-max-over-k, the TorchScript FPS loop and its eager fallback."""
from __future__ import annotations

import threading

import pytest
import torch

import captionless3d.models.ops as ops
from captionless3d.models import create_encoder, grouped, pointnext
from captionless3d.models.pointnext import ConvBlock


@pytest.mark.parametrize("batch,workers", [(1, 4), (5, 2), (7, 3), (4, 4), (3, 1)])
def test_batch_parts_cover_the_batch_in_order(batch, workers):
    parts = ops.batch_parts(batch, workers)
    assert len(parts) == min(batch, workers)
    assert parts[0][0] == 0 and parts[-1][1] == batch
    assert all(a1 == b0 for (_, a1), (b0, _) in zip(parts, parts[1:]))
    sizes = [b - a for a, b in parts]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_run_parts_runs_on_other_threads_with_one_intra_op_thread_each():
    seen = {}
    together = threading.Barrier(3, timeout=10)  # passes only if all three parts run at the same time

    def part(i: int) -> int:
        seen[i] = (threading.get_ident(), torch.get_num_threads(), torch.is_grad_enabled())
        together.wait()
        return i * 10

    with torch.no_grad():
        assert ops.run_parts(part, [(0,), (1,), (2,)]) == [0, 10, 20]
    assert seen[0][0] == threading.get_ident()  # part 0 on the caller
    assert len({ident for ident, _, _ in seen.values()}) == 3
    assert all(n == ops.HOT_LOOP_THREADS for _, n, _ in seen.values())
    assert not any(grad for _, _, grad in seen.values())  # the caller's grad mode reaches the workers


def test_run_parts_restores_threads_and_waits_for_every_worker_before_raising():
    before = torch.get_num_threads()
    finished = []
    gate = threading.Event()

    def part(i: int) -> None:
        if i == 0:
            raise RuntimeError("part 0 failed")
        gate.wait(timeout=0.2)  # still running when part 0 has already failed
        finished.append(i)

    with pytest.raises(RuntimeError, match="part 0 failed"):
        ops.run_parts(part, [(0,), (1,)])
    assert finished == [1]
    assert torch.get_num_threads() == before

    def worker_fails(i: int) -> int:
        if i == 1:
            raise ValueError("worker failed")
        return i

    with pytest.raises(ValueError, match="worker failed"):
        ops.run_parts(worker_fails, [(0,), (1,)])


def test_worker_pool_is_rebuilt_after_fork(monkeypatch):
    ops.run_parts(lambda i: i, [(0,), (1,)])
    pool = ops._pool
    monkeypatch.setattr(ops.os, "getpid", lambda: -1)  # as seen from a forked child: the parent's threads are gone
    assert ops.run_parts(lambda i: i + 1, [(0,), (1,)]) == [1, 2]
    assert ops._pool is not pool


@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 32, 7), (4, 300, 3)])
def test_first_max_over_k_equals_torch_max_with_ties(shape):
    g = torch.Generator().manual_seed(0)
    z = torch.randint(-3, 4, shape, generator=g).float()  # many exact ties
    c, K, C = shape
    val, idx = torch.empty(c, C), torch.empty(c, C, dtype=torch.long)
    if K <= 255:
        rank = torch.arange(K, 0, -1, dtype=torch.uint8).view(1, K, 1)
        grouped._first_max_over_k(z, torch.empty(shape, dtype=torch.bool), rank, val, idx)
        ref_val, ref_idx = z.max(dim=1)
        assert torch.equal(val, ref_val) and torch.equal(idx, ref_idx)
        z[0, :, 0] = float("nan")
        grouped._first_max_over_k(z, torch.empty(shape, dtype=torch.bool), rank, val, idx)
        assert torch.isnan(val[0, 0]) and 0 <= idx[0, 0] < K


def _layer(C1: int, C2: int, seed: int):
    torch.manual_seed(seed)
    b1 = ConvBlock(C1 + 3, C1, dim=2, norm=True, act=True).double()
    b2 = ConvBlock(C1, C2, dim=2, norm=True, act=False).double()
    with torch.no_grad():
        b2.bn.weight[::3] *= -1  # negative gammas: the min-selection branch
    return b1, b2


def _reference(u, v, nbr, b1, b2):
    return pointnext._grouped_mlp_max(u, v, nbr, [b1, b2], "max", fused=False)  # the plain-autograd path


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
@pytest.mark.parametrize("K", [4, 300])  # 300 > 255: the torch.max fallback
def test_fused_layer_matches_reference_for_any_worker_count(monkeypatch, workers, K):
    monkeypatch.setattr(ops, "HOT_LOOP_WORKERS", workers)
    monkeypatch.setattr(grouped, "CHUNK_ELEMS", 64)  # several chunks per worker
    B, N, M, C1, C2 = 5, 11, 6, 4, 6
    g = torch.Generator().manual_seed(workers)
    u = torch.randn(B, N, C1, generator=g, dtype=torch.float64) * 3 + 5  # offsets stress the analytic BN1 sums
    v = torch.randn(B, M, C1, generator=g, dtype=torch.float64) * 3 + 4
    nbr = torch.randint(0, N, (B, M, K), generator=g)
    nbr[:, :, K // 2 :] = nbr[:, :, :1]  # ball-query style padding: duplicated neighbours tie exactly
    results = []
    for fused in (True, False):
        b1, b2 = _layer(C1, C2, seed=0)
        uu, vv = u.clone().requires_grad_(), v.clone().requires_grad_()
        y = grouped.grouped_mlp_max(uu, vv, nbr, [b1, b2]) if fused else _reference(uu, vv, nbr, b1, b2)
        w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        (y * w).sum().backward()
        grads = [uu.grad, vv.grad] + [p.grad for p in (*b1.parameters(), *b2.parameters())]
        stats = [b1.bn.running_mean, b1.bn.running_var, b2.bn.running_mean, b2.bn.running_var]
        results.append((y.detach(), grads, stats))
    (y_f, g_f, s_f), (y_r, g_r, s_r) = results
    assert torch.allclose(y_f, y_r, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_f, g_r):
        if b is None:  # the first conv's weight is not used by either path (the split happens outside)
            continue
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)
    for a, b in zip(s_f, s_r):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_float32_fused_layer_stays_close_to_float64():
    """One fused layer in float32 against the same layer in float64 (off-centre inputs, train mode): the analytic
    BN1 statistics and the regrouped BN1 gradients add no error beyond float32 rounding. Summed gradients are
    compared tightly; per-row input gradients by norm, because a near-tie in the max over k may pick a different
    neighbour in float32 than in float64."""
    g = torch.Generator().manual_seed(3)
    B, N, M, K, C1, C2 = 4, 256, 128, 32, 32, 64
    u = torch.randn(B, N, C1, generator=g, dtype=torch.float64)
    u = u + 4 * torch.rand(B, N, 1, generator=g, dtype=torch.float64)
    v = torch.randn(B, M, C1, generator=g, dtype=torch.float64) + 4
    nbr = torch.randint(0, N, (B, M, K), generator=g)
    out = []
    for dtype in (torch.float32, torch.float64):
        b1, b2 = _layer(C1, C2, seed=1)
        b1, b2 = b1.to(dtype), b2.to(dtype)
        uu, vv = u.to(dtype).requires_grad_(), v.to(dtype).requires_grad_()
        y = grouped.grouped_mlp_max(uu, vv, nbr, [b1, b2])
        (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)).sum().backward()
        params = [b1.bn.weight.grad, b1.bn.bias.grad, b2[0].weight.grad, b2.bn.weight.grad, b2.bn.bias.grad]
        out.append((y.detach().double(), [t.double() for t in params], [uu.grad.double(), vv.grad.double()]))
    (y32, p32, x32), (y64, p64, x64) = out

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    assert (y32 - y64).abs().max() <= 1e-5 * y64.abs().max()
    assert max(rel(a, b) for a, b in zip(p32, p64)) < 1e-4
    assert max(rel(a, b) for a, b in zip(x32, x64)) < 1e-4


def test_fps_torchscript_and_eager_loops_agree(monkeypatch):
    xyz = torch.rand(5, 300, 3, generator=torch.Generator().manual_seed(4))
    scripted = ops.furthest_point_sample(xyz, 64, start=3)
    assert ops._fps_loop()[1], "TorchScript FPS loop unavailable on this torch"
    monkeypatch.setattr(ops, "_FPS_LOOP", (ops._fps_into, False))  # what a torch without TorchScript gets
    assert torch.equal(ops.furthest_point_sample(xyz, 64, start=3), scripted)


def test_fps_falls_back_to_eager_when_scripting_fails(monkeypatch):
    def broken(fn):
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(ops, "_FPS_LOOP", None)
    monkeypatch.setattr(torch.jit, "script", broken)
    loop, scripted = ops._fps_loop()
    assert loop is ops._fps_into and not scripted
    xyz = torch.rand(2, 40, 3, generator=torch.Generator().manual_seed(5))
    assert ops.furthest_point_sample(xyz, 8).shape == (2, 8)


@pytest.mark.parametrize("train", [True, False])
def test_no_grad_forward_skips_indices_but_gives_the_same_values(train):
    model = create_encoder("pointnext_s").train(train)
    x = torch.rand(3, 128, 3, generator=torch.Generator().manual_seed(6)) - 0.5
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with_grad = model(x)
    model.load_state_dict(state)  # train mode updated the running statistics
    with torch.no_grad():
        without = model(x)
    assert torch.equal(with_grad.detach(), without)


def test_bn1_statistics_without_grouping_are_accurate_in_float32():
    """Off-centre clouds make u and v large against their difference; the float64 combination keeps the variance
    as accurate as torch.var on the materialised grouped rows (float32 matrix-vector sums were ~1e-5 off)."""
    from captionless3d.models.ops import ball_query, furthest_point_sample, gather_points
    from captionless3d.models.pointnext import _first_conv_split

    torch.manual_seed(0)
    enc = create_encoder("pointnext_s")
    x = torch.randn(8, 512, 3)
    x = x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True) * 0.5 + 0.4
    sa = enc.encoder[1][0]
    f = enc.encoder[0][0].convs(x)
    centres = gather_points(x, furthest_point_sample(x, 256))
    nbr = ball_query(x, centres, sa.radius, sa.nsample)
    with torch.no_grad():
        u, v = _first_conv_split(sa.convs[0], x, f, centres, 1 / sa.radius)
    B, N, C = u.shape
    M, K = nbr.shape[1:]
    fn = ops.flat_index(nbr, N).reshape(B * M, K)
    h = u.double().reshape(B * N, C)[fn.reshape(-1)] - v.double().reshape(B * M, 1, C).expand(-1, K, -1).reshape(-1, C)
    var_true, mean_true = h.var(0, unbiased=False), h.mean(0)
    assert (mean_true.abs() / var_true.sqrt()).max() > 3  # the hard case: mean well away from zero
    cnt = torch.bincount(fn.reshape(-1), minlength=B * N)
    s, ss = grouped._bn1_sums(u.reshape(B * N, C), v.reshape(B * M, C), fn, cnt, grouped._row_parts(B, N, M, 2), 37)
    R = B * M * K
    var = ss / R - (s / R) ** 2
    assert ((var - var_true).abs() / var_true).max() < 1e-6
    assert ((s / R - mean_true).abs() / var_true.sqrt()).max() < 1e-5


def test_sync_batchnorm_is_called_as_a_module_and_skips_the_fused_path(monkeypatch):
    """trainer.sync_batchnorm converts every BN to SyncBatchNorm: its statistics must come from the module (reduced
    across ranks), not from F.batch_norm or the per-process fused layer. Outside DDP it equals plain BN."""
    calls = []
    original = torch.nn.SyncBatchNorm.forward

    def spy(self, x):
        calls.append(tuple(x.shape))
        return original(self, x)

    monkeypatch.setattr(torch.nn.SyncBatchNorm, "forward", spy)
    ref = create_encoder("pointnext_s").double().train()
    sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(create_encoder("pointnext_s").double().train())
    sync.load_state_dict(ref.state_dict())
    x = torch.rand(3, 128, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64) - 0.5
    y_ref, y_sync = ref(x), sync(x)
    n_bn = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in sync.modules())
    assert n_bn > 0 and len(calls) == n_bn  # every BN of the model went through SyncBatchNorm.forward
    assert torch.allclose(y_ref, y_sync, rtol=1e-10, atol=1e-10)
    y_ref.sum().backward()
    y_sync.sum().backward()
    for (name, a), b in zip(ref.named_parameters(), sync.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-10), name
