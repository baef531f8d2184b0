"""Manifests: a JSON file next to every cache directory that says what produced it.

A cache directory ``d`` is *complete* only if ``d/manifest.json`` exists; the manifest is written last, atomically,
after all payload files. It records a format ``version``, the ``key`` fields that identify the inputs (teacher id,
data fingerprint, config hash, ...) and per-file SHA-256 checksums. :func:`load_manifest` verifies all of that and
raises :class:`CacheError` naming the directory and the mismatching field, so a stale cache is never used silently.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from captionless3d.errors import CacheError
from captionless3d.utils.atomic import atomic_write_json

MANIFEST_NAME = "manifest.json"


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of a JSON-serialisable object, independent of dict key order."""
    payload = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:length]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(
    directory: str | os.PathLike,
    *,
    kind: str,
    version: int,
    key: Mapping[str, Any],
    files: Iterable[str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``directory/manifest.json`` last, after the payload ``files`` (names relative to ``directory``)."""
    directory = Path(directory)
    checksums = {}
    for name in sorted(files):
        path = directory / name
        if not path.is_file():
            raise CacheError(f"cannot write manifest for {directory}: payload file {name} is missing")
        checksums[name] = file_sha256(path)
    manifest = {"kind": kind, "version": version, "key": dict(key), "files": checksums, "extra": dict(extra or {})}
    atomic_write_json(directory / MANIFEST_NAME, manifest)
    return manifest


def load_manifest(
    directory: str | os.PathLike,
    *,
    kind: str,
    version: int,
    key: Mapping[str, Any] | None = None,
    verify_checksums: bool = True,
) -> dict[str, Any]:
    """Read and verify ``directory/manifest.json``.

    Raises :class:`CacheError` if the manifest is missing or unreadable, the kind/version differ, any ``key`` field
    differs from the expected one (the message lists each differing field with both values), a payload file is
    missing, or (with ``verify_checksums``) a payload file's checksum differs (a corrupt or half-written file).
    """
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise CacheError(f"{directory}: no {MANIFEST_NAME}; the cache is incomplete (an interrupted build?)")
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict):
        raise CacheError(f"{path}: manifest is not a JSON object")
    if manifest.get("kind") != kind:
        raise CacheError(f"{path}: manifest kind is {manifest.get('kind')!r}, expected {kind!r}")
    if manifest.get("version") != version:
        raise CacheError(f"{path}: format version {manifest.get('version')!r}, this code reads version {version}")
    if key is not None:
        stored = manifest.get("key", {})
        diffs = [
            f"{name}: cache has {stored.get(name)!r}, run expects {value!r}"
            for name, value in key.items()
            if _normalise(stored.get(name)) != _normalise(value)
        ]
        if diffs:
            raise CacheError(f"{path}: stale cache, manifest does not match this run: " + "; ".join(diffs))
    for name, checksum in manifest.get("files", {}).items():
        payload = directory / name
        if not payload.is_file():
            raise CacheError(f"{directory}: payload file {name} listed in the manifest is missing")
        if verify_checksums and file_sha256(payload) != checksum:
            raise CacheError(f"{payload}: checksum mismatch, the file is corrupt or was modified after the manifest")
    return manifest


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def load_cache_arrays(
    directory: str | os.PathLike,
    *,
    kind: str,
    version: int,
    files: Iterable[str],
    expected_key: Mapping[str, Any] | None = None,
    required_key_fields: Iterable[str] = (),
    verify_checksums: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a cache directory's manifest, then read its ``.npy`` payload (no pickles).

    Returns ``(manifest key, {file name: array})``. Raises :class:`CacheError` for a stale/missing manifest, a key
    that lacks one of ``required_key_fields``, or an unreadable file (naming it).
    """
    import numpy as np

    directory = Path(directory)
    manifest = load_manifest(directory, kind=kind, version=version, key=expected_key, verify_checksums=verify_checksums)
    key = manifest.get("key", {})
    missing = [field for field in required_key_fields if field not in key]
    if missing:
        raise CacheError(f"{directory}: manifest key lacks {missing}")
    arrays = {}
    for name in files:
        try:
            arrays[name] = np.load(directory / name, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise CacheError(f"{directory / name}: unreadable ({type(exc).__name__}: {exc})") from exc
    return key, arrays
