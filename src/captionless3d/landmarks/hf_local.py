"""Local Hugging Face ``transformers`` chat backend (``llm=hf_local``), for generating landmarks without a server.

``transformers`` is *not* a dependency of captionless3d; it is imported only when this backend is built, and a
missing install raises :class:`ConfigError` saying what to install. Any instruction-tuned causal LM with a chat
template works (e.g. ``Qwen/Qwen2.5-1.5B-Instruct``); the weights come from the local Hugging Face cache or hub.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from captionless3d.errors import ConfigError
from captionless3d.landmarks.client import LLMError

log = logging.getLogger(__name__)

__all__ = ["HFLocalChat"]


class HFLocalChat:
    """Chat backend over ``transformers.pipeline("text-generation")``; ``complete(messages) -> str``."""

    def __init__(
        self,
        model: str,
        *,
        device: str | int | None = None,
        torch_dtype: str | None = "auto",
        max_new_tokens: int = 2048,
        temperature: float = 1.0,
        top_p: float = 0.95,
        seed: int | None = 0,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not model:
            raise ConfigError("llm.model: a Hugging Face model id or local path is required")
        try:
            import transformers  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "llm=hf_local needs the optional package `transformers` (pip install transformers accelerate); "
                "or use llm=openai with any OpenAI-compatible server"
            ) from exc
        self.model = str(model)
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = seed
        kwargs: dict[str, Any] = {"model": self.model, "model_kwargs": dict(model_kwargs or {})}
        if torch_dtype is not None:
            kwargs["torch_dtype"] = torch_dtype
        if device is not None:
            kwargs["device"] = device
        try:
            self._pipe = transformers.pipeline("text-generation", **kwargs)
        except Exception as exc:  # noqa: BLE001 - unknown model id, no weights offline, ...
            raise ConfigError(f"llm.model: could not load {self.model!r} with transformers: {type(exc).__name__}: "
                              f"{exc}") from exc

    @property
    def id(self) -> str:
        return f"hf_local:{self.model}"

    def __repr__(self) -> str:
        return (f"HFLocalChat(model={self.model!r}, max_new_tokens={self.max_new_tokens}, "
                f"temperature={self.temperature})")

    def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
        if self.seed is not None:
            import transformers

            transformers.set_seed(int(self.seed))
            self.seed = int(self.seed) + 1  # a different sample next round, still reproducible
        do_sample = self.temperature > 0
        gen: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": do_sample, "return_full_text": False}
        if do_sample:
            gen.update(temperature=self.temperature, top_p=self.top_p)
        try:
            out = self._pipe([dict(m) for m in messages], **gen)
        except Exception as exc:  # noqa: BLE001
            raise LLMError(f"hf_local {self.model}: generation failed: {type(exc).__name__}: {exc}") from exc
        try:
            text = out[0]["generated_text"]
        except (IndexError, KeyError, TypeError) as exc:
            raise LLMError(f"hf_local {self.model}: unexpected pipeline output {str(out)[:200]}") from exc
        if isinstance(text, list):  # some versions return the whole chat; take the last assistant turn
            text = text[-1].get("content", "") if text and isinstance(text[-1], dict) else ""
        return str(text)
