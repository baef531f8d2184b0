"""Pretrained-model directories and the Hugging Face Hub: the read side of ``captionless3d export --format hf``.

A pretrained directory (what :func:`captionless3d.hub.export_hf` writes, and what a Hub repository holds) contains

* ``model.safetensors``: the point encoder's ``state_dict`` (the :class:`~captionless3d.models.heads.PointEncoder`
  names, float32, exactly the checkpoint's tensors);
* ``config.json``: ``format`` = :data:`PRETRAINED_FORMAT`, ``format_version``, the I/O contract and preprocessing,
  ``model`` (the architecture config), ``teacher_id`` / ``embedding_dim`` / ``data_fingerprint`` / ``experiment``, and
  ``training_config`` (the checkpoint's full resolved training config, from which the teacher is rebuilt for image
  and text queries, as for a checkpoint; its paths are the project's default relative ones, ``paths.cache_dir`` =
  ``./.cache``, which ``cache_dir=`` re-roots: :func:`captionless3d.export.portable_config`);
* ``README.md``: the model card (Hub front matter + :func:`captionless3d.export.model_card`).

``captionless3d.load("hf-hub:<org>/<name>[@<revision>]")`` resolves the repository through
:func:`huggingface_hub.snapshot_download`, so the Hub cache (``HF_HUB_CACHE`` / ``HF_HOME``), offline mode
(``HF_HUB_OFFLINE=1``: only the cache is read) and tokens work as for any Hub model. ``captionless3d.load(<directory>)``
reads a local pretrained directory.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from captionless3d.errors import CheckpointError, ConfigError

#: Prefix of a Hub model reference (as OpenCLIP and timm spell it).
HF_PREFIX = "hf-hub:"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
#: The files a pretrained directory holds; a Hub download fetches only these.
PRETRAINED_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
PRETRAINED_FORMAT = "captionless3d-pretrained"
PRETRAINED_FORMAT_VERSION = 1

# <org>/<name>: the Hub's own rule for repository ids (letters, digits, '-', '_', '.'; no '--' or '..')
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_hub_reference(value: Any) -> bool:
    """Whether ``value`` is an ``hf-hub:`` model reference (a string; paths are never references)."""
    return isinstance(value, str) and value.startswith(HF_PREFIX)


def parse_hub_reference(reference: str) -> tuple[str, str | None]:
    """``"hf-hub:org/name@rev"`` -> ``("org/name", "rev")`` (revision ``None`` when absent: the default branch).

    Raises:
        ConfigError: not of the form ``hf-hub:<org>/<name>[@<revision>]``.
    """
    if not is_hub_reference(reference):
        raise ConfigError(f"{reference!r}: a Hub model reference starts with {HF_PREFIX!r}")
    body = reference[len(HF_PREFIX):]
    repo_id, _, revision = body.partition("@")
    if not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id or (revision == "" and "@" in body):
        raise ConfigError(f"{reference!r}: expected {HF_PREFIX}<org>/<name> or {HF_PREFIX}<org>/<name>@<revision>")
    return repo_id, revision or None


def resolve_hub_reference(reference: str) -> Path:
    """The local snapshot directory of a Hub model (downloaded into the Hub cache, or found there when offline).

    Raises:
        ConfigError: a malformed reference, or ``huggingface_hub`` is not installed.
        CheckpointError: the repository / revision / files cannot be found (offline and not cached, no such
            repository, no access), naming the reference and the Hub's reason.
    """
    repo_id, revision = parse_hub_reference(reference)
    try:
        from huggingface_hub import errors as hub_errors
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ConfigError(f"{reference}: loading from the Hub needs huggingface_hub: pip install "
                          "'captionless3d[hub]'") from exc
    from captionless3d.version import __version__

    expected = (hub_errors.HfHubHTTPError, hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled,
                hub_errors.HFValidationError, OSError)
    try:
        snapshot = snapshot_download(repo_id, revision=revision, allow_patterns=list(PRETRAINED_FILES),
                                     library_name="captionless3d", library_version=__version__)
    except expected as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = (" (HF_HUB_OFFLINE is set: only the local Hub cache was searched)" if offline else "")
        raise CheckpointError(f"{reference}: cannot get the model from the Hugging Face Hub{hint}: "
                              f"{type(exc).__name__}: {exc}") from exc
    return Path(snapshot)


def is_pretrained_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory with a ``config.json`` (a pretrained directory, maybe a malformed one)."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def read_pretrained_config(directory: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a pretrained directory, checked: our format, a version this code reads, and the keys a
    model needs (``model``, ``teacher_id``, ``embedding_dim``, ``n_points``, ``training_config``).

    Raises:
        CheckpointError: naming the file and the problem.
    """
    path = Path(directory) / CONFIG_FILE
    try:
        config = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable config ({type(exc).__name__}: {exc})") from exc
    if not isinstance(config, dict) or config.get("format") != PRETRAINED_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{path}: not a captionless3d pretrained config (format {found!r}, expected "
                              f"{PRETRAINED_FORMAT!r}; write one with `captionless3d export --format hf`)")
    version = config.get("format_version")
    if not isinstance(version, int) or version > PRETRAINED_FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r} is newer than this code reads "
                              f"({PRETRAINED_FORMAT_VERSION}); upgrade captionless3d")
    missing = [k for k in ("model", "teacher_id", "embedding_dim", "n_points", "training_config") if k not in config]
    if missing:
        raise CheckpointError(f"{path}: missing keys {missing}")
    return config


