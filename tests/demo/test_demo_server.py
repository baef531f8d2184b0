"""The demo without a browser: the service's answers (through the public API), bad files, the GLB writer, the default
index, and the Gradio server over HTTP (loopback binding, offline assets, the module entry point)."""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from captionless3d.demo import DEFAULT_HOST, DemoService, cloud_to_glb, parse_labels
from captionless3d.demo.__main__ import build_parser
from captionless3d.demo.world import ensure_demo_index, find_demo_checkpoint
from captionless3d.errors import CheckpointError, ConfigError, DataError


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_default_index_lives_under_the_run_cache_and_is_reused(demo_world):
    index = demo_world.index
    cache = Path(demo_world.model.config["paths"]["cache_dir"])
    assert index.directory.parent.parent == cache / "demo"
    test_objects = demo_world.collection.indices("test")
    assert len(index) == len(test_objects) == 20
    assert all(index.thumbnail(i).is_file() for i in range(len(index)))
    examples = sorted(p.name for p in (index.directory.parent / "examples").iterdir())
    assert examples == sorted([f"photo_{c}.png" for c in demo_world.collection.categories]
                              + [f"shape_{c}.ply" for c in demo_world.collection.categories])
    stamp = (index.directory / "embeddings.npy").stat().st_mtime_ns
    again, _ = ensure_demo_index(demo_world.model, collection=demo_world.collection, progress=False)
    assert (again.directory / "embeddings.npy").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_find_demo_checkpoint_picks_the_newest(tmp_path):
    with pytest.raises(CheckpointError, match="train one first .* or pass --ckpt"):
        find_demo_checkpoint(tmp_path)
    old = tmp_path / "train" / "runs" / "avg" / "a" / "checkpoints" / "best.ckpt"
    new = tmp_path / "train" / "multiruns" / "x" / "0_i2i" / "checkpoints" / "best.ckpt"
    for i, path in enumerate((old, new)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    assert find_demo_checkpoint(tmp_path) == new


def test_point_cloud_query_gives_labels_and_itself_as_top_hit(demo_world):
    index, service = demo_world.index, demo_world.service
    query = index.root / index.paths[3]  # an indexed shape: it must find itself first
    result = service.query(query)
    assert result.kind == "points" and result.filename == query.name
    assert [h.rank for h in result.hits] == [1, 2, 3, 4]
    assert result.hits[0].path == index.paths[3] and result.hits[0].score > 0.99
    assert result.hits[0].position == 3 and result.hits[0].thumbnail == index.thumbnail(3)
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    expected = demo_world.model.classify(str(query), labels=list(demo_world.collection.categories))[0]
    assert result.labels == expected
    import trimesh

    mesh = trimesh.load(result.cloud_glb, force="mesh")
    assert len(mesh.vertices) == demo_world.model.n_points * 12  # one icosahedron per point the encoder saw


def test_custom_labels_and_k(demo_world):
    query = demo_world.index.directory.parent / "examples" / "shape_mug.ply"
    result = demo_world.service.query(query, labels=parse_labels("mug, lamp,  mug ,chair", ["x"]), k=2)
    assert sorted(n for n, _ in result.labels) == ["chair", "lamp", "mug"]
    assert len(result.hits) == 2
    assert parse_labels("  ", ["a", "b"]) == ["a", "b"]


def test_photo_query_searches_the_index(demo_world):
    photo = demo_world.index.directory.parent / "examples" / "photo_chair.png"
    result = demo_world.service.query(photo)
    assert result.kind == "image" and result.labels is None and result.cloud_glb is None and len(result.hits) == 4
    expected = demo_world.model.search(image=str(photo), k=4, index=demo_world.index)
    assert [h.path for h in result.hits] == [h.path for h in expected]


@pytest.mark.parametrize("which, message", [
    ("mesh", "broken_mesh.ply: unreadable mesh or point cloud"),
    ("nan", "nan_cloud.npy: 1 points have NaN/Inf coordinates"),
    ("image", "not_an_image.png: not a readable image"),
    ("suffix", "notes.txt: unsupported file type '.txt'"),
])
def test_bad_file_is_a_clear_error_and_the_service_goes_on(demo_world, bad_files, tmp_path, which, message):
    # the page hands the service its own copy of the upload; the message must name the user's file, not the copy
    copy = tmp_path / "server-copy" / f"upload{bad_files[which].suffix}"
    copy.parent.mkdir()
    copy.write_bytes(bad_files[which].read_bytes())
    with pytest.raises(DataError) as caught:
        demo_world.service.query(copy, filename=bad_files[which].name)
    assert message in str(caught.value) and "server-copy" not in str(caught.value)
    assert demo_world.service.query(demo_world.index.root / demo_world.index.paths[0]).hits


def test_cloud_to_glb_centres_scales_and_colours_by_height(tmp_path):
    import trimesh

    g = np.random.default_rng(0)
    cloud = g.normal(size=(50, 3)) * 7 + 100
    path = cloud_to_glb(cloud, tmp_path / "c.glb", radius=0.01)
    assert path.read_bytes()[:4] == b"glTF"
    mesh = trimesh.load(path, force="mesh")
    assert len(mesh.vertices) == 50 * 12 and len(mesh.faces) == 50 * 20
    assert np.abs(mesh.vertices.mean(axis=0)).max() < 0.05 and np.linalg.norm(mesh.vertices, axis=1).max() <= 1.02
    colours = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(int)
    low, high = np.argmin(mesh.vertices[:, 1]), np.argmax(mesh.vertices[:, 1])
    assert colours[low, 2] > colours[low, 0] and colours[high, 0] > colours[high, 2]  # blue low, orange high
    with pytest.raises(DataError, match="need finite"):
        cloud_to_glb(np.array([[0.0, np.nan, 0.0]]), tmp_path / "bad.glb")


def test_service_validates_its_settings(demo_world):
    with pytest.raises(ConfigError, match="at least one zero-shot label"):
        DemoService(demo_world.model, demo_world.index, [])
    with pytest.raises(ConfigError, match="-k must be from 1 to 20"):
        DemoService(demo_world.model, demo_world.index, ["chair"], k=0)


def test_binds_loopback_by_default(demo_url):
    from captionless3d.demo.gradio_app import launch_demo

    assert DEFAULT_HOST == "127.0.0.1"
    assert inspect.signature(launch_demo).parameters["host"].default == "127.0.0.1"
    assert build_parser().parse_args([]).host == "127.0.0.1"
    assert demo_url.startswith("http://127.0.0.1:")  # the fixture leaves the host to its default


def test_page_serves_its_own_assets_and_calls_nowhere(demo_url):
    """Everything the page loads comes from this server: no CDN, no fonts from the web (there is no network)."""
    status, content_type, page = get(demo_url + "/")
    assert status == 200 and content_type.startswith("text/html")
    html = page.decode("utf-8")
    sources = re.findall(r"<(?:script|link)[^>]+(?:src|href)=\"([^\"]+)\"", html)
    assert sources and all(not s.startswith(("http:", "https:", "//")) for s in sources), sources
    status, _, config = get(demo_url + "/config")
    assert (status == 200 and b"captionless3d demo: avg" in config
            and b"\"analytics_enabled\": false" in config.replace(b":false", b": false"))


@pytest.mark.slow
def test_module_entry_point_serves_a_checkpoint(demo_world, tmp_path):
    """``python -m captionless3d.demo`` (what ``make demo`` runs): finds the newest checkpoint under --outputs,
    reuses the run's demo index, binds 127.0.0.1 and serves the page."""
    pytest.importorskip("gradio")
    link = tmp_path / "outputs" / "train" / "runs" / "avg" / "t" / "checkpoints"
    link.mkdir(parents=True)
    (link / "best.ckpt").symlink_to(demo_world.ckpt)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "captionless3d.demo", "--outputs", str(tmp_path / "outputs"),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=demo_world.root)
    try:
        lines, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "serving on" in line:
                break
        text = "".join(lines)
        assert "demo: serving on http://127.0.0.1:" in text, text
        assert f"index {demo_world.index.directory} (20 shapes)" in text  # the fixture's index, reused
        assert "8 example inputs on the page" in text
        url = text.split("serving on ")[1].split()[0].rstrip("/")
        status, _, page = get(url + "/config")
        assert status == 200 and b"captionless3d demo: avg" in page
    finally:
        proc.terminate()
        proc.wait(timeout=30)
