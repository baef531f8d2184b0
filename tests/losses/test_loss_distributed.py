"""2-process DDP (gloo, CPU) exactness: the gathered loss equals a single-process run on the global batch.

- local_loss=False: each rank's loss == the single-process loss on all 2B samples, and the DDP-averaged parameter
  gradients == the single-process gradients.
- local_loss=True: each rank's loss covers only its B rows (against all 2B columns); the mean over ranks == the
  single-process loss, and the DDP-averaged gradients are again exact (gather_with_grad=True).
"""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from captionless3d.losses import WeightedDenominatorLoss

B, D_IN, D, TOTAL, WORLD = 6, 7, 5, 40, 2


class Dense:
    def __init__(self, seed):
        g = torch.Generator().manual_seed(seed)
        m = torch.rand(TOTAL, TOTAL, generator=g)
        self.m = (m + m.T) / 2

    def pairs(self, rows, cols):
        out = self.m[rows][:, cols]
        return torch.where(rows[:, None] == cols[None, :], torch.ones_like(out), out)


class Model(nn.Module):
    def __init__(self, loss):
        super().__init__()
        torch.manual_seed(0)
        self.img = nn.Linear(D_IN, D)
        self.pts = nn.Linear(D_IN, D)
        self.loss = loss

    def forward(self, a, p, index, priors):
        return self.loss(self.img(a), self.pts(p), index, priors)


def _data():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(WORLD * B, D_IN, generator=g)
    p = a + 0.5 * torch.randn(WORLD * B, D_IN, generator=g)
    index = torch.randperm(TOTAL, generator=g)[: WORLD * B]
    return a, p, index


def _reference(priors):
    a, p, index = _data()
    model = Model(WeightedDenominatorLoss(init_scale=3.0, init_bias=-1.0))
    loss = model(a, p, index, priors)
    loss.backward()
    return loss.detach(), {n: q.grad.clone() for n, q in model.named_parameters()}


def _worker(rank, store_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=WORLD)
    try:
        priors = (Dense(2), Dense(3))
        ref_loss, ref_grads = _reference(priors)
        a, p, index = _data()
        sl = slice(rank * B, (rank + 1) * B)
        for local_loss in (False, True):
            loss_fn = WeightedDenominatorLoss(init_scale=3.0, init_bias=-1.0, local_loss=local_loss, rank=rank,
                                              world_size=WORLD)
            ddp = nn.parallel.DistributedDataParallel(Model(loss_fn))
            loss = ddp(a[sl], p[sl], index[sl], priors)
            loss.backward()
            seen = loss.detach().clone()
            dist.all_reduce(seen)
            if local_loss:
                torch.testing.assert_close(seen / WORLD, ref_loss, rtol=1e-5, atol=1e-6)
            else:
                torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-5, atol=1e-6)
            for name, q in ddp.module.named_parameters():
                torch.testing.assert_close(q.grad, ref_grads[name], rtol=1e-4, atol=1e-6,
                                           msg=lambda m: f"{name} local_loss={local_loss}: {m}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ddp_gather_equals_single_process(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    # A file rendezvous: no TCP port to race for with other processes on the machine. A numerical mismatch fails at
    # once; an infrastructure failure of the process group (gloo connect/teardown) gets one more attempt, reported.
    for attempt in range(2):
        try:
            mp.spawn(_worker, args=(str(tmp_path / f"rendezvous{attempt}"),), nprocs=WORLD, join=True)
            return
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            if "AssertionError" in str(exc) or attempt == 1:
                raise
            print(f"DDP attempt {attempt} failed outside the checks, retrying once: {exc}")
