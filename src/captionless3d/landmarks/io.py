"""Reading and writing landmark files: ``{category: [descriptions]}``.

Formats (chosen by suffix, or ``fmt=``):

- ``.json``: ``{"chair": ["...", ...], ...}`` (what :func:`save_landmarks` and ``python -m captionless3d.landmarks``
  write).
- ``.txt`` (plain text, UTF-8): one description per line. A line ``# chair`` starts the section of category
  ``chair``; every following non-empty line is a description of it, taken verbatim (colons allowed). Before the
  first header, lines must read ``category: description`` (split at the first colon). Empty lines are ignored.
  Example::

      table: a round pedestal dining table
      # chair
      a swivel office chair with five caster wheels
      a rocking chair: curved runners and a spindle back

- ``.py``: the paper's released ``data/descriptions.py``, i.e. ``descriptions = {"02691156": [...], ...}``. The
  file is **never executed**: it is parsed with :func:`ast.parse` and only the value assigned to ``descriptions``
  (``variable=``) is evaluated with :func:`ast.literal_eval` (literals only).

A ``taxonomy`` maps keys such as ShapeNet synset ids to category names (:func:`load_taxonomy`): a mapping, a JSON
file ``{"03001627": "chair", ...}`` or ShapeNet's ``taxonomy.json`` list (``[{"synsetId", "name"}, ...]``, first
comma-separated name). Keys without an entry are kept as they are; two ids mapping to one name are merged
(de-duplicated, order kept).
"""
from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from captionless3d.errors import DataError
from captionless3d.utils.atomic import atomic_write_bytes

__all__ = [
    "load_landmarks",
    "save_landmarks",
    "parse_text_landmarks",
    "parse_python_landmarks",
    "load_taxonomy",
    "apply_taxonomy",
    "validate_landmarks",
]

FORMATS = ("json", "txt", "py")


def validate_landmarks(obj: Any, source: str = "landmarks") -> dict[str, list[str]]:
    """Check ``{str: [str, ...]}`` (DataError naming ``source``); strips whitespace, drops empty strings."""
    if not isinstance(obj, Mapping):
        raise DataError(f"{source}: expected a mapping category -> list of descriptions, got {type(obj).__name__}")
    out: dict[str, list[str]] = {}
    for key, items in obj.items():
        if not isinstance(key, (str, int)):
            raise DataError(f"{source}: category key {key!r} is not a string")
        if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)):
            raise DataError(f"{source}: category {key!r}: expected a list of strings, got {type(items).__name__}")
        bad = [x for x in items if not isinstance(x, str)]
        if bad:
            raise DataError(f"{source}: category {key!r}: non-string entries, e.g. {bad[0]!r}")
        out[str(key)] = [" ".join(x.split()) for x in items if x.strip()]
    return out


def parse_text_landmarks(text: str, source: str = "<text>") -> dict[str, list[str]]:
    """Parse the plain-text format (see the module docstring)."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            name = line.lstrip("#").strip()
            if not name:
                raise DataError(f"{source}:{lineno}: empty category header")
            current = name
            out.setdefault(current, [])
            continue
        if current is not None:
            out[current].append(" ".join(line.split()))
            continue
        cat, sep, desc = line.partition(":")
        if not sep or not cat.strip() or not desc.strip():
            raise DataError(f"{source}:{lineno}: expected '# category' or 'category: description' before the first "
                            f"header, got {line[:80]!r}")
        out.setdefault(cat.strip(), []).append(" ".join(desc.split()))
    return out


def parse_python_landmarks(text: str, variable: str = "descriptions", source: str = "<python>") -> dict[str, list[str]]:
    """The literal value of ``variable = {...}`` in Python source, without executing anything."""
    try:
        tree = ast.parse(text, filename=source)
    except SyntaxError as exc:
        raise DataError(f"{source}: not valid Python ({exc.msg}, line {exc.lineno})") from exc
    found = None
    names = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            targets = [node.target.id]
        else:
            continue
        names.extend(targets)
        if variable in targets:
            found = node.value  # the last assignment wins, as it would at run time
    if found is None:
        raise DataError(f"{source}: no top-level assignment to {variable!r} (found: {sorted(set(names))[:10]})")
    try:
        value = ast.literal_eval(found)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise DataError(f"{source}: the value of {variable!r} is not a plain literal ({type(exc).__name__}); refusing "
                        "to evaluate it") from exc
    return validate_landmarks(value, source)


def load_taxonomy(taxonomy: Mapping[str, str] | str | os.PathLike | None) -> dict[str, str]:
    """``{id: name}`` from a mapping, a JSON dict file, or ShapeNet's ``taxonomy.json`` (list of synsets)."""
    if taxonomy is None:
        return {}
    if isinstance(taxonomy, Mapping):
        return {str(k): str(v) for k, v in taxonomy.items()}
    path = Path(taxonomy)
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable taxonomy ({type(exc).__name__}: {exc})") from exc
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}
    if isinstance(data, list):
        out = {}
        for entry in data:
            if isinstance(entry, dict) and "synsetId" in entry and "name" in entry:
                out[str(entry["synsetId"])] = str(entry["name"]).split(",")[0].strip()
        if out:
            return out
    raise DataError(f"{path}: taxonomy must be a JSON object {{id: name}} or a ShapeNet taxonomy.json list")


def apply_taxonomy(landmarks: Mapping[str, list[str]], taxonomy: Mapping[str, str]) -> dict[str, list[str]]:
    """Rename keys through ``taxonomy`` (unknown keys kept); merge lists whose keys map to the same name."""
    out: dict[str, list[str]] = {}
    for key, items in landmarks.items():
        name = taxonomy.get(key, key)
        merged = out.setdefault(name, [])
        have = set(merged)
        merged.extend(x for x in items if x not in have and not have.add(x))
    return out


def load_landmarks(
    path: str | os.PathLike,
    *,
    taxonomy: Mapping[str, str] | str | os.PathLike | None = None,
    fmt: str | None = None,
    variable: str = "descriptions",
) -> dict[str, list[str]]:
    """Read a landmark file (JSON, plain text or the paper's Python dict; see the module docstring)."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown landmark format {fmt!r}; expected one of {FORMATS} (by suffix or fmt=)")
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    if fmt == "json":
        try:
            data = validate_landmarks(json.loads(text), str(path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON ({exc})") from exc
    elif fmt == "txt":
        data = parse_text_landmarks(text, str(path))
    else:
        data = parse_python_landmarks(text, variable, str(path))
    return apply_taxonomy(data, load_taxonomy(taxonomy)) if taxonomy is not None else data


def save_landmarks(path: str | os.PathLike, landmarks: Mapping[str, list[str]]) -> None:
    """Write ``{category: [descriptions]}`` as UTF-8 JSON atomically (category order kept)."""
    data = validate_landmarks(landmarks, str(path))
    atomic_write_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
