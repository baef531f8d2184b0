"""scripts/prepare_*.py on fixture data with a tiny random OpenCLIP teacher."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures.formats import write_modelnet40_dat, write_pix3d, write_scanobjectnn_h5, write_ulip_shapenet

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"prepare_script_{name}", SCRIPTS / f"prepare_{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def teacher_args(tmp_path):
    cfg = tmp_path / "tiny_clip.json"
    cfg.write_text(json.dumps(TINY))
    return ["--teacher-name", "test-clip-prepare", "--pretrained", "none", "--model-config", str(cfg), "--no-progress"]


def _store_dirs(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "features").iterdir() if p.is_dir()) if (cache / "features").is_dir() else []


def _shapenet(root: Path) -> dict[str, list[str]]:
    _, created = write_ulip_shapenet(root, {"02691156": 3, "03001627": 2}, n_points=300, angles=(0, 12),
                                     with_depth=False, with_captions=False)
    return created


SHAPENET_OPTS = ["--view-angles", "0,12", "--n-points", "256", "--image-size", "16"]


def test_shapenet_builds_then_reuses_the_pipeline_store(tmp_path, teacher_args, capsys):
    root, cache = tmp_path / "shapenet", tmp_path / "cache"
    _shapenet(root)
    script = _script("shapenet")
    argv = ["--root", str(root), "--cache", str(cache), *SHAPENET_OPTS, *teacher_args]
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    assert "5 objects, 2 categories" in out and "train=" in out and "views per object: 2" in out
    (store,) = _store_dirs(cache)
    assert (store / "manifest.json").is_file() and "built in" in out
    mtime = (store / "view_emb" / "shard-00000.npy").stat().st_mtime_ns

    assert script.main(argv) == 0  # second run: reused, nothing re-embedded
    assert "reused" in capsys.readouterr().out
    assert (store / "view_emb" / "shard-00000.npy").stat().st_mtime_ns == mtime and _store_dirs(cache) == [store]

    # the training pipeline names exactly this directory (same reader params as configs/data/shapenet_ulip2.yaml)
    from omegaconf import OmegaConf

    from captionless3d.data.readers import read_ulip_shapenet
    from captionless3d.pipeline import build_features
    from captionless3d.prepare_data import DEFAULT_PROMPT_TEMPLATE
    from captionless3d.teacher.openclip import create_teacher

    collection = read_ulip_shapenet(root, view_angles=[0, 12], n_points=256, image_size=16, check_images=False)
    teacher = create_teacher("test-clip-prepare", model_config=TINY)
    cfg = OmegaConf.create({"prompt_template": DEFAULT_PROMPT_TEMPLATE, "paths": {"cache_dir": str(cache)}})
    assert Path(build_features(cfg, collection, teacher).directory) == store
    assert (store / "view_emb" / "shard-00000.npy").stat().st_mtime_ns == mtime


def test_shapenet_bad_files_stop_or_are_listed(tmp_path, teacher_args, capsys):
    root, cache = tmp_path / "shapenet", tmp_path / "cache"
    created = _shapenet(root)
    a, b = (f"02691156-{m}" for m in created["02691156"][:2])
    (root / "rendered_images" / a / f"{a}_r_012.png").unlink()  # missing view
    data = (root / "shapenet_pc" / f"{b}.npy").read_bytes()
    (root / "shapenet_pc" / f"{b}.npy").write_bytes(data[: len(data) // 2])  # corrupt cloud
    argv = ["--root", str(root), "--cache", str(cache), *SHAPENET_OPTS, *teacher_args]

    script = _script("shapenet")
    assert script.main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "--skip-bad" in err and "Traceback" not in err
    assert not _store_dirs(cache)

    assert script.main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 bad object(s):" in out
    assert f"{a}_r_012.png: view missing" in out and "truncated .npy" in out
    assert "3 objects" in out and len(_store_dirs(cache)) == 1


def test_modelnet40_subprocess_exit_code_and_skip_bad(tmp_path, teacher_args):
    def mutate(points, labels):
        points[1][3, 1] = np.nan

    write_modelnet40_dat(tmp_path / "mn40", n=4, n_points=64, mutate=mutate)
    cmd = [sys.executable, str(SCRIPTS / "prepare_modelnet40.py"), "--root", str(tmp_path / "mn40"),
           "--cache", str(tmp_path / "cache"), *teacher_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "item 1" in proc.stderr and "NaN/Inf" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*cmd, "--skip-bad"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 bad object(s):" in proc.stdout and "fps.dat[1]" in proc.stdout
    assert "views per object: 0" in proc.stdout
    assert len(_store_dirs(tmp_path / "cache")) == 1


def test_scanobjectnn_and_pix3d(tmp_path, teacher_args, capsys):
    def mutate(part, data, label):
        if part == "test":
            label[2] = 99

    write_scanobjectnn_h5(tmp_path / "sonn", n_train=2, n_test=4, n_points=64, mutate=mutate)
    argv = ["--root", str(tmp_path / "sonn"), "--cache", str(tmp_path / "cache"), *teacher_args]
    assert _script("scanobjectnn").main(argv) == 2
    assert "label 99 outside" in capsys.readouterr().err
    assert _script("scanobjectnn").main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "3 objects" in out and "test=3" in out and "skipped 1 bad object(s)" in out

    write_pix3d(tmp_path / "pix3d")
    (tmp_path / "pix3d/model/bed/IKEA_MALM/model.obj").write_text("v 0 0 0\n")
    argv = ["--root", str(tmp_path / "pix3d"), "--cache", str(tmp_path / "cache"), "--n-points", "32",
            "--image-size", "16", *teacher_args]
    assert _script("pix3d").main(argv) == 2
    assert "mesh has no faces" in capsys.readouterr().err
    assert _script("pix3d").main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 bad object(s)" in out and "photos per object: 1" in out
    assert len(_store_dirs(tmp_path / "cache")) == 2
