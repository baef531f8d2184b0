"""Landmark importers (JSON, plain text, the paper's descriptions.py never executed), taxonomy, entry point."""
import json
import subprocess
import sys

import pytest

from captionless3d.errors import DataError
from captionless3d.landmarks import load_landmarks, parse_python_landmarks, parse_text_landmarks, save_landmarks
from captionless3d.landmarks.io import apply_taxonomy, load_taxonomy

PAPER_STYLE = '''"""Landmarks."""
import os
os.system("touch SHOULD_NOT_EXIST")
raise SystemExit("executed!")
descriptions = {
    "02691156": ["A commercial twin-engine jet.", "A vintage biplane."],
    "03001627": ["A rocking chair.",
                 "A swivel office chair."],  # comment
    "04379243": ["A round dining table."],
}
'''


def test_python_dict_is_parsed_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "descriptions.py"
    path.write_text(PAPER_STYLE)
    out = load_landmarks(path)
    assert out["03001627"] == ["A rocking chair.", "A swivel office chair."] and len(out) == 3
    assert not (tmp_path / "SHOULD_NOT_EXIST").exists()
    named = load_landmarks(path, taxonomy={"02691156": "airplane", "03001627": "chair"})
    assert list(named) == ["airplane", "chair", "04379243"]


@pytest.mark.parametrize("src,match", [
    ("descriptions = {'a': [__import__('os').getcwd()]}", "not a plain literal"),
    ("descriptions = build()", "not a plain literal"),
    ("other = {'a': ['x']}", "no top-level assignment to 'descriptions'"),
    ("descriptions = {'a': 'not a list'}", "expected a list"),
    ("descriptions = {", "not valid Python"),
])
def test_python_dict_rejects(src, match):
    with pytest.raises(DataError, match=match):
        parse_python_landmarks(src)


def test_text_format(tmp_path):
    text = ("table: a round pedestal dining table\ntable:  a  glass coffee table\n\n# chair\na swivel office chair\na "
            "rocking chair: curved runners\n## lamp\na desk lamp\n")
    out = parse_text_landmarks(text)
    assert out == {
        "table": ["a round pedestal dining table", "a glass coffee table"],
        "chair": ["a swivel office chair", "a rocking chair: curved runners"],
        "lamp": ["a desk lamp"],
    }
    p = tmp_path / "lm.txt"
    p.write_text(text)
    assert load_landmarks(p) == out
    with pytest.raises(DataError, match=r":1: expected"):
        parse_text_landmarks("no category here\n# chair\nx")


def test_json_roundtrip_and_errors(tmp_path):
    data = {"chair": ["a chair with arms", "ein Stuhl – mit Lehne"], "table": ["a table"]}
    save_landmarks(tmp_path / "lm.json", data)
    assert load_landmarks(tmp_path / "lm.json") == data
    (tmp_path / "bad.json").write_text('{"chair": [1, 2]}')
    with pytest.raises(DataError, match="non-string"):
        load_landmarks(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text("[")
    with pytest.raises(DataError, match="invalid JSON"):
        load_landmarks(tmp_path / "bad2.json")
    with pytest.raises(DataError, match="unknown landmark format"):
        load_landmarks(tmp_path / "lm.csv")


def test_taxonomy_formats_and_merge(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps([{"synsetId": "04401088", "name": "telephone,telephone set"},
                                                 {"synsetId": "02992529", "name": "telephone"}]))
    tax = load_taxonomy(tmp_path / "t.json")
    assert tax == {"04401088": "telephone", "02992529": "telephone"}
    merged = apply_taxonomy({"04401088": ["a landline phone", "a phone"], "02992529": ["a smartphone", "a phone"]}, tax)
    assert merged == {"telephone": ["a landline phone", "a phone", "a smartphone"]}
    (tmp_path / "t2.json").write_text('{"03001627": "chair"}')
    assert load_taxonomy(tmp_path / "t2.json") == {"03001627": "chair"}
    (tmp_path / "t3.json").write_text("[1, 2]")
    with pytest.raises(DataError):
        load_taxonomy(tmp_path / "t3.json")


def test_entry_point_import(tmp_path):
    (tmp_path / "descriptions.py").write_text(PAPER_STYLE)
    (tmp_path / "tax.json").write_text('{"03001627": "chair", "04379243": "table"}')
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "captionless3d.landmarks", f"import_from={tmp_path / 'descriptions.py'}",
         f"taxonomy={tmp_path / 'tax.json'}",
         "categories=[chair,table]", f"out={out}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == {"chair": ["A rocking chair.", "A swivel office chair."],
                                           "table": ["A round dining table."]}
    assert not (tmp_path / ".hydra").exists() and not (tmp_path / "SHOULD_NOT_EXIST").exists()


def test_configs_compose():
    from hydra import compose, initialize_config_dir

    from captionless3d.hydra_utils import CONFIG_DIR
    from captionless3d.landmarks.__main__ import settings_from_config

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("landmarks", overrides=["categories=[chair,table]"])
        assert cfg.llm.backend == "openai" and list(cfg.categories) == ["chair", "table"]
        s = settings_from_config(cfg)
        s.validate()
        assert s.count == 128 and "{existing}" in s.user_prompt
        assert compose("landmarks", overrides=["llm=hf_local"]).llm.backend == "hf_local"
