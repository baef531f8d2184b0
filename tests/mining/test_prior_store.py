"""PriorStore against a literal double-loop reference of docs/method.md (Priors), plus persistence."""
import json
import math

import numpy as np
import pytest
import torch

from captionless3d.errors import CacheError, ConfigError, DataError
from captionless3d.mining import PriorStore

N, V, D = 40, 3, 6


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    view = rng.normal(size=(N, V, D)).astype(np.float16)
    labels = rng.integers(0, 4, N)
    labels[-3:] = 9  # a category with no members at all
    member = rng.random(N) < 0.7
    member[-3:] = False
    lm_labels = np.repeat(np.arange(4), 5)
    lm_emb = rng.normal(size=(lm_labels.size, D)).astype(np.float32)
    return view, labels, member, lm_emb, lm_labels


def _unit(x):
    return x / math.sqrt(sum(float(v) * float(v) for v in x))


def _ref_mean(view, i, aggregate):
    vs = [_unit(view[i, v].astype(np.float64)) for v in range(V)]
    m = np.mean(vs, axis=0)
    return _unit(m) if aggregate == "mean_embedding" else m


def reference_pairs(kind, world, rows, cols, delta=0.25, aggregate="mean_embedding", metric="l2", temp=None):
    """Straight from the formulas: one pair at a time."""
    view, labels, member, lm_emb, lm_labels = world
    out = np.zeros((len(rows), len(cols)))
    for r, i in enumerate(rows):
        for c, j in enumerate(cols):
            if i == j:
                out[r, c] = 1.0
            elif member[i] and member[j] and labels[i] == labels[j]:
                ei, ej = _ref_mean(view, i, aggregate), _ref_mean(view, j, aggregate)
                if kind == "i2i":
                    cos = sum(ei[k] * ej[k] for k in range(D))
                    out[r, c] = (cos + 1) / 2
                else:
                    marks = [_unit(lm_emb[k].astype(np.float64))
                             for k in range(len(lm_labels)) if lm_labels[k] == labels[i]]
                    ui, uj = _unit(ei), _unit(ej)
                    pi = [sum(ui[d] * t[d] for d in range(D)) for t in marks]
                    pj = [sum(uj[d] * t[d] for d in range(D)) for t in marks]
                    if temp is not None:
                        zi, zj = sum(math.exp(x / temp) for x in pi), sum(math.exp(x / temp) for x in pj)
                        pi, pj = [math.exp(x / temp) / zi for x in pi], [math.exp(x / temp) / zj for x in pj]
                    if metric == "l2":
                        dist = math.sqrt(sum((a - b) ** 2 for a, b in zip(pi, pj)))
                    elif metric == "l1":
                        dist = sum(abs(a - b) for a, b in zip(pi, pj))
                    else:
                        dist = sum(0.5 * a * math.log(2 * a / (a + b)) + 0.5 * b * math.log(2 * b / (a + b))
                                   for a, b in zip(pi, pj))
                    out[r, c] = 1 / (1 + dist)
            else:
                out[r, c] = delta
    return out


@pytest.mark.parametrize(
    "kind,opts",
    [
        ("i2i", {}),
        ("i2i", {"aggregate": "mean_pairwise_cosine"}),
        ("i2l2", {}),
        ("i2l2", {"metric": "l1"}),
        ("i2l2", {"metric": "js", "softmax_temperature": 0.1}),
    ],
)
def test_store_equals_literal_reference(world, kind, opts):
    view, labels, member, lm_emb, lm_labels = world
    store = PriorStore.build(kind, view, labels, member, lm_emb, lm_labels, delta=0.25, **opts)
    idx = np.arange(N)
    got = store.pairs(torch.from_numpy(idx), torch.from_numpy(idx))
    assert got.dtype == torch.float32 and got.shape == (N, N)
    ref = reference_pairs(kind, world, idx, idx, aggregate=opts.get("aggregate", "mean_embedding"),
                          metric=opts.get("metric", "l2"), temp=opts.get("softmax_temperature"))
    np.testing.assert_allclose(got.numpy(), ref, atol=2e-6)
    # a batch-like query: rectangular, shuffled, with repeats and val objects
    rows = np.array([5, 0, 39, 5, 12, 20, 37])
    cols = np.array([12, 5, 5, 3, 38, 0, 20, 21, 1])
    np.testing.assert_allclose(store.pairs(rows, cols).numpy(), reference_pairs(
        kind, world, rows, cols, aggregate=opts.get("aggregate", "mean_embedding"), metric=opts.get("metric", "l2"),
        temp=opts.get("softmax_temperature")), atol=2e-6)


