"""SparsePriorStore: pairs() against a literal reference, symmetry, persistence, stale-cache detection."""

import numpy as np
import pytest
import torch

from captionless3d.errors import CacheError, ConfigError, DataError
from captionless3d.mining.sparse import SparsePriorStore, build_sparse_prior, ensure_sparse_prior
from captionless3d.mining.topk import topk_similar


def reference(values, indices, members, n_all, kind, delta, rows, cols, symmetric=True):
    table = {}
    for a in range(len(members)):
        for t in range(indices.shape[1]):
            b = int(indices[a, t])
            v = float(values[a, t])
            w = (v + 1) / 2 if kind == "i2i" else 1 / (1 + v)
            w = min(max(w, 0.0), 1.0) if kind == "i2i" else w
            pairs = [(members[a], members[b])] + ([(members[b], members[a])] if symmetric else [])
            for p in pairs:
                table[p] = max(table.get(p, -1.0), w)
    out = np.zeros((len(rows), len(cols)))
    for r, i in enumerate(rows):
        for c, j in enumerate(cols):
            out[r, c] = 1.0 if i == j else table.get((int(i), int(j)), delta)
    return out


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    n_all = 60
    mask = rng.random(n_all) < 0.6
    members = np.flatnonzero(mask)
    x = rng.normal(size=(members.size, 8)).astype(np.float32)
    return n_all, mask, members, x


@pytest.mark.parametrize("kind,metric", [("i2i", "cosine"), ("i2l2", "l2")])
@pytest.mark.parametrize("symmetric", [True, False])
def test_pairs_match_reference(world, kind, metric, symmetric):
    n_all, _, members, x = world
    v, i = topk_similar(x, 4, block_size=16, metric=metric, progress=False)
    store = SparsePriorStore.from_topk(v, i, kind=kind, members=members, num_objects=n_all, delta=0.25,
                                       symmetric=symmetric)
    rng = np.random.default_rng(1)
    rows = np.concatenate([members[:10], rng.integers(0, n_all, 10)])
    cols = np.concatenate([members[:12], rng.integers(0, n_all, 12), rows[:3]])
    got = store.pairs(torch.from_numpy(rows), torch.from_numpy(cols))
    ref = reference(v.numpy(), i.numpy(), members, n_all, kind, 0.25, rows, cols, symmetric)
    assert got.shape == (rows.size, cols.size) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-6)
    if symmetric:
        sq = store.pairs(members, members).numpy()
        np.testing.assert_allclose(sq, sq.T, atol=1e-6)
    assert store.num_pairs <= (2 if symmetric else 1) * members.size * 4


def test_neighbours_and_weights(world):
    n_all, _, members, x = world
    v, i = topk_similar(x, 3, block_size=16, progress=False)
    store = SparsePriorStore.from_topk(v, i, kind="i2i", members=members, num_objects=n_all, symmetric=False)
    cols, w = store.neighbours(int(members[0]))
    assert cols.tolist() == members[i[0].numpy()].tolist()
    np.testing.assert_allclose(w, (v[0].numpy() + 1) / 2, atol=1e-6)
    assert store.neighbours(int(np.flatnonzero(~np.isin(np.arange(n_all), members))[0]))[0].size == 0
    assert store.weights.size == store.num_pairs


def test_build_sparse_prior(world):
    n_all, mask, members, _ = world
    rng = np.random.default_rng(2)
    view = rng.normal(size=(n_all, 3, 8)).astype(np.float16)
    lm = rng.normal(size=(11, 8)).astype(np.float32)
    s1 = build_sparse_prior("i2i", view, mask, k=5, block_size=16, progress=False)
    s2 = build_sparse_prior("i2l2", view, mask, k=5, landmark_emb=lm, block_size=16, progress=False)
    assert s1.options == {"aggregate": "mean_embedding", "symmetric": True}
    assert s2.options["metric"] == "l2" and s2.options["softmax_temperature"] is None
    nonmember = int(np.flatnonzero(~mask)[0])
    row = s1.pairs([nonmember], np.arange(n_all))[0]
    assert row[nonmember] == 1 and torch.all(row[torch.arange(n_all) != nonmember] == 0.25)
    with pytest.raises(ConfigError):
        build_sparse_prior("i2l2", view, mask, k=5, progress=False)
    with pytest.raises(ConfigError):
        build_sparse_prior("avg", view, mask, k=5, progress=False)