def read_pretrained(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The encoder weights and the model metadata of a pretrained directory.

    Returns:
        ``(state_dict, metadata)``: the tensors of ``model.safetensors`` (PointEncoder names) and a metadata dict
        shaped like a checkpoint's ``captionless3d`` entry (``teacher_id``, ``teacher_dim``, ``data_fingerprint``,
        ``experiment``, ``config`` = the training config), which :class:`~captionless3d.api.model.Captionless3DModel`
        takes.

    Raises:
        CheckpointError: unreadable / malformed config or weights, or a config that disagrees with the training
            config it carries (``n_points``).
    """
    directory = Path(directory)
    config = read_pretrained_config(directory)
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ConfigError("reading model.safetensors needs the safetensors package: pip install "
                          "'captionless3d[hub]'") from exc
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing (a pretrained directory holds {', '.join(PRETRAINED_FILES)})")
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise CheckpointError(f"{weights}: unreadable weights ({type(exc).__name__}: {exc})") from exc
    training = config["training_config"]
    if not isinstance(training, dict):
        raise CheckpointError(f"{directory / CONFIG_FILE}: training_config must be a mapping")
    # the model section of config.json is the one the weights were exported with; it wins over the training config's
    training = {**training, "model": dict(config["model"])}
    loader_points = ((training.get("data") or {}).get("loader") or {}).get("n_points")
    if loader_points != config["n_points"]:
        raise CheckpointError(f"{directory / CONFIG_FILE}: n_points {config['n_points']} differs from the training "
                              f"config's data.loader.n_points {loader_points}")
    metadata = {
        "teacher_id": str(config["teacher_id"]),
        "teacher_dim": int(config["embedding_dim"]),
        "data_fingerprint": str(config.get("data_fingerprint") or ""),
        "experiment": str(config.get("experiment") or ""),
        "config": training,
    }
    return state, metadata


__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "HF_PREFIX",
    "PRETRAINED_FILES",
    "PRETRAINED_FORMAT",
    "PRETRAINED_FORMAT_VERSION",
    "WEIGHTS_FILE",
    "is_hub_reference",
    "is_pretrained_dir",
    "parse_hub_reference",
    "read_pretrained",
    "read_pretrained_config",
    "resolve_hub_reference",
]
