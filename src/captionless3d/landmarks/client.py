"""A minimal OpenAI-compatible chat-completions client (stdlib ``urllib`` only, no new dependency).

``POST {base_url}/chat/completions`` with ``{"model", "messages", "temperature", "max_tokens", ...}``; the reply's
``choices[0].message.content`` is returned. Works with the OpenAI API and with the many servers that mimic it
(vLLM, llama.cpp server, Ollama's ``/v1``, LM Studio, ...).

Robustness:

- Retries (bounded by ``max_retries``) on HTTP 408/409/429/5xx, connection errors, timeouts and malformed replies
  (not JSON, or without ``choices[0].message.content``), with exponential back-off ``backoff_base_s · 2^attempt``
  capped at ``backoff_max_s`` (with jitter unless ``jitter=False``). A ``Retry-After`` header (seconds or an HTTP
  date) is honoured, capped at ``retry_after_max_s``.
- Other 4xx (bad request, authentication, unknown model) fail at once: retrying would not help.

The API key comes from ``api_key`` or the first set environment variable of ``api_key_env``
(``CAPTIONLESS3D_LLM_API_KEY``, then ``OPENAI_API_KEY``). It is only ever put into the ``Authorization`` header:
``repr``, log lines and exception messages never contain it (any echo of it in a server reply is replaced by
``***``), and nothing this package writes to disk includes it.
"""
from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from captionless3d.errors import Captionless3DError, ConfigError

log = logging.getLogger(__name__)

__all__ = ["ChatBackend", "LLMError", "OpenAIChatClient", "DEFAULT_KEY_ENV"]

DEFAULT_KEY_ENV = ("CAPTIONLESS3D_LLM_API_KEY", "OPENAI_API_KEY")
RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class LLMError(Captionless3DError):
    """The language model server failed (after retries) or refused the request. Never contains the API key."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that answers a chat: ``complete(messages) -> str``; ``id`` names the model (goes into caches)."""

    id: str

    def complete(self, messages: Sequence[Mapping[str, str]]) -> str: ...


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIChatClient:
    """OpenAI-compatible chat client. See the module docstring for retries and key handling."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: Sequence[str] = DEFAULT_KEY_ENV,
        require_key: bool = False,
        timeout_s: float = 60.0,
        max_retries: int = 6,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        retry_after_max_s: float = 120.0,
        jitter: bool = True,
        temperature: float | None = 1.0,
        max_tokens: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url or not str(base_url).startswith(("http://", "https://")):
            raise ConfigError(f"llm.base_url: expected an http(s) URL, got {base_url!r}")
        if not model:
            raise ConfigError("llm.model: a model name is required")
        if timeout_s is None or not float(timeout_s) > 0:
            raise ConfigError(f"llm.timeout_s: must be > 0, got {timeout_s!r}")
        if int(max_retries) < 0:
            raise ConfigError(f"llm.max_retries: must be >= 0, got {max_retries!r}")
        self.base_url = str(base_url).rstrip("/")
        self.model = str(model)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.retry_after_max_s = float(retry_after_max_s)
        self.jitter = bool(jitter)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self.extra_headers = dict(extra_headers or {})
        self._sleep = sleep
        key = api_key
        source = "llm.api_key"
        if not key:
            for name in api_key_env or ():
                if os.environ.get(name):
                    key, source = os.environ[name], f"${name}"
                    break
        if not key and require_key:
            raise ConfigError(
                f"llm.api_key: no API key; set one of the environment variables {list(api_key_env)} "
                "(keys are never read from config files that get saved)"
            )
        self.__key = key or None  # name-mangled; never logged
        self.key_source = source if key else None
        self.calls = 0  # HTTP requests made (incl. retries)

    # ------------------------------------------------------------------ helpers
    @property
    def id(self) -> str:
        return f"openai:{self.model}"

    def __repr__(self) -> str:
        key = "***" if self.__key else None
        return (f"OpenAIChatClient(base_url={self.base_url!r}, model={self.model!r}, api_key={key!r}, "
                f"timeout_s={self.timeout_s})")

    def _scrub(self, text: str) -> str:
        if self.__key and self.__key in text:
            text = text.replace(self.__key, "***")
        return text

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_max_s)
        delay = min(self.backoff_max_s, self.backoff_base_s * (2.0**attempt))
        return delay * random.uniform(0.5, 1.0) if self.jitter else delay

    def _request(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json", **self.extra_headers}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers, method="POST")
        self.calls += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(2000).decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - the body is only for the message
                detail = ""
            message = f"HTTP {exc.code} {exc.reason}: {detail.strip()[:500]}"
            if exc.code in RETRY_STATUS:
                raise _Retryable(message,
                                 _parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)) from None
            raise LLMError(self._scrub(f"{self.base_url}/chat/completions refused the request: {message}")) from None
        except TimeoutError as exc:
            raise _Retryable(f"timed out after {self.timeout_s:g} s ({exc})") from None
        except urllib.error.URLError as exc:
            raise _Retryable(f"connection failed: {exc.reason}") from None
        except (ConnectionError, OSError) as exc:
            raise _Retryable(f"connection failed: {type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Retryable(f"malformed reply (not JSON: {exc}): {raw[:200]!r}") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Retryable(f"malformed reply (no choices[0].message.content): {str(data)[:200]}") from None
        if not isinstance(content, str):
            raise _Retryable(f"malformed reply (content is {type(content).__name__}, not text)")
        return content

    # ------------------------------------------------------------------ API
    def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
        """Send one chat request; returns the assistant's text. Raises :class:`LLMError` after the retries."""
        payload: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages]}
        if self.temperature is not None:
            payload["temperature"] = float(self.temperature)
        if self.max_tokens is not None:
            payload["max_tokens"] = int(self.max_tokens)
        payload.update(self.extra_body)
        body = json.dumps(payload).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                return self._request(body)
            except _Retryable as exc:
                last = self._scrub(str(exc))
                if attempt == self.max_retries:
                    break
                delay = self._delay(attempt, exc.retry_after)
                log.warning("LLM request failed (%s); retry %d/%d in %.1f s",
                            last, attempt + 1, self.max_retries, delay)
                self._sleep(delay)
        raise LLMError(f"{self.base_url}/chat/completions: giving up after {self.max_retries + 1} attempts; last "
                       f"error: {last}")
