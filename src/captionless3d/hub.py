"""``captionless3d export --format hf``: a checkpoint as a directory the Hugging Face Hub can host.

The directory (layout and reader: :mod:`captionless3d.api.pretrained`) holds ``model.safetensors``, ``config.json``
and ``README.md`` (the model card with the Hub's YAML front matter). Upload it with ``huggingface_hub``::

    from huggingface_hub import HfApi
    HfApi().upload_folder(folder_path="export/avg-hf", repo_id="<org>/<name>", repo_type="model")

and load it anywhere with ``captionless3d.load("hf-hub:<org>/<name>")`` (or ``captionless3d.load("export/avg-hf")``
before uploading). The weights are the checkpoint's tensors unchanged (float32), so the loaded model's embeddings
equal the checkpoint's bit for bit (``tests/api/test_api_hub.py``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from captionless3d.api.pretrained import (
    CARD_FILE,
    CONFIG_FILE,
    PRETRAINED_FORMAT,
    PRETRAINED_FORMAT_VERSION,
    WEIGHTS_FILE,
)
from captionless3d.errors import ConfigError

#: Tags of the model card's front matter (what the Hub indexes and filters by).
CARD_TAGS = ("captionless3d", "point-cloud", "3d", "clip", "zero-shot-classification", "shape-retrieval")


def hf_config(api_model: Any) -> dict[str, Any]:
    """``config.json`` of a pretrained directory: :func:`captionless3d.export.export_config` (I/O contract,
    preprocessing, architecture, teacher, provenance) plus the format tag, the file list and the full training
    config (the teacher is rebuilt from it for image / text queries) with the exporting machine's paths made
    portable (:func:`captionless3d.export.portable_config`: ``paths.cache_dir`` becomes ``./.cache``, so
    ``captionless3d.load(..., cache_dir=...)`` re-roots the caches as for a checkpoint)."""
    from captionless3d.export import export_config, machine_paths, portable_config
    from captionless3d.version import __version__

    config = export_config(api_model)
    config.update(
        format=PRETRAINED_FORMAT,
        format_version=PRETRAINED_FORMAT_VERSION,
        library="captionless3d",
        library_version=__version__,
        files={"weights": WEIGHTS_FILE, "card": CARD_FILE},
        training_config=portable_config(api_model.config, machine_paths(api_model)),
    )
    return config


def hf_model_card(api_model: Any) -> str:
    """``README.md``: the Hub front matter (library, tags) + how to load + :func:`captionless3d.export.model_card`."""
    from huggingface_hub import ModelCard, ModelCardData

    from captionless3d.export import model_card

    data = ModelCardData(library_name="captionless3d", tags=list(CARD_TAGS))
    usage = f"""
## Load

```python
import captionless3d
model = captionless3d.load("hf-hub:<org>/<name>")    # this repository; or a local copy of this directory
model.encode_points("chair.ply")                       # (1, {api_model.teacher_dim}) float32, L2-normalised
model.classify("chair.ply", labels=["chair", "table", "lamp"])
```

Image and text queries use the teacher `{api_model.teacher_id}`, rebuilt from `training_config.teacher` in
`config.json` (for a synthetic-world teacher: pass `cache_dir=` the training cache). `config.json` records the
training run's resolved config with its `paths.*` as the project's default relative directories (`./.cache`,
`./outputs`, `./data`); `cache_dir=` re-roots everything under `./.cache`.
"""
    body = model_card(api_model, [WEIGHTS_FILE, CONFIG_FILE])
    title, _, rest = body.partition("\n")
    text = f"---\n{data.to_yaml()}\n---\n\n{title}\n{usage}{rest}"
    return str(ModelCard(text))  # parses the front matter back: a malformed card fails here, not on the Hub


def export_hf(checkpoint: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Write the pretrained directory of ``checkpoint`` into ``out`` (created; the three files are replaced).

    Args:
        checkpoint: anything :func:`captionless3d.load` takes (a training checkpoint, usually).
        out: the directory to write.

    Returns:
        ``{"files": [paths written], "seconds": wall time}``.

    Raises:
        ConfigError: ``safetensors`` / ``huggingface_hub`` missing, or ``out`` is a file.
        CheckpointError: the checkpoint cannot be loaded.
    """
    try:
        from safetensors.torch import save
    except ImportError as exc:
        raise ConfigError("export --format hf needs safetensors and huggingface_hub: pip install "
                          "'captionless3d[hub]'") from exc
    from captionless3d.api import load
    from captionless3d.utils.atomic import atomic_write_bytes

    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export --out {out}: exists and is not a directory")
    api_model = load(checkpoint)
    state = {k: v.detach().cpu().contiguous() for k, v in api_model.encoder.state_dict().items()}
    config = hf_config(api_model)
    # "format": "pt" is the header entry transformers / the Hub's safetensors viewer expect for PyTorch tensors
    metadata = {"format": "pt", "captionless3d": PRETRAINED_FORMAT, "teacher_id": api_model.teacher_id}
    card = hf_model_card(api_model)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS_FILE, save(state, metadata=metadata))
    atomic_write_bytes(out / CONFIG_FILE, (json.dumps(config, indent=1) + "\n").encode("utf-8"))
    atomic_write_bytes(out / CARD_FILE, card.encode("utf-8"))
    return {"files": [str(out / f) for f in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)],
            "seconds": round(time.perf_counter() - started, 2)}


__all__ = ["CARD_TAGS", "export_hf", "hf_config", "hf_model_card"]
