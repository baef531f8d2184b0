"""Landmark generation: ask a chat LLM for ``count`` distinct one-sentence descriptions per category (docs/method.md,
Priors).

Per category, in rounds: the prompt (a template in the config, fields ``{category}``, ``{count}``, ``{existing}``)
asks for at most ``per_request`` new descriptions; the reply is cleaned (:func:`parse_reply`: JSON list or one per
line, numbering/bullets/quotes stripped), filtered to ``min_words..max_words`` words and de-duplicated
case/space/punctuation-insensitively against everything accepted so far. Rounds continue until ``count`` are
accepted, at most ``max_rounds`` (then :class:`DataError`, with the partial list kept in the cache).

Cache: ``cache_dir/<category>.json`` is rewritten atomically after every round with the accepted descriptions and a
key (backend id, prompts, word bounds; not the count and never the API key). A rerun resumes from it: a complete
category makes no request at all, a partial one only asks for the rest. A cache with another key is ignored (and
overwritten) with a warning.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from captionless3d.errors import ConfigError, DataError
from captionless3d.landmarks.client import ChatBackend
from captionless3d.utils.atomic import atomic_write_json
from captionless3d.utils.manifest import stable_hash

log = logging.getLogger(__name__)

__all__ = ["GenerationSettings", "generate_landmarks", "generate_category", "parse_reply", "dedup_key",
           "DEFAULT_SYSTEM", "DEFAULT_USER"]

CACHE_VERSION = 1
DEFAULT_SYSTEM = "You write short, concrete, visually descriptive sentences about 3D object shapes."
DEFAULT_USER = (
    "Write {count} different one-sentence descriptions of kinds, styles or functional variants of a {category}, "
    "each describing what it looks like (shape, parts, proportions). One description per line, no numbering, "
    "no extra text.{existing}"
)

_BULLET = re.compile(r"^\s*(?:[-*•·‣◦–—>]+|\(?\d{1,4}\s*[.):\]]|\d{1,4}\s+-|#{1,6})\s*")
_FENCE = re.compile(r"^\s*```")


@dataclass
class GenerationSettings:
    """How landmarks are requested and validated (``landmarks.yaml``: ``count``, ``prompt.*``, ``validation.*``)."""

    count: int = 128
    per_request: int = 32
    max_rounds: int = 20
    min_words: int = 4
    max_words: int = 40
    system_prompt: str = DEFAULT_SYSTEM
    user_prompt: str = DEFAULT_USER
    existing_header: str = "\nDo not repeat any of these:\n{items}"
    existing_max: int = 64  # at most this many accepted descriptions are quoted back (the latest ones)

    def validate(self) -> None:
        if int(self.count) < 1:
            raise ConfigError(f"landmarks.count: must be >= 1, got {self.count}")
        if int(self.per_request) < 1:
            raise ConfigError(f"landmarks.validation.per_request: must be >= 1, got {self.per_request}")
        if int(self.max_rounds) < 1:
            raise ConfigError(f"landmarks.validation.max_rounds: must be >= 1, got {self.max_rounds}")
        if not 1 <= int(self.min_words) <= int(self.max_words):
            raise ConfigError(f"landmarks.validation: need 1 <= min_words <= max_words, got {self.min_words}, "
                              f"{self.max_words}")
        for name, template in (("prompt.user", self.user_prompt), ("prompt.system", self.system_prompt)):
            try:
                template.format(category="x", count=1, existing="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"landmarks.{name}: bad template ({type(exc).__name__}: {exc}); fields: "
                                  "{category}, {count}, {existing}") from exc
        if "{category}" not in self.user_prompt:
            raise ConfigError("landmarks.prompt.user: the template must contain {category}")

    def cache_key(self, backend_id: str) -> dict[str, Any]:
        d = asdict(self)
        for transient in ("count", "per_request", "max_rounds"):
            d.pop(transient)
        return {"version": CACHE_VERSION, "backend": backend_id, "settings": stable_hash(d)}


def dedup_key(text: str) -> str:
    """Case/space/punctuation-insensitive identity of a description."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def _clean_line(line: str) -> str:
    s = _BULLET.sub("", line.strip(), count=1).strip()
    s = s.strip().strip(",").strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'`":
        s = s[1:-1].strip()
    s = re.sub(r"^\*\*(.+?)\*\*", r"\1", s)  # **bold** markdown
    return " ".join(s.split())


