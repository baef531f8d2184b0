"""The real OpenAI-compatible client against a fake server: replies, malformed replies, timeouts, retries, keys."""
import logging

import pytest

from captionless3d.errors import ConfigError
from captionless3d.landmarks import LLMError, OpenAIChatClient, build_backend


def chat_reply(content):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


KEY = "sk-test-SECRET-0123456789"


def make(server, sleeps=None, **kw):
    opts = dict(api_key=KEY, timeout_s=2.0, max_retries=3, backoff_base_s=1.0, jitter=False,
                sleep=(sleeps.append if sleeps is not None else (lambda s: None)))
    opts.update(kw)
    return OpenAIChatClient(server.base_url, "fake-model", **opts)


def test_good_reply_and_request_shape(server):
    server.script = [{"body": chat_reply("hello")}]
    client = make(server, temperature=0.7, max_tokens=100)
    assert client.complete([{"role": "user", "content": "hi"}]) == "hello"
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert req["json"] == {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.7,
                           "max_tokens": 100}
    assert KEY not in repr(client) and "***" in repr(client)


def test_malformed_json_then_success(server):
    sleeps = []
    server.script = [{"body": "{not json"}, {"body": chat_reply("fine")}]
    assert make(server, sleeps).complete([{"role": "user", "content": "x"}]) == "fine"
    assert server.calls == 2 and sleeps == [1.0]


@pytest.mark.parametrize("body", [{"choices": []}, {"error": "x"}, chat_reply(None), {"choices": [{"message": {}}]}])
def test_missing_fields_give_up(server, body):
    sleeps = []
    server.script = [{"body": body}]
    with pytest.raises(LLMError, match="malformed reply") as info:
        make(server, sleeps, max_retries=2).complete([{"role": "user", "content": "x"}])
    assert server.calls == 3 and sleeps == [1.0, 2.0]  # exponential back-off
    assert KEY not in str(info.value)


def test_timeout_then_success(server):
    sleeps = []
    server.script = [{"delay": 1.0, "body": chat_reply("late")}, {"body": chat_reply("on time")}]
    assert make(server, sleeps, timeout_s=0.2).complete([{"role": "user", "content": "x"}]) == "on time"
    assert server.calls == 2 and len(sleeps) == 1


def test_timeouts_exhaust_retries(server):
    server.script = [{"delay": 0.6}]
    with pytest.raises(LLMError, match="timed out"):
        make(server, timeout_s=0.15, max_retries=1).complete([{"role": "user", "content": "x"}])
    assert server.calls == 2


def test_429_retry_after_honoured_and_capped(server):
    sleeps = []
    server.script = [
        {"status": 429, "headers": {"Retry-After": "3"}, "body": {"error": "slow down"}},
        {"status": 503, "headers": {"Retry-After": "999"}, "body": {"error": "busy"}},
        {"status": 500, "body": {"error": "oops"}},
        {"body": chat_reply("done")},
    ]
    out = make(server, sleeps, retry_after_max_s=10).complete([{"role": "user", "content": "x"}])
    assert out == "done" and server.calls == 4
    assert sleeps == [3.0, 10.0, 4.0]  # Retry-After, capped Retry-After, back-off 1*2^2


def test_client_errors_are_not_retried_and_key_scrubbed(server, caplog):
    server.script = [{"status": 401, "body": {"error": f"invalid key {KEY}"}}]
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(LLMError, match="HTTP 401") as info:
            make(server).complete([{"role": "user", "content": "x"}])
    assert server.calls == 1
    assert KEY not in str(info.value) and "***" in str(info.value)
    assert KEY not in caplog.text


def test_retry_logs_never_contain_key(server, caplog):
    server.script = [{"status": 500, "body": {"error": f"echo {KEY}"}}, {"body": chat_reply("ok")}]
    with caplog.at_level(logging.DEBUG):
        make(server).complete([{"role": "user", "content": "x"}])
    assert "retry 1/3" in caplog.text and KEY not in caplog.text


def test_key_from_env_and_required(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "env-key-123")
    client = OpenAIChatClient(server.base_url, "m", sleep=lambda s: None)
    client.complete([{"role": "user", "content": "x"}])
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer env-key-123"
    assert client.key_source == "$OPENAI_API_KEY"
    monkeypatch.setenv("CAPTIONLESS3D_LLM_API_KEY", "ours-first")
    OpenAIChatClient(server.base_url, "m").complete([{"role": "user", "content": "x"}])
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer ours-first"
    monkeypatch.delenv("CAPTIONLESS3D_LLM_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    OpenAIChatClient(server.base_url, "m").complete([{"role": "user", "content": "x"}])
    assert "Authorization" not in server.requests[-1]["headers"]  # local servers need no key
    with pytest.raises(ConfigError, match="CAPTIONLESS3D_LLM_API_KEY"):
        OpenAIChatClient(server.base_url, "m", require_key=True)


def test_connection_refused_is_retried_then_fails():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    sleeps = []
    client = OpenAIChatClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, jitter=False, sleep=sleeps.append)
    with pytest.raises(LLMError, match="connection failed"):
        client.complete([{"role": "user", "content": "x"}])
    assert client.calls == 3 and sleeps == [1.0, 2.0]


def test_config_errors(server):
    with pytest.raises(ConfigError, match="base_url"):
        OpenAIChatClient("ftp://x", "m")
    with pytest.raises(ConfigError, match="model"):
        OpenAIChatClient(server.base_url, "")
    with pytest.raises(ConfigError, match="backend"):
        build_backend({"backend": "carrier-pigeon"})
    with pytest.raises(ConfigError, match="unsupported option"):
        build_backend({"backend": "openai", "base_url": server.base_url, "model": "m", "api_kee": KEY})
    client = build_backend({"backend": "openai", "base_url": server.base_url, "model": "m",
                            "api_key_env": ["X_NOT_SET"]})
    assert client.id == "openai:m"
