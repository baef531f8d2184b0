"""False-negative guard (issue 4): near-duplicate pairs get a reduced prior; everything else is unchanged."""
import numpy as np
import pytest
import torch

from captionless3d.errors import ConfigError, DataError
from captionless3d.losses import WeightedDenominatorLoss, normalise_prior_weights
from captionless3d.mining import PriorStore
from captionless3d.mining.guard import FalseNegativeGuard, guard_priors
from captionless3d.mining.neighbours import neighbours_from_prior


@pytest.fixture(scope="module")
def store():
    rng = np.random.default_rng(0)
    n = 30
    labels = np.repeat(np.arange(3), 10)
    view = rng.normal(size=(n, 2, 8))
    view[1] = view[0] + 1e-3  # a near-duplicate pair (0, 1)
    view[12] = view[11] + 1e-3  # and (11, 12)
    member = np.ones(n, bool)
    member[-2:] = False
    return PriorStore.build("i2i", view.astype(np.float32), labels, member)


def test_pairs_above_threshold_get_the_weight(store):
    rows = torch.tensor([0, 1, 11, 12, 5, 28, 0])
    cols = torch.arange(30)
    raw = store.pairs(rows, cols)
    guard = FalseNegativeGuard(store, threshold=0.97, weight=0.1)
    got = guard.pairs(rows, cols)
    self_pair = rows[:, None] == cols[None, :]
    near = (raw > 0.97) & ~self_pair
    assert near[0, 1] and near[1, 0] and near[2, 12] and near[3, 11]  # the planted near-duplicates
    torch.testing.assert_close(got, torch.where(near, torch.tensor(0.1), raw))
    assert (got[self_pair] == 1).all()  # self pairs keep l_ii = 1 (also for the non-member 28)
    assert int(guard.last_guarded) == int(near.sum())
    # the same row index twice in one batch is a self pair too (not guarded)
    rep = guard.pairs(torch.tensor([0, 0]), torch.tensor([0, 0]))
    assert (rep == 1).all()


def test_guard_in_the_loss_masks_near_duplicates(store):
    torch.manual_seed(0)
    index = torch.tensor([0, 1, 2, 11, 12, 20, 21, 28])
    img, pts = torch.randn(8, 16), torch.randn(8, 16, requires_grad=True)
    loss = WeightedDenominatorLoss(learnable=False)
    masked = loss(img, pts, index, [FalseNegativeGuard(store, 0.97, 0.0)])
    assert torch.isfinite(masked)
    masked.backward()
    assert torch.isfinite(pts.grad).all()
    # reference: the same loss with the prior matrix edited by hand
    l = store.pairs(index, index)
    l = torch.where((l > 0.97) & ~torch.eye(8, dtype=torch.bool), torch.zeros(()), l)
    w = normalise_prior_weights(l, torch.arange(8))
    assert w[0, 1] == 0 and w[3, 4] == 0

    class Fixed:
        def pairs(self, rows, cols):
            return l

    torch.testing.assert_close(masked, loss(img, pts.detach(), index, [Fixed()]))
    unguarded = loss(img, pts.detach(), index, [store])
    assert not torch.isclose(masked, unguarded)


def test_guard_wraps_any_prior_and_delegates(store):
    class Plain:
        def pairs(self, rows, cols):
            return torch.full((len(rows), len(cols)), 0.9)

    g = FalseNegativeGuard(Plain(), 0.5, 0.25)
    out = g(torch.tensor([0, 1]), torch.tensor([1, 2]))
    torch.testing.assert_close(out, torch.tensor([[0.25, 0.25], [0.9, 0.25]]))  # (1, 1) is a self pair
    sg = FalseNegativeGuard(store, 0.97, 0.25)
    assert sg.kind == "i2i" and sg.delta == store.delta and sg.to("cpu") is sg
    np.testing.assert_array_equal(sg.category_matrix(0), store.category_matrix(0))  # unguarded, for mining
    train = np.arange(28)
    np.testing.assert_array_equal(neighbours_from_prior(sg, train, 3), neighbours_from_prior(store, train, 3))


def test_guard_priors_and_validation(store):
    other = PriorStore.from_category_matrices({0: ([0, 1], np.array([[1, 0.99], [0.99, 1]]))}, 30, kind="i2l2")
    assert guard_priors([store, other], None) == [store, other]
    both = guard_priors([store, other], 0.95, 0.0)
    assert all(isinstance(p, FalseNegativeGuard) and p.threshold == 0.95 and p.weight == 0.0 for p in both)
    per_kind = guard_priors([store, other], {"i2l2": 0.9})
    assert per_kind[0] is store and isinstance(per_kind[1], FalseNegativeGuard) and per_kind[1].threshold == 0.9
    with pytest.raises(ConfigError, match="kind"):
        guard_priors([store], {"i2x": 0.9})
    for bad in ((float("nan"), 0.1), (0.9, -1.0), ("high", 0.1)):
        with pytest.raises(ConfigError):
            FalseNegativeGuard(store, *bad)
    with pytest.raises(ConfigError):
        FalseNegativeGuard(object(), 0.9, 0.1)

    class Wrong:
        def pairs(self, rows, cols):
            return torch.zeros(1, 1)

    with pytest.raises(DataError):
        FalseNegativeGuard(Wrong(), 0.9, 0.1).pairs([0, 1], [0])
