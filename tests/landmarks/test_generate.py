"""Generation rounds, validation, caching/resume and key hygiene, with the real client against the fake server."""
import json
import logging
import re
import sys
import types

import pytest
from omegaconf import OmegaConf

from captionless3d.errors import ConfigError, DataError
from captionless3d.landmarks import GenerationSettings, OpenAIChatClient, generate_landmarks, parse_reply
from captionless3d.landmarks.generate import dedup_key, generate_category

KEY = "sk-gen-SECRET-abcdef"


def client(server, **kw):
    return OpenAIChatClient(server.base_url, "fake", api_key=KEY, timeout_s=2, max_retries=1, sleep=lambda s: None,
                            **kw)


def numbered(items, start=1):
    return "Here are some descriptions:\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(items, start))


def test_parse_reply_formats():
    text = ('1. A tall chair with arms\n2) "A low stool with three legs"\n- a bench with a backrest,\n* **Bold** chair '
            'with wheels\n• tiny chair\n(6) a rocking chair with curved runners\n```')
    assert parse_reply(text) == [
        "A tall chair with arms", "A low stool with three legs", "a bench with a backrest", "Bold chair with wheels",
        "tiny chair",
        "a rocking chair with curved runners",
    ]
    assert parse_reply('```json\n["a b c d", " e  f g h "]\n```') == ["a b c d", "e f g h"]
    assert parse_reply('{"descriptions": ["x y z w"]}') == ["x y z w"]
    assert parse_reply("Sure! Here you go:\n\nA 3D-printed chair frame") == ["A 3D-printed chair frame"]
    assert dedup_key("A  Rocking chair.") == dedup_key("a rocking CHAIR")


def test_rounds_validation_and_dedup(server):
    rounds = [
        numbered(["a swivel office chair on wheels", "A swivel office chair on  wheels.", "tiny",
                  "a folding camping chair with canvas"]),
        numbered(["a folding camping chair with canvas", "a wooden rocking chair with runners",
                  " ".join(["long"] * 50)]),
        numbered(["a beanbag chair shaped like a sack", "an armchair with thick padded arms",
                  "a spare one that is not needed"]),
    ]
    server.script = [{"body": server.reply(r)} for r in rounds]
    s = GenerationSettings(count=5, per_request=4, max_rounds=5, min_words=3, max_words=20)
    out = generate_category("chair", client(server), s)
    assert out == [
        "a swivel office chair on wheels", "a folding camping chair with canvas", "a wooden rocking chair with runners",
        "a beanbag chair shaped like a sack", "an armchair with thick padded arms",
    ]
    assert server.calls == 3
    prompts = [r["json"]["messages"][-1]["content"] for r in server.requests]
    assert "Write 4 different" in prompts[0] and "chair" in prompts[0] and "Do not repeat" not in prompts[0]
    assert "Write 3 different" in prompts[1] and "- a folding camping chair with canvas" in prompts[1]
    assert "Write 2 different" in prompts[2]
    assert server.requests[0]["json"]["messages"][0]["role"] == "system"


def test_never_enough_is_a_clear_error_and_partial_cache(server, tmp_path):
    server.script = [{"body": server.reply(numbered(["a plain table with four legs"]))}]
    s = GenerationSettings(count=3, max_rounds=4, min_words=2)
    with pytest.raises(DataError, match=r"only 1/3 .*'table' after 4 rounds"):
        generate_category("table", client(server), s, cache_dir=tmp_path)
    assert server.calls == 4
    cached = json.loads((tmp_path / "table.json").read_text())
    assert cached["descriptions"] == ["a plain table with four legs"]