def test_save_load_and_mismatch(world, tmp_path):
    n_all, _, members, x = world
    v, i = topk_similar(x, 4, block_size=16, progress=False)
    store = SparsePriorStore.from_topk(v, i, kind="i2i", members=members, num_objects=n_all, delta=0.2,
                                       options={"aggregate": "mean_embedding"})
    manifest = store.save(tmp_path / "p", key={"features": "abc"})
    assert "delta" not in manifest["key"] and "fallback" not in manifest["key"]  # δ: applied at lookup
    expected = SparsePriorStore.manifest_key("i2i", {"aggregate": "mean_embedding"}, 4, {"features": "abc"}, n_all)
    loaded = SparsePriorStore.load(tmp_path / "p", expected_key=expected, delta=0.2)
    q = np.arange(n_all)
    assert torch.equal(loaded.pairs(q, q), store.pairs(q, q))
    assert loaded.k == 4 and loaded.delta == 0.2 and "pairs=" in repr(loaded)
    with pytest.raises(CacheError, match="features"):
        SparsePriorStore.load(tmp_path / "p", expected_key={**expected, "features": "other"})
    with pytest.raises(CacheError, match="k"):
        SparsePriorStore.load(tmp_path / "p", expected_key={**expected, "k": 8})
    # corrupt payload -> checksum mismatch
    np.save(tmp_path / "p" / "weights.npy", np.zeros(3, np.float32))
    with pytest.raises(CacheError, match="checksum"):
        SparsePriorStore.load(tmp_path / "p")
    with pytest.raises(CacheError, match="no manifest"):
        SparsePriorStore.load(tmp_path / "missing")
    # a manifest whose payload is consistent-looking but invalid (unsorted keys) -> CacheError
    store.save(tmp_path / "q")
    keys = np.load(tmp_path / "q" / "keys.npy")
    np.save(tmp_path / "q" / "keys.npy", keys[::-1].copy())
    with pytest.raises(CacheError, match="inconsistent"):
        SparsePriorStore.load(tmp_path / "q", verify_checksums=False)


def test_input_validation():
    with pytest.raises(DataError):
        SparsePriorStore(kind="custom", num_objects=3, keys=np.array([5, 2]), weights=np.ones(2))
    with pytest.raises(DataError):
        SparsePriorStore(kind="custom", num_objects=3, keys=np.array([9]), weights=np.ones(1))
    store = SparsePriorStore(kind="custom", num_objects=3, keys=np.array([1, 3]), weights=np.array([0.5, 0.7]))
    np.testing.assert_allclose(store.pairs([0, 1], [0, 1, 2]).numpy(), [[1, 0.5, 0.25], [0.7, 1, 0.25]])
    with pytest.raises(DataError):
        store.pairs([3], [0])
    with pytest.raises(DataError):
        store.pairs(torch.tensor([0.5]), [0])
    with pytest.raises(ConfigError):
        SparsePriorStore.from_topk(np.zeros((2, 1)), np.zeros((2, 1), int), kind="nope")


def test_ensure_sparse_prior_caches(world, tmp_path, monkeypatch):
    import captionless3d.mining.sparse as sparse_mod

    n_all, mask, _, _ = world
    view = np.random.default_rng(3).normal(size=(n_all, 2, 8)).astype(np.float16)
    lm = np.random.default_rng(4).normal(size=(5, 8)).astype(np.float32)
    key = {"features": "f1", "member_split": "train"}
    a = ensure_sparse_prior(tmp_path, "i2l2", view, mask, key=key, k=4, landmark_emb=lm, block_size=16, progress=False,
                            softmax_temperature=0.1)
    built = []
    real = sparse_mod.build_sparse_prior
    monkeypatch.setattr(sparse_mod, "build_sparse_prior", lambda *a_, **kw: built.append(1) or real(*a_, **kw))
    b = ensure_sparse_prior(tmp_path, "i2l2", view, mask, key=key, k=4, landmark_emb=lm, block_size=16, progress=False,
                            softmax_temperature=0.1)
    assert not built and torch.equal(a.pairs(np.arange(n_all), np.arange(n_all)),
                                     b.pairs(np.arange(n_all), np.arange(n_all)))
    ensure_sparse_prior(tmp_path, "i2l2", view, mask, key={**key, "features": "f2"}, k=4, landmark_emb=lm,
                        block_size=16, progress=False, softmax_temperature=0.1)
    ensure_sparse_prior(tmp_path, "i2i", view, mask, key=key, k=5, block_size=16, progress=False)
    assert len(built) == 2 and len([p for p in tmp_path.iterdir() if p.is_dir()]) == 3
    with pytest.raises(ConfigError, match="softmax_temperature"):
        ensure_sparse_prior(tmp_path, "i2l2", view, mask, key=key, landmark_emb=lm, softmax_temperature=-1.0)