def parse_reply(text: str) -> list[str]:
    """Candidate descriptions from a reply: a JSON list of strings (or ``{"descriptions": [...]}``, optionally in a
    code fence), else one per line with numbering ("1.", "2)", "(3)"), bullets and quotes stripped. Preamble lines
    ending in ":" and code fences are dropped."""
    stripped = text.strip()
    unfenced = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", stripped)
    if unfenced[:1] in "[{":
        try:
            data = json.loads(unfenced)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else None
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return [c for c in (_clean_line(x) for x in data) if c]
    out = []
    for line in text.splitlines():
        if _FENCE.match(line) or not line.strip():
            continue
        clean = _clean_line(line)
        if not clean or clean.endswith(":"):
            continue
        out.append(clean)
    return out


def _word_count(text: str) -> int:
    return len(text.split())


def _cache_path(cache_dir: Path, category: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", category).strip("._") or "category"
    if slug != category:
        slug = f"{slug}-{stable_hash(category, 8)}"
    return cache_dir / f"{slug}.json"


def _load_cache(path: Path, key: Mapping[str, Any], category: str) -> list[str]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text("utf-8"))
        if data.get("key") != dict(key) or data.get("category") != category:
            log.warning("landmark cache %s was made with other settings/backend; starting %r afresh", path, category)
            return []
        items = data["descriptions"]
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise TypeError("descriptions is not a list of strings")
        return list(items)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("landmark cache %s is unreadable (%s); starting %r afresh", path, exc, category)
        return []


def generate_category(
    category: str,
    backend: ChatBackend,
    settings: GenerationSettings,
    *,
    cache_dir: str | Path | None = None,
) -> list[str]:
    """``settings.count`` distinct descriptions of one category (resuming from / updating the cache)."""
    settings.validate()
    count = int(settings.count)
    key = settings.cache_key(backend.id)
    path = _cache_path(Path(cache_dir), category) if cache_dir is not None else None
    accepted = _load_cache(path, key, category) if path is not None else []
    seen = {dedup_key(s) for s in accepted}
    rounds = 0
    while len(accepted) < count:
        if rounds >= int(settings.max_rounds):
            where = f"; the {len(accepted)} accepted so far are cached in {path}" if path is not None else ""
            raise DataError(
                f"landmarks: the LLM ({backend.id}) delivered only {len(accepted)}/{count} valid, distinct "
                f"descriptions for {category!r} after {rounds} rounds{where}. Raise landmarks.validation.max_rounds, "
                f"relax min_words/max_words ({settings.min_words}..{settings.max_words}) or lower landmarks.count"
            )
        rounds += 1
        want = min(int(settings.per_request), count - len(accepted))
        existing = ""
        if accepted and settings.existing_max > 0:
            quoted = "\n".join(f"- {s}" for s in accepted[-int(settings.existing_max):])
            existing = settings.existing_header.format(items=quoted)
        fields = {"category": category, "count": want, "existing": existing}
        messages = []
        if settings.system_prompt:
            messages.append({"role": "system", "content": settings.system_prompt.format(**fields)})
        messages.append({"role": "user", "content": settings.user_prompt.format(**fields)})
        reply = backend.complete(messages)
        new = 0
        rejected = 0
        for cand in parse_reply(reply):
            words = _word_count(cand)
            k = dedup_key(cand)
            if not (settings.min_words <= words <= settings.max_words) or not k or k in seen:
                rejected += 1
                continue
            seen.add(k)
            accepted.append(cand)
            new += 1
            if len(accepted) >= count:
                break
        log.info("landmarks %r round %d: +%d accepted, %d rejected, %d/%d", category, rounds, new, rejected,
                 len(accepted), count)
        if path is not None:
            atomic_write_json(path, {"category": category, "key": key, "descriptions": accepted})
    return accepted[:count]


def generate_landmarks(
    categories: Sequence[str],
    backend: ChatBackend,
    settings: GenerationSettings | None = None,
    *,
    cache_dir: str | Path | None = None,
) -> dict[str, list[str]]:
    """``{category: [count descriptions]}`` for every category (in the given order), one category at a time."""
    settings = settings or GenerationSettings()
    settings.validate()
    cats = [str(c) for c in categories]
    if not cats:
        raise ConfigError("landmarks.categories: no categories given (e.g. categories=[chair,table])")
    if len(set(cats)) != len(cats):
        raise ConfigError(f"landmarks.categories: duplicates in {cats}")
    return {c: generate_category(c, backend, settings, cache_dir=cache_dir) for c in cats}
