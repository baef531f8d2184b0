"""A small fake OpenAI-compatible chat server on 127.0.0.1 (http.server in a thread, free port)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def chat_reply(content) -> dict:
    return {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


class FakeServer:
    """Answers POST /v1/chat/completions from a script of actions (the last one repeats).

    An action is a dict: ``status`` (200), ``body`` (dict -> JSON, str/bytes -> raw), ``headers``, ``delay`` (s),
    or a callable ``(request_json, call_index) -> action``.
    """

    def __init__(self) -> None:
        self.script: list = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with server.lock:
                    index = len(server.requests)
                    try:
                        payload = json.loads(raw)
                    except ValueError:
                        payload = None
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "json": payload})
                    action = (server.script[min(index, len(server.script) - 1)] if server.script
                              else {"body": chat_reply("ok")})
                if callable(action):
                    action = action(payload, index)
                if action.get("delay"):
                    time.sleep(action["delay"])
                body = action.get("body", chat_reply("ok"))
                data = (json.dumps(body).encode() if isinstance(body, (dict, list))
                        else (body.encode() if isinstance(body, str) else body))
                try:
                    self.send_response(action.get("status", 200))
                    for k, v in action.get("headers", {}).items():
                        self.send_header(k, str(v))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    reply = staticmethod(chat_reply)

    @property
    def calls(self) -> int:
        return len(self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CAPTIONLESS3D_LLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    srv = FakeServer()
    yield srv
    srv.close()
