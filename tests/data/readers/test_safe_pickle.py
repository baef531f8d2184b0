import os
import pickle

import numpy as np
import pytest

from captionless3d.data.safe_pickle import (
    check_npy_complete,
    safe_load_npy,
    safe_load_npy_object,
    safe_load_pickle,
    safe_loads,
)
from captionless3d.errors import DataError


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_arrays_and_containers_round_trip(tmp_path, protocol):
    obj = [[np.arange(6, dtype=np.float32).reshape(2, 3), np.array([3], np.int32)],
           {"a": (1, 2.5, "s", b"x", None, True), "b": {1, 2}, "c": np.float64(2.0), "d": np.int32(7)}]
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    out = safe_load_pickle(path)
    np.testing.assert_array_equal(out[0][0], obj[0][0])
    assert out[0][0].dtype == np.float32 and out[0][1].dtype == np.int32
    assert out[1]["a"] == obj[1]["a"] and out[1]["b"] == {1, 2} and out[1]["d"] == 7


def test_refuses_foreign_globals(tmp_path):
    path = tmp_path / "evil.dat"
    path.write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(DataError, match=r"evil\.dat.*refusing.*(posix|os)\.system"):
        safe_load_pickle(path)
    with pytest.raises(DataError, match="builtins.eval"):
        safe_loads(b"cbuiltins\neval\n(S'1'\ntR.", source="s")


def test_truncated_pickle(tmp_path):
    path = tmp_path / "t.dat"
    path.write_bytes(pickle.dumps([np.zeros((50, 3))])[:-40])
    with pytest.raises(DataError, match=r"t\.dat: corrupt or truncated pickle"):
        safe_load_pickle(path)


def test_object_npy_dict_and_array(tmp_path):
    d = {"xyz": np.ones((5, 3), np.float16), "text": ["a chair"], "text_feat": [{"original": np.zeros(4)}]}
    np.save(tmp_path / "d.npy", d, allow_pickle=True)
    out = safe_load_npy_object(tmp_path / "d.npy")
    assert out["xyz"].dtype == np.float16 and out["text"] == ["a chair"]
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = {"xyz": np.zeros((2, 3))}, {"xyz": np.ones((2, 3))}
    np.save(tmp_path / "a.npy", arr, allow_pickle=True)
    out = safe_load_npy(tmp_path / "a.npy")
    assert out.shape == (2,) and out[1]["xyz"].sum() == 6


def test_object_npy_refuses_code_and_truncation(tmp_path):
    arr = np.empty(1, dtype=object)
    arr[0] = Evil()
    np.save(tmp_path / "e.npy", arr, allow_pickle=True)
    with pytest.raises(DataError, match=r"e\.npy.*refusing"):
        safe_load_npy(tmp_path / "e.npy")
    np.save(tmp_path / "p.npy", np.zeros((100, 3), np.float32))
    data = (tmp_path / "p.npy").read_bytes()
    (tmp_path / "p.npy").write_bytes(data[:-10])
    with pytest.raises(DataError, match=r"p\.npy: truncated \.npy"):
        check_npy_complete(tmp_path / "p.npy")
    (tmp_path / "h.npy").write_bytes(data[:20])
    with pytest.raises(DataError, match=r"h\.npy: not a valid \.npy"):
        safe_load_npy(tmp_path / "h.npy")
    with pytest.raises(DataError, match="expected an object .npy"):
        safe_load_npy_object(tmp_path / "p.npy")
