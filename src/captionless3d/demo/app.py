"""The demo web app: one HTML page + a small JSON API, served by the standard library.

Why no web framework (gradio would add ~186 MB and a network-loving frontend): the page needs one upload form and
one results view, which is a single static HTML page using ``fetch``. The server is :mod:`wsgiref` with a threading
mix-in; uploads are ``multipart/form-data`` parsed with the standard :mod:`email` parser (binary-safe). Model calls
are serialised by a lock (the encoder and teacher are not meant for concurrent use).

Routes:

``GET /``                 the page
``GET /api/info``         JSON: checkpoint, teacher, index size, default labels and k, accepted file types
``POST /api/query``       multipart fields ``file`` (required), ``labels`` (comma-separated, optional), ``k``
                          (optional). JSON: ``kind`` ("image" or "points"), ``hits`` [{rank, path, score, thumb}],
                          ``labels`` [[label, score], ...] (point clouds only), ``preview`` (a PNG data URL of the
                          uploaded cloud), ``seconds``. A bad upload answers 400 ``{"error": message}`` (413 when too
                          large); the server keeps serving.
``GET /thumb/<n>.png``    the index's thumbnail of shape ``n``
"""
from __future__ import annotations

import base64
import io
import json
import logging
import re
import socketserver
import tempfile
import threading
import time
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np

from captionless3d.api.inputs import IMAGE_SUFFIXES, POINT_SUFFIXES
from captionless3d.errors import Captionless3DError, ConfigError, DataError

log = logging.getLogger(__name__)

#: Loopback only by default: the demo has no authentication.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: Largest accepted upload body.
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
_STATUS = {200: "200 OK", 400: "400 Bad Request", 404: "404 Not Found", 405: "405 Method Not Allowed",
           413: "413 Payload Too Large", 500: "500 Internal Server Error"}


