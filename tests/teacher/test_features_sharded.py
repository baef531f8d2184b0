"""ShardedArray: numpy-compatible axis-0 indexing over row shards, checked against the same data as one ndarray."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from captionless3d.errors import CacheError
from captionless3d.teacher.sharded import ShardedArray
from captionless3d.utils.manifest import file_sha256

SIZES = (4, 4, 3, 1)  # uneven last shards on purpose


@pytest.fixture()
def sharded(tmp_path):
    rs = np.random.RandomState(0)
    full = rs.randn(sum(SIZES), 3, 5).astype(np.float16)
    bounds = np.r_[0, np.cumsum(SIZES)]
    paths = []
    for k in range(len(SIZES)):
        path = tmp_path / f"shard-{k:05d}.npy"
        np.save(path, full[bounds[k] : bounds[k + 1]])
        paths.append(path)
    checksums = [file_sha256(p) for p in paths]
    return full, ShardedArray(paths, bounds, (3, 5), np.float16, name="view_emb", checksums=checksums, verify="lazy")


def test_metadata_and_asarray(sharded):
    full, arr = sharded
    assert arr.shape == full.shape and arr.ndim == 3 and arr.dtype == np.float16 and len(arr) == 12
    assert arr.size == full.size and arr.nbytes == full.nbytes and arr.num_shards == 4
    np.testing.assert_array_equal(np.asarray(arr), full)
    assert np.asarray(arr, dtype=np.float32).dtype == np.float32
    np.testing.assert_array_equal(arr.astype(np.float32), full.astype(np.float32))


@pytest.mark.parametrize(
    "key",
    [0, 5, 11, -1, -12, np.int64(7), slice(None), slice(2, 9), slice(3, 4), slice(10, 3), slice(None, None, 3),
     slice(11, 0, -2), slice(-5, None)],
    ids=repr,
)
def test_int_and_slice_keys_match_numpy(sharded, key):
    full, arr = sharded
    np.testing.assert_array_equal(arr[key], full[key])


def test_fancy_and_mask_keys_match_numpy(sharded):
    full, arr = sharded
    rs = np.random.RandomState(1)
    for idx in (rs.randint(0, 12, 30), np.array([11, 0, 7, 7, -1, 3]), np.array([], dtype=np.int64),
                np.arange(12)[::-1], np.array([[1, 9], [4, 4]]), [2, 3]):
        np.testing.assert_array_equal(arr[idx], full[np.asarray(idx, dtype=np.int64)])
    mask = rs.rand(12) > 0.5
    np.testing.assert_array_equal(arr[mask], full[mask])
    np.testing.assert_array_equal(arr[np.array([5, 1, 8]), 2], full[np.array([5, 1, 8]), 2])
    np.testing.assert_array_equal(arr[3, 1:], full[3, 1:])
    np.testing.assert_array_equal(arr[2:10, :, 0], full[2:10, :, 0])


def test_gather_reads_each_touched_shard_once(sharded, monkeypatch):
    full, arr = sharded
    opened = []
    original = ShardedArray.shard
    monkeypatch.setattr(ShardedArray, "shard", lambda self, k: opened.append(k) or original(self, k))
    np.testing.assert_array_equal(arr[np.array([9, 0, 1, 8, 2, 0, 3])], full[[9, 0, 1, 8, 2, 0, 3]])
    assert sorted(opened) == [0, 2]  # 7 rows from 2 shards: one read per shard, not one per row


def test_bad_keys_raise_index_error(sharded):
    _, arr = sharded
    for key in (12, -13, np.array([0, 12]), np.array([-13]), np.ones(5, bool), np.array([0.5])):
        with pytest.raises(IndexError):
            arr[key]


def test_lazy_verification_names_the_corrupt_shard(sharded):
    full, arr = sharded
    raw = bytearray(arr.paths[2].read_bytes())
    raw[-3] ^= 0xFF
    arr.paths[2].write_bytes(bytes(raw))
    np.testing.assert_array_equal(arr[:8], full[:8])  # shards 0 and 1 are intact
    with pytest.raises(CacheError, match=r"shard-00002\.npy \(view_emb shard 2, objects 8\.\.10\).*checksum"):
        arr[9]
    arr.paths[3].unlink()
    with pytest.raises(CacheError, match=r"view_emb shard 3, objects 11\.\.11\).*missing"):
        arr[np.array([11])]


def test_pickle_reopens_instead_of_copying(sharded):
    full, arr = sharded
    arr[0]  # opens shard 0
    blob = pickle.dumps(arr)
    assert full[:4].tobytes() not in blob  # paths and bounds travel, not the opened shard's data
    clone = pickle.loads(blob)
    assert clone._maps == [None] * 4
    np.testing.assert_array_equal(np.asarray(clone), full)


def test_bounds_must_tile_the_rows(tmp_path):
    with pytest.raises(CacheError, match="bounds"):
        ShardedArray([tmp_path / "a.npy", tmp_path / "b.npy"], [0, 4, 4], (3,), np.float16)
    empty = ShardedArray([], [0], (3, 5), np.float16)
    assert empty.shape == (0, 3, 5) and np.asarray(empty).shape == (0, 3, 5)
