"""WeightedDenominatorLoss against a slow literal per-element float64 implementation of the loss (docs/method.md,
Loss)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from captionless3d.errors import ConfigError, DataError
from captionless3d.losses import WeightedDenominatorLoss, normalise_prior_weights, weighted_denominator_ce
from captionless3d.mining import PriorStore

TOTAL = 150  # size of the global index space


class DensePrior:
    """A random symmetric prior over all objects (not category-structured): l in (0, 1], l_ii = 1."""

    def __init__(self, seed):
        g = torch.Generator().manual_seed(seed)
        m = torch.rand(TOTAL, TOTAL, generator=g, dtype=torch.float64)
        m = (m + m.T) / 2
        m.fill_diagonal_(1.0)
        self.matrix = m

    def pairs(self, rows, cols):
        return self.matrix[rows][:, cols].float()

    def value(self, i, j):
        return float(self.matrix[i, j].float())  # what pairs() returns, as a python float


def store_prior(kind):
    rng = np.random.default_rng(3)
    view = rng.normal(size=(TOTAL, 4, 8)).astype(np.float32)
    labels = rng.integers(0, 3, TOTAL)  # few categories: many same-category pairs per batch
    member = rng.random(TOTAL) < 0.8
    lm_labels = np.repeat(np.arange(3), 6)
    lm = rng.normal(size=(18, 8)).astype(np.float32)
    store = PriorStore.build(kind, view, labels, member, lm, lm_labels)
    full = store.pairs(torch.arange(TOTAL), torch.arange(TOTAL))
    store.value = lambda i, j: float(full[i, j])
    return store


def literal_loss(img, pts, tau, b, index, priors, eps, mode="paper"):
    """Per-element python loops in float64, straight from docs/method.md (Loss). img/pts (B, D), tau/b 0-d, all float64
    tensors."""
    B = img.shape[0]
    zi = [img[i] / torch.sqrt(sum(img[i][k] * img[i][k] for k in range(img.shape[1]))) for i in range(B)]
    zp = [pts[i] / torch.sqrt(sum(pts[i][k] * pts[i][k] for k in range(pts.shape[1]))) for i in range(B)]
    scale = tau if mode == "paper" else torch.exp(tau)
    s = [[scale * torch.dot(zi[i], zp[j]) + (b if mode == "paper" else 0.0) for j in range(B)] for i in range(B)]
    W = [[1.0] * B for _ in range(B)]
    if priors:
        W = [[0.0] * B for _ in range(B)]
        for prior in priors:
            for i in range(B):
                l = [prior.value(int(index[i]), int(index[j])) for j in range(B)]
                m = sum(l[j] for j in range(B) if j != i) / B
                for j in range(B):
                    w = 1.0 if j == i else (l[j] / m if m > 0 else 0.0)
                    W[i][j] += w / len(priors)
    l_ip = 0.0
    for i in range(B):
        denom = sum(W[i][j] * torch.exp(s[i][j]) for j in range(B)) + eps
        l_ip = l_ip - (s[i][i] - torch.log(denom))
    l_pi = 0.0
    for j in range(B):  # rows of s^T are shapes; the same W row j
        denom = sum(W[j][i] * torch.exp(s[i][j]) for i in range(B)) + eps
        l_pi = l_pi - (s[j][j] - torch.log(denom))
    return (l_ip / B + l_pi / B) / 2


def run_case(B, priors, seed=0, tau=None, b=None, autocast=False, mode="paper", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    D = 5
    img = torch.randn(B, D, generator=g)
    pts = torch.randn(B, D, generator=g)
    pts[: B // 2] += 0.8 * img[: B // 2]  # some alignment, so the positives are not random
    index = torch.randperm(TOTAL, generator=g)[:B]
    loss_fn = WeightedDenominatorLoss(temperature=mode)
    with torch.no_grad():
        if tau is not None:
            loss_fn.scale.fill_(tau)
        if b is not None and mode == "paper":
            loss_fn.bias.fill_(b)
    x = img.clone().requires_grad_(True)
    y = pts.clone().requires_grad_(True)
    if autocast:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            xb, yb = x.to(torch.bfloat16), y.to(torch.bfloat16)
            loss = loss_fn(xb, yb, index, priors)
        ref_in = (xb.detach().double(), yb.detach().double())
    else:
        xd, yd = x.to(dtype), y.to(dtype)
        loss = loss_fn(xd, yd, index, priors)
        ref_in = (xd.detach().double(), yd.detach().double())
    assert loss.dtype == torch.float32 and loss.ndim == 0
    loss.backward()

    ri, rp = (t.clone().requires_grad_(True) for t in ref_in)
    rt = loss_fn.scale.detach().double().clone().requires_grad_(True)
    rb = (loss_fn.bias.detach().double().clone() if mode == "paper"
          else torch.tensor(0.0, dtype=torch.float64)).requires_grad_(True)
    ref = literal_loss(ri, rp, rt, rb, index, priors, loss_fn.eps, mode)
    ref.backward()
    return loss, x.grad, y.grad, loss_fn, ref, ri.grad, rp.grad, rt.grad, rb.grad


PRIOR_SETS = {
    "none": lambda: (),
    "random": lambda: (DensePrior(1),),
    "avg_random": lambda: (DensePrior(1), DensePrior(2)),
    "i2i_store": lambda: (store_prior("i2i"),),
    "avg_store": lambda: (store_prior("i2i"), store_prior("i2l2")),
}


@pytest.mark.parametrize("B", [1, 2, 64])
@pytest.mark.parametrize("prior_set", list(PRIOR_SETS))
def test_loss_and_gradients_equal_literal_reference_fp32(B, prior_set):
    priors = PRIOR_SETS[prior_set]()
    loss, gx, gy, fn, ref, rgx, rgy, rgt, rgb = run_case(B, priors, seed=B, tau=3.0, b=-2.0)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx.double(), rgx, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gy.double(), rgy, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fn.scale.grad.double(), rgt, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fn.bias.grad.double(), rgb, rtol=1e-3, atol=1e-7)


def test_paper_init_and_exp_mode_match_reference():
    priors = PRIOR_SETS["avg_random"]()
    loss, gx, gy, fn, ref, rgx, rgy, rgt, rgb = run_case(16, priors, seed=5)  # paper init: tau=ln 10, b=-10
    assert fn.scale.item() == pytest.approx(math.log(10)) and fn.bias.item() == -10.0
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx.double(), rgx, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fn.scale.grad.double(), rgt, rtol=1e-4, atol=1e-6)
    assert abs(fn.bias.grad.item()) < 1e-4  # b cancels up to eps
    loss, gx, gy, fn, ref, rgx, rgy, rgt, _ = run_case(16, priors, seed=6, tau=1.5, mode="exp")
    assert fn.bias is None
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gy.double(), rgy, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fn.scale.grad.double(), rgt, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("B", [1, 2, 64])
def test_bf16_autocast_matches_reference(B):
    priors = PRIOR_SETS["avg_random"]() if B != 64 else PRIOR_SETS["avg_store"]()
    loss, gx, gy, fn, ref, rgx, rgy, rgt, rgb = run_case(B, priors, seed=10 + B, tau=3.0, b=-2.0, autocast=True)
    # the loss is computed in fp32 from the bf16 inputs: tight on the value, bf16-rounded on the input gradients
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fn.scale.grad.double(), rgt, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gx.double(), rgx, rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(gy.double(), rgy, rtol=2e-2, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_no_overflow_with_huge_scale_in_half_precision(dtype):
    fn = WeightedDenominatorLoss()
    with torch.no_grad():
        fn.scale.fill_(1e4)  # exp(1e4) overflows anything; logsumexp must not
    x = torch.randn(32, 16).to(dtype).requires_grad_(True)
    y = torch.randn(32, 16).to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fn(x, y, torch.arange(32), (DensePrior(0),))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and torch.isfinite(fn.scale.grad)


@pytest.mark.parametrize("B", [1, 7, 64])
def test_no_priors_is_plain_infonce(B):
    g = torch.Generator().manual_seed(B)
    x, y = torch.randn(B, 12, generator=g), torch.randn(B, 12, generator=g)
    for eps, tol in ((0.0, 1e-6), (1e-9, 1e-4)):
        fn = WeightedDenominatorLoss(eps=eps)
        logits = fn.scale * F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T + fn.bias
        target = torch.arange(B)
        ref = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        torch.testing.assert_close(fn(x, y), ref, rtol=tol, atol=tol)
        torch.testing.assert_close(fn(x, y, torch.arange(B), ()), ref, rtol=tol, atol=tol)


def test_worked_example_from_section_6():
    """A chair in a batch of 64 with 8 other chairs at (cos+1)/2 = 0.9, 55 other-category objects."""
    chairs = np.arange(9)
    mat = np.full((9, 9), 0.9, np.float32)
    others = {k: ([9 + k], np.ones((1, 1))) for k in range(55)}
    store = PriorStore.from_category_matrices({100: (chairs, mat), **{k: v for k, v in others.items()}}, num_objects=64)
    idx = torch.arange(64)
    l = store.pairs(idx, idx)
    w = normalise_prior_weights(l, idx)
    m = (55 * 0.25 + 8 * 0.9) / 64
    assert m == pytest.approx(0.327, abs=1e-3)
    assert w[0, 0] == 1.0
    assert w[0, 30].item() == pytest.approx(0.25 / m, rel=1e-6) and w[0, 30].item() == pytest.approx(0.76, abs=0.01)
    assert w[0, 1].item() == pytest.approx(0.9 / m, rel=1e-6) and w[0, 1].item() == pytest.approx(2.7, abs=0.06)
    assert (w[0, 1] / w[0, 30]).item() == pytest.approx(3.6, abs=0.01)
    off = w.masked_fill(torch.eye(64, dtype=torch.bool), 0)
    torch.testing.assert_close(off.sum(1), torch.full((64,), 64.0))  # sum_{j != i} w_ij = N for every row


def test_normalise_prior_weights_and_ce_helpers():
    l = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.25]])
    w = normalise_prior_weights(l, torch.tensor([0, 1]))
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 0.0], [0.5 / 0.25, 1.0, 0.25 / 0.25]]))  # no 0/0
    logits = torch.randn(4, 6)
    pos = torch.tensor([0, 3, 5, 1])
    torch.testing.assert_close(weighted_denominator_ce(logits, pos, None, eps=0.0), F.cross_entropy(logits, pos))


def test_single_store_without_sequence():
    x, y, idx = torch.randn(8, 4), torch.randn(8, 4), torch.arange(8)
    prior = DensePrior(4)
    fn = WeightedDenominatorLoss()
    torch.testing.assert_close(fn(x, y, idx, prior), fn(x, y, idx, [prior]))
    torch.testing.assert_close(fn(x, y, idx.numpy(), [prior]), fn(x, y, idx, [prior]))


def test_input_validation():
    fn = WeightedDenominatorLoss()
    x = torch.randn(4, 3)
    with pytest.raises(DataError):
        fn(x, torch.randn(4, 5))
    with pytest.raises(DataError):
        fn(x, x, None, (DensePrior(0),))
    with pytest.raises(DataError):
        fn(x, x, torch.arange(3), (DensePrior(0),))
    with pytest.raises(ConfigError):
        WeightedDenominatorLoss(temperature="linear")
    with pytest.raises(ConfigError):
        fn2 = WeightedDenominatorLoss(world_size=2, rank=0)
        fn2(x, x)
    frozen = WeightedDenominatorLoss(learnable=False)
    assert list(frozen.parameters()) == [] and "scale" in dict(frozen.named_buffers())