def test_store_structure(world):
    view, labels, member, lm_emb, lm_labels = world
    store = PriorStore.build("i2i", view, labels, member, delta=0.3)
    assert store.categories == sorted(set(labels[member].tolist()))
    for c in store.categories:
        m = store.category_members(c)
        np.testing.assert_array_equal(m, np.flatnonzero(member & (labels == c)))
        mat = store.category_matrix(c)
        assert mat.shape == (m.size, m.size) and mat.dtype == np.float32
        np.testing.assert_array_equal(np.diag(mat), 1.0)
        np.testing.assert_allclose(mat, mat.T, atol=1e-6)
        np.testing.assert_allclose(store.pairs(m, m).numpy(), mat)
    val = np.flatnonzero(~member)
    l = store.pairs(val, val).numpy()
    np.testing.assert_array_equal(l, np.where(np.eye(val.size, dtype=bool), 1.0, 0.3).astype(np.float32))
    assert store.has_prior(np.arange(N)).numpy().tolist() == member.tolist()
    with pytest.raises(KeyError):
        store.category_matrix(9)
    with pytest.raises(DataError):
        store.pairs([0, N], [1])
    with pytest.raises(DataError):
        store.pairs(torch.tensor([0.5]), [1])
    assert store.to("cpu") is store and store.device.type == "cpu"


def test_from_category_matrices_sorts_members_and_does_not_mutate():
    mat = np.array([[7.0, 0.1, 0.2], [0.1, 7.0, 0.3], [0.2, 0.3, 7.0]], np.float32)
    keep = mat.copy()
    store = PriorStore.from_category_matrices({3: ([8, 2, 5], mat)}, num_objects=10, delta=0.25)
    np.testing.assert_array_equal(mat, keep)
    np.testing.assert_array_equal(store.category_members(3), [2, 5, 8])
    got = store.pairs([2, 5, 8, 0], [2, 5, 8, 0]).numpy()  # l(8,2)=0.1, l(8,5)=0.2, l(2,5)=0.3
    expect = np.array([[1, 0.3, 0.1, 0.25], [0.3, 1, 0.2, 0.25], [0.1, 0.2, 1, 0.25], [0.25, 0.25, 0.25, 1]],
                      np.float32)
    np.testing.assert_allclose(got, expect)
    with pytest.raises(DataError):
        PriorStore.from_category_matrices({0: ([1, 2], np.ones((2, 2))), 1: ([2, 3], np.ones((2, 2)))}, 5)
    with pytest.raises(DataError):
        PriorStore.from_category_matrices({0: ([1, 2], -np.ones((2, 2)))}, 5)
    empty = PriorStore.from_category_matrices({}, 4)
    np.testing.assert_allclose(empty.pairs([0, 1], [1, 1]).numpy(), [[0.25, 0.25], [1, 1]])