def test_resume_from_cache(server, tmp_path):
    def answer(payload, index):
        n = int(re.search(r"\d+", payload["messages"][-1]["content"]).group())
        return {"body": server.reply("\n".join(f"a distinct lamp design number {index}-{i}" for i in range(n)))}

    server.script = [answer]
    s = GenerationSettings(count=4, per_request=2, min_words=3)
    first = generate_landmarks(["lamp"], client(server), s, cache_dir=tmp_path)
    assert len(first["lamp"]) == 4 and server.calls == 2
    again = generate_landmarks(["lamp"], client(server), s, cache_dir=tmp_path)
    assert again == first and server.calls == 2  # complete cache: no request
    more = generate_landmarks(["lamp"], client(server), GenerationSettings(count=5, per_request=2, min_words=3),
                              cache_dir=tmp_path)
    assert more["lamp"][:4] == first["lamp"] and server.calls == 3  # only the missing one asked for
    other = GenerationSettings(count=4, per_request=2, min_words=3,
                               user_prompt="List {count} {category} styles.{existing}")
    generate_landmarks(["lamp"], client(server), other, cache_dir=tmp_path)
    assert server.calls == 5  # another prompt: the cache does not apply


def test_key_never_in_logs_or_files(server, tmp_path, monkeypatch, caplog):
    from captionless3d.landmarks.__main__ import run_landmarks

    monkeypatch.setenv("CAPTIONLESS3D_LLM_API_KEY", KEY)
    server.script = [
        {"status": 500, "body": {"error": f"echo {KEY}"}},
        {"body": server.reply(numbered([f"a {w} cabinet with two doors" for w in ("tall", "short", "wide")]))},
        {"body": server.reply(numbered([f"a {w} sofa with soft cushions" for w in ("long", "corner", "small")]))},
    ]
    cfg = OmegaConf.create({
        "categories": ["cabinet", "sofa"], "import_from": None, "taxonomy": None,
        "out": str(tmp_path / "out" / "lm.json"),
        "cache_dir": str(tmp_path / "cache"), "count": 3,
        "llm": {"backend": "openai", "base_url": server.base_url, "model": "fake",
                "api_key_env": ["CAPTIONLESS3D_LLM_API_KEY"],
                "max_retries": 2, "backoff_base_s": 0.01, "timeout_s": 2},
        "validation": {"per_request": 3, "max_rounds": 3, "min_words": 3, "max_words": 20},
    })
    with caplog.at_level(logging.DEBUG):
        summary = run_landmarks(cfg)
    assert summary == {"cabinet": 3, "sofa": 3}
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    out = json.loads((tmp_path / "out" / "lm.json").read_text())
    assert list(out) == ["cabinet", "sofa"] and out["sofa"][0] == "a long sofa with soft cushions"
    assert KEY not in caplog.text and "retry" in caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path


def test_settings_validation(server):
    with pytest.raises(ConfigError, match="prompt.user"):
        GenerationSettings(user_prompt="Write about {thing}").validate()
    with pytest.raises(ConfigError, match="category"):
        GenerationSettings(user_prompt="Write {count}").validate()
    with pytest.raises(ConfigError, match="min_words"):
        GenerationSettings(min_words=10, max_words=5).validate()
    with pytest.raises(ConfigError, match="categories"):
        generate_landmarks([], client(server))


def test_hf_local_missing_transformers(monkeypatch):
    from captionless3d.landmarks import build_backend

    monkeypatch.setitem(sys.modules, "transformers", None)  # import -> ImportError
    with pytest.raises(ConfigError, match="transformers"):
        build_backend({"backend": "hf_local", "model": "some/model"})


def test_hf_local_with_a_fake_transformers(monkeypatch):
    from captionless3d.landmarks.hf_local import HFLocalChat

    seen = {}

    def pipeline(task, **kwargs):
        seen["task"], seen["kwargs"] = task, kwargs

        def run(messages, **gen):
            seen["gen"] = gen
            return [{"generated_text": "1. a desk lamp with a flexible arm\n2. a floor lamp with a shade"}]

        return run

    fake = types.SimpleNamespace(pipeline=pipeline, set_seed=lambda s: seen.setdefault("seeds", []).append(s))
    monkeypatch.setitem(sys.modules, "transformers", fake)
    backend = HFLocalChat("tiny/model", temperature=0.5)
    out = generate_category("lamp", backend, GenerationSettings(count=2, min_words=3))
    assert out == ["a desk lamp with a flexible arm", "a floor lamp with a shade"]
    assert seen["task"] == "text-generation" and seen["kwargs"]["model"] == "tiny/model"
    assert seen["gen"]["do_sample"] and seen["gen"]["temperature"] == 0.5 and backend.id == "hf_local:tiny/model"
