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


@pytest.mark.parametrize("n,d,k,bs",
                         [(53, 6, 5, 16), (300, 8, 12, 64), (257, 4, 7, 32), (40, 5, 39, 8), (90, 3, 4, 1000)])
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


@pytest.mark.parametrize("slack,cluster", [(1.0, False), (0.05, True), (3.0, True)])
def test_block_size_invariance(slack, cluster, monkeypatch):
    """Same keys for any block size / chunk / slack (frequent or rare threshold refreshes) / row order."""
    import captionless3d.mining.topk as topk_mod

    monkeypatch.setattr(topk_mod, "_SLACK", slack)
    monkeypatch.setattr(topk_mod, "_ORDER_MIN_BLOCKS", 2 if cluster else 10**9)
    x = tied_data(200, 5, seed=3)
    ref = topk_similar(x, 9, block_size=200, metric="ip", progress=False)
    for bs, chunk in ((7, 4), (13, 1), (64, 16), (199, 8)):
        out = topk_similar(x, 9, block_size=bs, metric="ip", progress=False, chunk=chunk)
        assert torch.equal(out[1], ref[1]) and torch.equal(out[0], ref[0])


def quantised_data(n, d, seed, levels=3):
    """Dyadic coordinates with few levels plus many duplicated rows: huge tie groups at every threshold."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-levels, levels + 1, (n, d), generator=g).float() / 4
    dup = torch.randint(0, n, (n // 3,), generator=g)
    x[torch.randint(0, n, (n // 3,), generator=g)] = x[dup]
    return x


@pytest.mark.parametrize(
    "n,d,k,bs,chunk",
    [
        (600, 4, 16, 64, 8),  # thresholds screened by chunk maxima, seeds from the chunk-max bound
        (600, 3, 40, 48, 4),  # k > chunks per block: seeds take every entry
        (130, 4, 128, 32, 16),  # k = N - 2: almost every pair survives
        (97, 2, 96, 20, 4),  # k = N - 1 (exclude_self), blocks with a ragged tail
    ],
)
@pytest.mark.parametrize("cluster,tiled", [(False, False), (True, False), (True, True), (False, True)])
def test_screening_exact_with_massive_ties(n, d, k, bs, chunk, cluster, tiled, monkeypatch):
    """The screened paths equal the brute force (values and indices, ties by the smaller index) when the k-th
    value is shared by many rows (duplicates, quantised values) and with k close to N; natural or clustered order,
    off-diagonal blocks by separate row/column chunk screening or by joint tile screening."""
    import captionless3d.mining.topk as topk_mod

    monkeypatch.setattr(topk_mod, "_ORDER_MIN_BLOCKS", 2 if cluster else 10**9)
    monkeypatch.setattr(topk_mod, "_TILED_MAX", 1.0 if tiled else -1.0)
    monkeypatch.setattr(topk_mod, "_SLACK", 0.25)  # frequent compactions: thresholds tight, many exact ties
    x = quantised_data(n, d, seed=n + k)
    for metric in ("ip", "cosine"):
        v, i = topk_similar(x, k, block_size=bs, metric=metric, progress=False, chunk=chunk)
        bv, bi = brute(x, k, metric)
        if metric == "ip":  # dyadic data: every ip score is exact in float32, so the order must match bit for bit
            assert torch.equal(i, bi)
            assert torch.equal(v, bv)
        else:  # cosine rounds: compare the sets of near-tie-free rows and the values
            torch.testing.assert_close(v, bv, atol=1e-6, rtol=1e-6)


def test_cluster_order_is_a_permutation_and_exact(monkeypatch):
    import captionless3d.mining.topk as topk_mod

    x = torch.randn(1000, 16, generator=torch.Generator().manual_seed(5))
    x[500:] = x[:500] + 0.01  # near-duplicate pairs far apart in index
    blocks = topk_mod._Blocks(x, "cosine", torch.device("cpu"))
    order = topk_mod._cluster_order(blocks, 1000, 100)
    assert order is not None and np.array_equal(np.sort(order), np.arange(1000))
    for s in range(0, 1000, 100):
        assert np.all(np.diff(order[s : s + 100]) > 0)  # ascending within each block
    v, i = topk_similar(x, 5, block_size=100, metric="ip", progress=False)
    bv, bi = brute(x, 5, "ip")
    torch.testing.assert_close(v, bv, atol=1e-5, rtol=1e-5)
    assert (i == bi).float().mean() > 0.999


def test_thread_choices_do_not_change_results_and_are_restored(monkeypatch):
    """The thread tuner (probing every call here) and the one-thread screening only change speed; the caller's
    intra-op thread count is restored."""
    import captionless3d.mining.topk as topk_mod

    x = quantised_data(400, 4, seed=11)
    ref = topk_similar(x, 12, block_size=64, metric="ip", progress=False, chunk=8)
    before = torch.get_num_threads()
    monkeypatch.setattr(topk_mod, "_PROBE", 1)
    for screen_threads in (0, 1):
        monkeypatch.setattr(topk_mod, "_SCREEN_THREADS", screen_threads)
        out = topk_similar(x, 12, block_size=64, metric="ip", progress=False, chunk=8)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
        assert torch.get_num_threads() == before


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