def test_build_errors(world):
    view, labels, member, lm_emb, lm_labels = world
    with pytest.raises(ConfigError):
        PriorStore.build("i2x", view, labels, member)
    with pytest.raises(ConfigError):
        PriorStore.build("i2i", view, labels, member, metric="l2")  # option of the other kind
    with pytest.raises(ConfigError):
        PriorStore.build("i2l2", view, labels, member)  # no landmarks
    with pytest.raises(ConfigError):
        PriorStore.build("i2l2", view, labels, member, lm_emb, lm_labels, metric="js")  # js needs a temperature
    with pytest.raises(DataError):
        PriorStore.build("i2l2", view, labels, member, lm_emb[lm_labels != 2], lm_labels[lm_labels != 2])
    with pytest.raises(DataError):
        PriorStore.build("i2i", view, labels, member[:-1])
    with pytest.raises(ConfigError):
        PriorStore.build("i2i", view, labels, member, delta=-1)


def test_save_load_round_trip_and_stale_or_corrupt_cache(world, tmp_path):
    view, labels, member, lm_emb, lm_labels = world
    store = PriorStore.build("i2l2", view, labels, member, lm_emb, lm_labels, metric="l1")
    key = {"teacher": "toy", "features": "abc123"}
    manifest = store.save(tmp_path / "p", key)
    assert manifest["kind"] == "prior_store"
    assert manifest["key"]["prior_kind"] == "i2l2" and "delta" not in manifest["key"]  # δ: applied at lookup
    assert manifest["key"]["prior_options"]["metric"] == "l1"

    loaded = PriorStore.load(tmp_path / "p", {**key, "prior_kind": "i2l2"})
    idx = torch.arange(N)
    torch.testing.assert_close(loaded.pairs(idx, idx), store.pairs(idx, idx), rtol=0, atol=0)
    assert loaded.kind == "i2l2" and loaded.options == store.options and loaded.num_objects == N
    full = PriorStore.manifest_key("i2l2", store.options, key, N)
    PriorStore.load(tmp_path / "p", full)  # the full expected key matches
    # the same saved store serves any δ: same-category priors unchanged, every other pair reads the new δ
    other = PriorStore.load(tmp_path / "p", full, delta=0.15)
    same = store.pairs(idx, idx) != store.delta
    assert other.delta == 0.15
    torch.testing.assert_close(other.pairs(idx, idx)[same], store.pairs(idx, idx)[same], rtol=0, atol=0)
    assert (other.pairs(idx, idx)[~same] == 0.15).all()
    with pytest.raises(ConfigError, match="mining.delta"):
        PriorStore.load(tmp_path / "p", full, delta=-1)

    with pytest.raises(CacheError, match="features"):
        PriorStore.load(tmp_path / "p", {**key, "features": "other"})
    with pytest.raises(CacheError, match="prior_kind"):
        PriorStore.load(tmp_path / "p", {"prior_kind": "i2i"})
    with pytest.raises(CacheError):
        PriorStore.load(tmp_path / "missing", key)
    with pytest.raises(ConfigError):
        store.save(tmp_path / "q", {"num_objects": 1})  # reserved field

    values = tmp_path / "p" / "values.npy"
    raw = bytearray(values.read_bytes())
    raw[-3] ^= 0xFF
    values.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="checksum"):
        PriorStore.load(tmp_path / "p", key)
    values.write_bytes(bytes(raw[:-40]))  # truncated and unchecked: np.load / layout check must still catch it
    with pytest.raises(CacheError):
        PriorStore.load(tmp_path / "p", key, verify_checksums=False)
    (tmp_path / "p" / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError):
        PriorStore.load(tmp_path / "p", key)


def test_inconsistent_layout_on_disk_is_cache_error(world, tmp_path):
    view, labels, member, *_ = world
    store = PriorStore.build("i2i", view, labels, member)
    store.save(tmp_path / "p", {})
    np.save(tmp_path / "p" / "category_sizes.npy", np.array([1, 2], np.int64))
    with pytest.raises(CacheError):
        PriorStore.load(tmp_path / "p", verify_checksums=False)
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    del m["key"]["num_objects"]
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError):
        PriorStore.load(tmp_path / "p", verify_checksums=False)
