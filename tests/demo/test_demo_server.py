"""The demo server over HTTP (urllib, no browser): results, bad uploads, loopback binding, the default index."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from captionless3d.demo import DEFAULT_HOST, DemoApp, make_demo_server, parse_multipart
from captionless3d.demo.__main__ import build_parser
from captionless3d.demo.world import ensure_demo_index, find_demo_checkpoint
from captionless3d.errors import Captionless3DError, CheckpointError

PNG = b"\x89PNG\r\n\x1a\n"


def _multipart(fields: dict[str, tuple[str | None, bytes]]) -> tuple[str, bytes]:
    boundary = f"----demo{uuid.uuid4().hex}"
    chunks = []
    for name, (filename, data) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks) + f"--{boundary}--\r\n".encode()


def post(url: str, path: Path | None = None, **extra: str) -> tuple[int, dict]:
    fields = {"file": (path.name, path.read_bytes())} if path is not None else {}
    fields.update({k: (None, v.encode()) for k, v in extra.items()})
    content_type, body = _multipart(fields or {"k": (None, b"3")})
    request = urllib.request.Request(url + "/api/query", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_binds_loopback_by_default(demo_world):
    assert DEFAULT_HOST == "127.0.0.1"
    assert inspect.signature(make_demo_server).parameters["host"].default == "127.0.0.1"
    assert build_parser().parse_args([]).host == "127.0.0.1"
    server = make_demo_server(demo_world.app, port=0)  # host left to its default
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()


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


def test_parse_multipart_is_binary_safe():
    data = np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes() + b"\r\n--x\r\n\r\n"
    content_type, body = _multipart({"file": ("a b.npy", data), "labels": (None, b"chair, table")})
    fields = parse_multipart(content_type, body)
    assert fields["file"] == ("a b.npy", data)
    assert fields["labels"] == (None, b"chair, table")
    with pytest.raises(Captionless3DError, match="multipart/form-data"):
        parse_multipart("application/json", b"{}")


def test_point_cloud_upload_gives_labels_and_itself_as_top_hit(demo_url, demo_world):
    index = demo_world.index
    query = index.root / index.paths[3]  # an indexed shape: it must find itself first
    status, result = post(demo_url, query)
    assert status == 200, result
    assert result["kind"] == "points" and result["filename"] == query.name
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3, 4]
    assert result["hits"][0]["path"] == index.paths[3] and result["hits"][0]["score"] > 0.99
    scores = [h["score"] for h in result["hits"]]
    assert scores == sorted(scores, reverse=True)
    labels = result["labels"]
    assert sorted(n for n, _ in labels) == sorted(demo_world.collection.categories)
    assert [s for _, s in labels] == sorted((s for _, s in labels), reverse=True)
    expected = demo_world.model.classify(str(query), labels=list(demo_world.collection.categories))[0]
    assert [n for n, _ in labels] == [n for n, _ in expected]
    np.testing.assert_allclose([s for _, s in labels], [s for _, s in expected], atol=1e-5)
    assert result["preview"].startswith("data:image/png;base64,")
    status, content_type, thumb = get(demo_url + result["hits"][0]["thumb"])
    assert status == 200 and content_type == "image/png" and thumb.startswith(PNG)


def test_custom_labels_and_k(demo_url, demo_world):
    query = demo_world.index.directory.parent / "examples" / "shape_mug.ply"
    status, result = post(demo_url, query, labels="mug, lamp,  mug ,chair", k="2")
    assert status == 200, result
    assert sorted(n for n, _ in result["labels"]) == ["chair", "lamp", "mug"]
    assert len(result["hits"]) == 2


def test_photo_upload_searches_the_index(demo_url, demo_world):
    photo = demo_world.index.directory.parent / "examples" / "photo_chair.png"
    status, result = post(demo_url, photo)
    assert status == 200, result
    assert result["kind"] == "image" and result["labels"] is None and len(result["hits"]) == 4
    expected = demo_world.model.search(image=str(photo), k=4, index=demo_world.index)
    assert [h["path"] for h in result["hits"]] == [h.path for h in expected]


@pytest.mark.parametrize("which, message", [
    ("mesh", "broken_mesh.ply: unreadable mesh or point cloud"),
    ("nan", "nan_cloud.npy: 1 points have NaN/Inf coordinates"),
    ("image", "not_an_image.png: not a readable image"),
    ("suffix", "notes.txt: unsupported file type '.txt'"),
])
def test_bad_upload_is_a_clear_400_and_the_server_keeps_serving(demo_url, demo_world, bad_files, which, message):
    status, result = post(demo_url, bad_files[which])
    assert status == 400 and message in result["error"], result
    assert "captionless3d-demo-" not in result["error"]  # names the user's file, not the server's temporary copy
    status, result = post(demo_url, demo_world.index.root / demo_world.index.paths[0])
    assert status == 200 and result["hits"]


def test_requests_without_a_file_or_to_unknown_pages(demo_url):
    status, result = post(demo_url, None, k="3")
    assert status == 400 and "no file" in result["error"]
    status, _, body = get(demo_url + "/thumb/99999.png")
    assert status == 404 and b"no thumbnail" in body
    status, _, body = get(demo_url + "/nope")
    assert status == 404
    status, content_type, page = get(demo_url + "/")
    assert status == 200 and content_type.startswith("text/html") and b'id="file"' in page
    status, _, info = get(demo_url + "/api/info")
    assert status == 200 and json.loads(info)["index_size"] == 20


def test_oversized_upload_is_refused(demo_world):
    app = DemoApp(demo_world.model, demo_world.index, ["chair"], max_upload_bytes=1000)
    seen = {}
    body = app({"REQUEST_METHOD": "POST", "PATH_INFO": "/api/query", "CONTENT_LENGTH": "5000",
                "CONTENT_TYPE": "multipart/form-data; boundary=x", "wsgi.input": None},
               lambda status, headers: seen.setdefault("status", status))
    assert seen["status"].startswith("413") and b"larger than the limit" in b"".join(body)


@pytest.mark.slow
def test_module_entry_point_serves_a_checkpoint(demo_world, tmp_path):
    """``python -m captionless3d.demo`` (what ``make demo`` runs): finds the newest checkpoint under --outputs,
    reuses the run's demo index, binds 127.0.0.1 and serves the page."""
    outputs = demo_world.root  # holds run/checkpoints/best.ckpt; find_latest_checkpoint globs <outputs>/train/**
    link = tmp_path / "outputs" / "train" / "runs" / "avg" / "t" / "checkpoints"
    link.mkdir(parents=True)
    (link / "best.ckpt").symlink_to(demo_world.ckpt)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "captionless3d.demo", "--outputs", str(tmp_path / "outputs"),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=outputs)
    try:
        lines, deadline = [], time.monotonic() + 50
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
        url = text.split("serving on ")[1].split()[0].rstrip("/")
        status, _, page = get(url + "/")
        assert status == 200 and b"captionless3d demo: avg" in page
    finally:
        proc.terminate()
        proc.wait(timeout=20)
