"""Failure injection into every atomic write helper, the checkpoint IO and two real artefact writers (issue #10).

For each fault (an exception after a partial write, a full disk = ``OSError(ENOSPC)`` from ``write`` or ``fsync``, a
failing rename, Ctrl-C mid-write) the old artefact must be intact, no temp file may be left behind and the error must
be one of ours and name the file.
"""
from __future__ import annotations

import errno
import json
import os
import stat

import numpy as np
import pytest
import torch

from captionless3d.errors import CacheError, Captionless3DError, CheckpointError
from captionless3d.utils import atomic

OLD = {"bytes": b"old artefact", "json": {"old": 1}, "npy": np.zeros(4, np.float32), "with": b"old via writer",
       "open": b"old via handle"}
NEW = {"bytes": b"new artefact, longer", "json": {"new": [1, 2, 3]}, "npy": np.ones(8, np.float32),
       "with": b"new via writer", "open": b"new via handle"}
SUFFIX = {"bytes": ".bin", "json": ".json", "npy": ".npy", "with": ".pt", "open": ".txt"}


def _write(kind: str, path, value) -> None:
    if kind == "bytes":
        atomic.atomic_write_bytes(path, value)
    elif kind == "json":
        atomic.atomic_write_json(path, value)
    elif kind == "npy":
        atomic.atomic_save_npy(path, value)
    elif kind == "with":
        atomic.atomic_write_with(path, lambda tmp: tmp.write_bytes(value))
    else:
        with atomic.atomic_open(path, "wb") as handle:
            handle.write(value)


def _read(kind: str, path):
    if kind == "json":
        return json.loads(path.read_text())
    if kind == "npy":
        return np.load(path).tolist()
    return path.read_bytes()


def _expected(kind: str, value):
    return value.tolist() if kind == "npy" else value


