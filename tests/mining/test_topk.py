"""topk_similar against a brute-force reference: full matrix + stable descending sort (ties by smaller index)."""
import numpy as np
import pytest
import torch

from captionless3d.errors import ConfigError, DataError
from captionless3d.mining.topk import pack_keys, topk_similar, unpack_keys


def brute(x, k, metric, exclude_self=True):
    x = torch.as_tensor(x).double()
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    s = -torch.cdist(x, x) if metric == "l2" else x @ x.T
    if exclude_self:
        s.fill_diagonal_(-float("inf"))
    o = torch.sort(s, dim=1, descending=True, stable=True)
    v = o.values[:, :k]
    return (-v if metric == "l2" else v).float(), o.indices[:, :k]


def tied_data(n, d, seed):
    """Small integers: every dot product is exact in float32, and duplicated rows create exact ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, d), generator=g).float()
    x[3] = x[1]
    x[n - 1] = x[1]
    x[n // 2] = x[1]
    x[7] = 0  # a zero row: ties with everything at 0
    return x


@pytest.mark.parametrize("n,d,k,bs", [(53, 6, 5, 16), (300, 8, 12, 64), (257, 4, 7, 32), (40, 5, 39, 8), (90, 3, 4, 1000)])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("exclude_self", [True, False])
def test_exact_with_ties(n, d, k, bs, metric, exclude_self):
    if not exclude_self and k >= n:
        k = n
    x = tied_data(n, d, seed=n + d)
    v, i = topk_similar(x, k, block_size=bs, metric=metric, exclude_self=exclude_self, progress=False, chunk=8)
    bv, bi = brute(x, k, metric, exclude_self)
    assert v.dtype == torch.float32 and i.dtype == torch.int64 and v.shape == (n, k)
    assert torch.equal(i, bi)
    torch.testing.assert_close(v, bv, atol=1e-5, rtol=1e-5)


def test_duplicates_ordered_by_index():
    # dyadic entries: every dot product is exact, so the copies' scores tie bit for bit. (With general floats a
    # BLAS may round identical columns differently by an ulp; then the values differ and are ordered by value.)
    base = torch.randint(-8, 9, (5, 16), generator=torch.Generator().manual_seed(0)).float() / 4
    x = base.repeat(6, 1)  # row r is a copy of row r % 5
    v, i = topk_similar(x, 5, block_size=7, metric="ip", progress=False)
    for r in range(30):
        copies = [j for j in range(r % 5, 30, 5) if j != r]
        assert i[r].tolist() == copies  # all copies tie exactly; ascending index


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_random_float_matches_bruteforce(metric):
    x = torch.randn(700, 24, generator=torch.Generator().manual_seed(1))
    v, i = topk_similar(x.numpy().astype(np.float16), 10, block_size=128, metric=metric, progress=False)
    bv, bi = brute(torch.from_numpy(x.numpy().astype(np.float16).astype(np.float32)), 10, metric)
    torch.testing.assert_close(v, bv, atol=1e-5, rtol=1e-5)
    assert (i == bi).float().mean() > 0.999  # float32 vs float64 rounding may swap a near-tie


@pytest.mark.parametrize("direct", [0.0, 0.25, 10.0])  # always / sometimes / never screen entries directly
def test_block_size_invariance(direct, monkeypatch):
    import captionless3d.mining.topk as topk_mod

    monkeypatch.setattr(topk_mod, "_DIRECT", direct)
    x = tied_data(200, 5, seed=3)
    ref = topk_similar(x, 9, block_size=200, metric="ip", progress=False)
    for bs in (7, 13, 64, 199):
        out = topk_similar(x, 9, block_size=bs, metric="ip", progress=False, chunk=4)
        assert torch.equal(out[1], ref[1]) and torch.equal(out[0], ref[0])


def test_pack_roundtrip_and_order():
    vals = torch.tensor([-float("inf"), -2.5, -0.0, 0.0, 1e-30, 3.0, float("inf")])
    idx = torch.tensor([4, 0, 9, 2, 7, 1, 3])
    keys = pack_keys(vals, idx)
    v, i = unpack_keys(keys)
    assert torch.equal(i, idx) and torch.equal(v, vals + 0.0)
    # (0.0, 2) beats (-0.0 -> 0.0, 9): equal values, smaller index first
    assert keys[3] > keys[2]
    assert torch.all(keys[1:][torch.tensor([0, 1, 3, 4, 5])] > keys[:-1][torch.tensor([0, 1, 3, 4, 5])])


def test_errors():
    x = torch.randn(10, 3)
    with pytest.raises(ConfigError):
        topk_similar(x, 10, progress=False)  # k > N - 1
    with pytest.raises(ConfigError):
        topk_similar(x, 2, metric="dot", progress=False)
    with pytest.raises(DataError):
        topk_similar(torch.randn(10), 2, progress=False)
    x[4, 1] = float("nan")
    with pytest.raises(DataError):
        topk_similar(x, 2, progress=False)