class UploadError(DataError):
    """A request the page sent is not a usable upload (no file, not multipart, too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``multipart/form-data`` body -> ``{field name: (filename or None, bytes)}`` (stdlib :mod:`email`, binary-safe).

    Raises:
        UploadError: not multipart / no boundary / no parts.
    """
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise UploadError(f"expected a multipart/form-data upload, got Content-Type {content_type or 'none'!r}")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise UploadError("malformed multipart upload (no parts)")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True)
        fields[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    if not fields:
        raise UploadError("malformed multipart upload (no named fields)")
    return fields


def _png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class DemoApp:
    """The WSGI application.

    Args:
        model: a loaded :class:`~captionless3d.api.Captionless3DModel`.
        index: the :class:`~captionless3d.shape_index.ShapeIndex` searched (thumbnails shown when it has them).
        labels: default zero-shot labels (the page can change them per query).
        k: default number of shapes shown.
        title: the page heading.
    """

    def __init__(self, model: Any, index: Any, labels: Sequence[str], *, k: int = 5, title: str = "captionless3d demo",
                 max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:
        if not labels:
            raise ConfigError("demo: give at least one zero-shot label (--labels)")
        self.model = model
        self.index = model.open_index(index)
        self.labels = [str(x) for x in labels]
        self.k = int(k)
        self.title = title
        self.max_upload_bytes = int(max_upload_bytes)
        self._lock = threading.Lock()
        self.requests = 0
        self.errors = 0

    # -- WSGI ---------------------------------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        self.requests += 1
        try:
            if path == "/" and method in ("GET", "HEAD"):
                from captionless3d.demo.page import render_page

                return self._send(start_response, 200, render_page(self.title).encode("utf-8"), "text/html; charset=utf-8")
            if path == "/api/info" and method == "GET":
                return self._json(start_response, 200, self.info())
            if path == "/api/query":
                if method != "POST":
                    return self._json(start_response, 405, {"error": "POST a multipart upload to /api/query"})
                return self._json(start_response, 200, self.query(self._read_upload(environ)))
            match = re.fullmatch(r"/thumb/(\d+)\.png", path)
            if match and method == "GET":
                return self._thumbnail(start_response, int(match.group(1)))
            return self._json(start_response, 404, {"error": f"no such page: {path}"})
        except UploadError as exc:
            self.errors += 1
            return self._json(start_response, exc.status, {"error": str(exc)})
        except Captionless3DError as exc:  # a bad file: a clear message, the server goes on
            self.errors += 1
            log.info("demo: rejected upload: %s", exc)
            return self._json(start_response, 400, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - never let one request take the server down
            self.errors += 1
            log.exception("demo: request %s %s failed", method, path)
            return self._json(start_response, 500, {"error": f"internal error ({type(exc).__name__}: {exc})"})

    @staticmethod
    def _send(start_response: Callable[..., Any], status: int, body: bytes, content_type: str) -> list[bytes]:
        start_response(_STATUS[status], [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                         ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")])
        return [body]

    def _json(self, start_response: Callable[..., Any], status: int, payload: dict[str, Any]) -> list[bytes]:
        return self._send(start_response, status, json.dumps(payload).encode("utf-8"), "application/json")

    def _read_upload(self, environ: dict[str, Any]) -> dict[str, tuple[str | None, bytes]]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise UploadError("bad Content-Length") from None
        if length <= 0:
            raise UploadError("empty upload: choose a file first")
        if length > self.max_upload_bytes:
            raise UploadError(f"upload of {length / 2**20:.1f} MB is larger than the limit of "
                              f"{self.max_upload_bytes / 2**20:.0f} MB", status=413)
        body = environ["wsgi.input"].read(length)
        return parse_multipart(environ.get("CONTENT_TYPE", ""), body)

    def _thumbnail(self, start_response: Callable[..., Any], position: int) -> list[bytes]:
        path = self.index.thumbnail(position) if 0 <= position < len(self.index) else None
        if path is None or not Path(path).is_file():
            return self._json(start_response, 404, {"error": f"no thumbnail for shape {position}"})
        return self._send(start_response, 200, Path(path).read_bytes(), "image/png")

    # -- the API ------------------------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        model = self.model
        return {
            "title": self.title,
            "checkpoint": str(model.checkpoint) if model.checkpoint else None,
            "experiment": model.experiment,
            "teacher": model.teacher_id,
            "index": str(self.index.directory),
            "index_size": len(self.index),
            "thumbnails": self.index.thumbnail(0) is not None,
            "labels": self.labels,
            "k": self.k,
            "accept": {"points": list(POINT_SUFFIXES), "image": list(IMAGE_SUFFIXES)},
        }

    def query(self, fields: dict[str, tuple[str | None, bytes]]) -> dict[str, Any]:
        """One upload -> results (see the module docstring). DataError/UploadError for bad input."""
        filename, data = fields.get("file", (None, b""))
        if not filename:
            raise UploadError("no file in the upload: choose a photo or a point cloud")
        if not data:
            raise UploadError(f"{filename}: the file is empty")
        suffix = Path(filename).suffix.lower()
        if suffix in POINT_SUFFIXES:
            kind = "points"
        elif suffix in IMAGE_SUFFIXES:
            kind = "image"
        else:
            raise UploadError(f"{filename}: unsupported file type {suffix or '(none)'!r}; upload a photo "
                              f"({', '.join(IMAGE_SUFFIXES)}) or a point cloud / mesh ({', '.join(POINT_SUFFIXES)})")
        labels = self._labels(fields)
        k = self._k(fields)
        display = Path(filename).name
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="captionless3d-demo-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            with self._lock:
                try:
                    result = self._run(kind, path, labels, k)
                except DataError as exc:  # name the user's file, not the temporary copy
                    raise DataError(str(exc).replace(str(path), display)) from exc
        result.update(kind=kind, filename=display, seconds=round(time.perf_counter() - started, 3))
        return result

    def _labels(self, fields: dict[str, tuple[str | None, bytes]]) -> list[str]:
        raw = fields.get("labels", (None, b""))[1].decode("utf-8", "replace").strip()
        if not raw:
            return self.labels
        labels = list(dict.fromkeys(x.strip() for x in raw.split(",") if x.strip()))
        if not labels:
            raise UploadError("labels: give comma-separated class names, e.g. 'chair, table, lamp'")
        return labels

    def _k(self, fields: dict[str, tuple[str | None, bytes]]) -> int:
        raw = fields.get("k", (None, b""))[1].decode("utf-8", "replace").strip()
        if not raw:
            return self.k
        if not raw.isdigit() or not 1 <= int(raw) <= 50:
            raise UploadError(f"k must be a whole number from 1 to 50, got {raw!r}")
        return int(raw)

    def _run(self, kind: str, path: Path, labels: list[str], k: int) -> dict[str, Any]:
        from captionless3d.api.inputs import gather_points, normalise_points
        from captionless3d.shape_index import splat_thumbnails

        model = self.model
        result: dict[str, Any] = {"labels": None, "preview": None}
        if kind == "points":
            clouds, sources = gather_points(path, n_points=model.n_points, seed=model.seed)
            if len(clouds) != 1:
                raise DataError(f"{path}: holds {len(clouds)} clouds; upload one shape per file")
            emb = model._encode_clouds(clouds, 1, sources).numpy()
            classes = model.class_embeddings(labels, template=model.prompt_template)
            scores = (emb @ classes.T)[0]
            order = np.argsort(-scores, kind="stable")
            result["labels"] = [[labels[j], float(scores[j])] for j in order]
            result["preview"] = _png_data_url(splat_thumbnails(normalise_points(clouds).numpy(), 160)[0])
        else:
            emb = model.encode_images(path)
        scores, positions = self.index.search_embeddings(emb, k)
        paths = self.index.paths
        result["hits"] = [
            {"rank": r + 1, "path": paths[int(j)], "score": float(s),
             "thumb": f"/thumb/{int(j)}.png" if self.index.thumbnail(int(j)) is not None else None}
            for r, (s, j) in enumerate(zip(scores[0], positions[0]))
        ]
        return result


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib signature
        log.debug("%s - %s", self.address_string(), format % args)


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


def make_demo_server(app: DemoApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> WSGIServer:
    """A threading WSGI server for ``app`` bound to ``host:port`` (port 0: a free one; see ``server_address``).
    Call ``serve_forever()`` (and ``shutdown()`` from another thread, then ``server_close()``)."""
    return make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)


__all__ = ["DemoApp", "UploadError", "make_demo_server", "parse_multipart", "DEFAULT_HOST", "DEFAULT_PORT",
           "MAX_UPLOAD_BYTES"]
