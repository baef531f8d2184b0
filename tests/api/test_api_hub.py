"""The Hugging Face Hub round trip without a network: ``captionless3d export --format hf`` -> a local Hub cache in
huggingface_hub's own layout (``models--org--name/{blobs,snapshots/<commit>,refs/main}``) -> ``captionless3d.load(
"hf-hub:org/name")`` with ``HF_HUB_OFFLINE=1`` -> the same embeddings, bit for bit."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from api_world import machine_paths_in

import captionless3d
from captionless3d.api.pretrained import (
    HF_PREFIX,
    PRETRAINED_FILES,
    is_hub_reference,
    parse_hub_reference,
    read_pretrained_config,
)
from captionless3d.cli import main
from captionless3d.errors import CheckpointError, ConfigError

huggingface_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("safetensors")

REPO = "captionless3d-tests/avg-tiny"
COMMIT = hashlib.sha1(b"captionless3d hub fixture").hexdigest()  # a commit hash as the Hub gives them: 40 hex


def populate_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """Put ``files`` into ``cache`` as huggingface_hub would after a download of ``repo_id`` at ``commit``: content
    under ``blobs/<sha256>``, relative symlinks from ``snapshots/<commit>/<name>``, ``refs/main`` = the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hf_export(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf_export") / "avg-hf"
    assert main(["export", "--ckpt", str(world.ckpt), "--format", "hf", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def hub_cache(hf_export, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("hf_cache")
    populate_hub_cache(cache, REPO, {name: hf_export / name for name in PRETRAINED_FILES})
    return cache


@pytest.fixture
def offline_hub(hub_cache, monkeypatch) -> Path:
    """huggingface_hub reads its cache directory and offline flag from its constants module at call time."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


def _clouds(n_points: int, n: int = 6) -> np.ndarray:
    g = np.random.default_rng(3)
    return (g.normal(size=(n, n_points, 3)) * g.uniform(0.5, 1.5, size=(n, 1, 3))).astype(np.float32)


def test_export_hf_writes_weights_config_and_a_hub_model_card(hf_export, model):
    from huggingface_hub import ModelCard
    from safetensors import safe_open

    assert sorted(p.name for p in hf_export.iterdir()) == sorted(PRETRAINED_FILES)
    config = read_pretrained_config(hf_export)
    assert config["teacher_id"] == model.teacher_id and config["embedding_dim"] == model.teacher_dim
    assert (config["n_points"] == model.n_points
            and config["training_config"]["data"]["loader"]["n_points"] == model.n_points)
    assert config["checkpoint_sha256"] == model.checkpoint_sha256
    with safe_open(str(hf_export / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "pt" and f.metadata()["teacher_id"] == model.teacher_id
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict: keys() is its API
    expected = model.encoder.state_dict()
    assert set(saved) == set(expected)
    assert all(torch.equal(saved[k], expected[k].cpu()) for k in saved)  # unchanged tensors, dtype included
    card = ModelCard.load(hf_export / "README.md")
    assert card.data.library_name == "captionless3d" and "point-cloud" in card.data.tags
    assert 'captionless3d.load("hf-hub:<org>/<name>")' in card.text and model.teacher_id in card.text


def test_export_hf_holds_no_path_of_the_exporting_machine(hf_export, world):
    """The training config in config.json keeps its paths relative (the project's defaults), so the Hub artefact
    names no directory of the exporting machine; the cache paths stay re-rootable with cache_dir=."""
    assert machine_paths_in(hf_export, world.root) == []
    training = read_pretrained_config(hf_export)["training_config"]
    assert training["paths"]["cache_dir"] == "./.cache" and training["paths"]["run_dir"] == "./outputs/run"
    assert training["data"]["collection"]["root"] == "./.cache/worlds"
    assert training["teacher"]["factory"]["out_root"] == "./.cache/teachers"


def test_hub_round_trip_gives_identical_embeddings(offline_hub, model, world, capsys):
    # cache_dir: where the training caches are on this machine (config.json names them ./.cache, as exported)
    loaded = captionless3d.load(f"{HF_PREFIX}{REPO}", cache_dir=world.root / "cache")
    assert loaded.checkpoint is None and loaded.source == f"{HF_PREFIX}{REPO}"
    assert ((loaded.teacher_id, loaded.teacher_dim, loaded.n_points)
            == (model.teacher_id, model.teacher_dim, model.n_points))
    clouds = _clouds(model.n_points)
    ours, theirs = loaded.encode_points(clouds), model.encode_points(clouds)
    with capsys.disabled():
        print(f"\nhub round trip: {len(clouds)} clouds x {model.n_points} points, max abs diff "
              f"{np.abs(ours - theirs).max():.1e}")
    assert np.array_equal(ours, theirs)
    # the teacher is rebuilt from the training config inside config.json: zero-shot labels agree as well
    shape = np.asarray(world.collection.points[0], dtype=np.float32)
    labels = list(world.collection.categories)
    assert loaded.classify(shape, labels=labels) == model.classify(shape, labels=labels)


def test_hub_revision_and_local_directory(offline_hub, hf_export, model):
    clouds = _clouds(model.n_points, 2)
    pinned = captionless3d.load(f"{HF_PREFIX}{REPO}@{COMMIT}")
    local = captionless3d.load(hf_export)
    assert np.array_equal(pinned.encode_points(clouds), model.encode_points(clouds))
    assert np.array_equal(local.encode_points(clouds), model.encode_points(clouds))
    assert local.source == str(hf_export)


def test_hub_errors_name_the_reference_and_the_reason(offline_hub, hf_export, tmp_path):
    with pytest.raises(CheckpointError, match=r"hf-hub:someone/absent: cannot get the model .*HF_HUB_OFFLINE"):
        captionless3d.load("hf-hub:someone/absent")
    with pytest.raises(CheckpointError, match=rf"hf-hub:{REPO}@v9: cannot get the model"):
        captionless3d.load(f"{HF_PREFIX}{REPO}@v9")
    for bad in ("hf-hub:", "hf-hub:noslash", "hf-hub:a/b/c", "hf-hub:a--b/c", "hf-hub:org/name@"):
        with pytest.raises(ConfigError, match="expected hf-hub:<org>/<name>"):
            captionless3d.load(bad)
    # a directory whose config.json is someone else's
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(CheckpointError, match="not a captionless3d pretrained config"):
        captionless3d.load(other)
    # weights that do not fit the architecture in config.json
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((hf_export / "config.json").read_text())
    config["model"]["head_mlps"] = [64]
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").write_bytes((hf_export / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="do not fit config.model"):
        captionless3d.load(broken)
    with pytest.raises(CheckpointError, match="a directory without config.json"):
        captionless3d.load(tmp_path)


def test_hub_reference_parsing():
    assert parse_hub_reference("hf-hub:org/name") == ("org/name", None)
    assert parse_hub_reference("hf-hub:org/my.model_v2@refs/pr/1") == ("org/my.model_v2", "refs/pr/1")
    assert is_hub_reference("hf-hub:a/b") and not is_hub_reference(Path("hf-hub:a/b"))


def test_export_hf_is_exported_alone(world, tmp_path, capsys):
    assert main(["export", "--ckpt", str(world.ckpt), "--format", "hf", "onnx", "--out", str(tmp_path / "x")]) == 2
    assert "--format hf writes its own directory layout" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_reads_the_hub_cache_from_the_environment(hub_cache, world, model, tmp_path):
    """A fresh process: HF_HUB_CACHE and HF_HUB_OFFLINE from the environment, as a user sets them."""
    shape = tmp_path / "shape.npy"
    np.save(shape, np.asarray(world.collection.points[1], dtype=np.float32))
    labels = list(world.collection.categories)
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "captionless3d.cli", "classify", str(shape), "--ckpt",
                           f"{HF_PREFIX}{REPO}", "--cache-dir", str(world.root / "cache"), "--labels", *labels,
                           "--top", "1"],
                          check=False, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    label, score = model.classify(str(shape), labels=labels, top=1)[0][0]
    row = proc.stdout.strip().splitlines()[-1].split()
    assert row[0] == "1" and row[2] == label and float(row[1]) == pytest.approx(score, abs=1e-4)