class _DiskFull:
    """A file object whose ``write`` stores half of the data, then fails like a full disk."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        self._handle.write(bytes(data)[: max(1, len(data) // 2)])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def _inject(kind: str, fault: str, monkeypatch) -> None:
    if fault == "enospc_write":
        if kind == "with":  # the writer owns the file: it hits the full disk itself
            real = atomic.Path.write_bytes

            def full(self, data):
                real(self, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(atomic.Path, "write_bytes", full)
        else:
            real_fdopen = os.fdopen
            monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: _DiskFull(real_fdopen(fd, mode)))
    elif fault == "enospc_fsync":  # NFS and quota'd file systems report a full disk at fsync/close
        monkeypatch.setattr(atomic.os, "fsync",
                            lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    elif fault == "rename":
        monkeypatch.setattr(atomic.os, "replace", lambda a,
                            b: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    else:
        raise AssertionError(fault)


KINDS = list(OLD)
FAULTS = ["enospc_write", "enospc_fsync", "rename"]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", KINDS)
def test_failed_write_keeps_old_artefact_leaves_no_temp_and_names_file(tmp_path, monkeypatch, kind, fault):
    path = tmp_path / f"artefact{SUFFIX[kind]}"
    _write(kind, path, OLD[kind])
    _inject(kind, fault, monkeypatch)
    with pytest.raises(CacheError) as info:
        _write(kind, path, NEW[kind])
    monkeypatch.undo()
    assert str(path) in str(info.value)
    if fault.startswith("enospc"):
        assert "No space left on device" in str(info.value)
    assert _read(kind, path) == _expected(kind, OLD[kind])
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    _write(kind, path, NEW[kind])  # and the next write works
    assert _read(kind, path) == _expected(kind, NEW[kind])


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_interrupt_mid_write_propagates_and_cleans_up(tmp_path, interrupt):
    path = tmp_path / "a.bin"
    atomic.atomic_write_bytes(path, b"old")
    with pytest.raises(interrupt):
        with atomic.atomic_open(path, "wb") as handle:
            handle.write(b"partial")
            raise interrupt()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_own_errors_pass_unchanged_and_error_class_is_selectable(tmp_path):
    from captionless3d.errors import DataError

    with pytest.raises(DataError, match="bad row"):
        with atomic.atomic_open(tmp_path / "x.bin") as handle:
            handle.write(b"x")
            raise DataError("bad row")
    with pytest.raises(CheckpointError, match="x.ckpt"):
        atomic.atomic_write_with(tmp_path / "x.ckpt", lambda tmp: (_ for _ in ()).throw(RuntimeError("boom")),
                                 error=CheckpointError)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_directory_is_our_error_naming_the_file(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(CacheError, match="not_a_dir/x.npy"):
        atomic.atomic_save_npy(blocker / "x.npy", np.zeros(2))


def test_written_files_get_umask_permissions_not_mkstemp_private_mode(tmp_path):
    """mkstemp creates 0600 files; renamed into a shared cache they were unreadable for other users of the cache."""
    path = tmp_path / "shared.npy"
    atomic.atomic_save_npy(path, np.zeros(2))
    with open(tmp_path / "plain", "w"):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == atomic.FILE_MODE


def test_remove_stale_temps_only_touches_old_temp_files(tmp_path):
    stale, live, artefact = tmp_path / ".a.npy.x1.tmp", tmp_path / ".b.npy.x2.tmp", tmp_path / "a.npy"
    for p in (stale, live, artefact):
        p.write_bytes(b"x")
    os.utime(stale, (0, 0))
    assert atomic.remove_stale_temps(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, artefact.name])


# --------------------------------------------------------------------------------------------- checkpoints


def test_lightning_own_checkpoint_temp_file_is_not_next_to_the_target(tmp_path, monkeypatch):
    """Why AtomicCheckpointIO exists: Lightning's fsspec transaction puts its temp file in $TMPDIR and commits with
    shutil.move (a copy, not a rename, when $TMPDIR is another file system)."""
    import shutil
    import tempfile

    from lightning.pytorch.plugins.io import TorchCheckpointIO

    elsewhere = tmp_path / "tmpdir"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    moves = []
    real_move = shutil.move
    monkeypatch.setattr(shutil, "move", lambda src, dst, *a,
                        **k: (moves.append((src, dst)), real_move(src, dst, *a, **k))[1])
    target = tmp_path / "ckpts" / "last.ckpt"
    TorchCheckpointIO().save_checkpoint({"w": torch.ones(2)}, target)
    assert moves and os.path.dirname(moves[0][0]) == str(elsewhere)  # temp file not in the checkpoint directory


def test_atomic_checkpoint_io_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from captionless3d.training.checkpoint_io import AtomicCheckpointIO

    io_ = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io_.save_checkpoint({"step": 1, "w": torch.zeros(3)}, target)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:  # a truncated file, as a full disk leaves it
            handle.truncate(10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"last\.ckpt.*No space left on device"):
        io_.save_checkpoint({"step": 2, "w": torch.ones(3)}, target)
    monkeypatch.undo()
    loaded = io_.load_checkpoint(target, weights_only=True)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.zeros(3))
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]
    assert isinstance(CheckpointError("x"), Captionless3DError)


def test_atomic_checkpoint_io_is_what_the_trainer_configs_use():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from captionless3d.hydra_utils import CONFIG_DIR
    from captionless3d.training.checkpoint_io import AtomicCheckpointIO

    for trainer in ("cpu", "fast_dev", "gpu", "ddp"):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[f"trainer={trainer}"])
        plugins = [instantiate(p) for p in cfg.trainer.plugins]
        assert any(isinstance(p, AtomicCheckpointIO) for p in plugins), trainer


# --------------------------------------------------------------------------------------------- real artefact writers


def _prior_store(value: float):
    from captionless3d.mining.store import PriorStore

    mat = np.full((3, 3), value, np.float32)
    return PriorStore.from_category_matrices({0: (np.array([0, 1, 2]), mat)}, num_objects=4, kind="i2i")


def test_prior_store_save_full_disk_names_file_leaves_no_temp_and_never_loads_mixed(tmp_path, monkeypatch):
    from captionless3d.mining import store as store_mod
    from captionless3d.mining.store import PriorStore

    directory = tmp_path / "priors"
    _prior_store(0.5).save(directory, key={"inputs": "a"})
    calls = {"n": 0}
    real = atomic.atomic_save_npy

    def second_file_hits_full_disk(path, array):
        calls["n"] += 1
        if calls["n"] == 2:
            with atomic.atomic_open(path) as handle:
                handle.write(b"\x93NUMPY partial")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, array)

    monkeypatch.setattr(store_mod, "atomic_save_npy", second_file_hits_full_disk)
    with pytest.raises(CacheError) as info:
        _prior_store(0.9).save(directory, key={"inputs": "a"})
    monkeypatch.undo()
    assert "member_index.npy" in str(info.value) and "No space left on device" in str(info.value)
    assert not list(directory.glob(".*.tmp"))
    # the directory now holds the new values.npy next to the old manifest: it must never load as a (mixed) store
    try:
        loaded = PriorStore.load(directory)
    except CacheError as exc:
        assert "values.npy" in str(exc) or "checksum" in str(exc).lower()
    else:  # only acceptable if it is the complete old store
        rows = torch.tensor([0, 1])
        assert torch.allclose(loaded.pairs(rows, rows), _prior_store(0.5).pairs(rows, rows))


def test_prior_store_failed_overwrite_keeps_old_store_loadable(tmp_path, monkeypatch):
    from captionless3d.mining import store as store_mod
    from captionless3d.mining.store import PriorStore

    directory = tmp_path / "priors"
    _prior_store(0.5).save(directory, key={"inputs": "a"})
    calls = {"n": 0}
    real = atomic.atomic_save_npy

    def fail_second(path, array):
        calls["n"] += 1
        if calls["n"] == 2:
            raise CacheError(f"could not write {path}: OSError: No space left on device")
        real(path, array)

    monkeypatch.setattr(store_mod, "atomic_save_npy", fail_second)
    with pytest.raises(CacheError):
        _prior_store(0.9).save(directory, key={"inputs": "a"})
    monkeypatch.undo()
    loaded = PriorStore.load(directory)  # the complete old store, built in a temp sibling and never swapped
    rows = torch.tensor([0, 1])
    assert torch.allclose(loaded.pairs(rows, rows), _prior_store(0.5).pairs(rows, rows))
    assert not list(tmp_path.glob(".priors.*"))


def test_world_build_full_disk_leaves_no_manifest_no_temp_and_rebuilds(tmp_path, monkeypatch):
    from captionless3d.data.synthetic import world as world_mod

    params = dict(categories=["chair", "mug"], n_teacher=0, n_train=2, n_val=0, n_test=1, n_points=32, n_views=1,
                  image_size=16, photos_per_object=1, progress=False)
    real = atomic.atomic_save_npy

    def views_hit_full_disk(path, array):
        if path.name == "views.npy":
            with atomic.atomic_open(path) as handle:
                handle.write(b"\x93NUMPY half")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, array)

    monkeypatch.setattr(world_mod, "atomic_save_npy", views_hit_full_disk)
    with pytest.raises(CacheError, match=r"views\.npy.*No space left on device"):
        world_mod.ensure_world(tmp_path, **params)
    monkeypatch.undo()
    (out,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not (out / "manifest.json").exists() and not (out / "views.npy").exists()
    assert not list(out.glob(".*.tmp"))
    with pytest.raises(CacheError):  # the half-built directory is never loaded as a world
        world_mod.load_world(out)
    before = world_mod.BUILD_COUNT
    world = world_mod.ensure_world(tmp_path, **params)  # the next call rebuilds it
    assert world_mod.BUILD_COUNT == before + 1 and world.views.shape[0] == 6
