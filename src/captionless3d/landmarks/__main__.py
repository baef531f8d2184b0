"""``python -m captionless3d.landmarks``: generate or import landmarks and write ``{category: [descriptions]}`` JSON.

Generate (``configs/landmarks.yaml`` + ``configs/llm/{openai,hf_local}.yaml``)::

    export CAPTIONLESS3D_LLM_API_KEY=...
    python -m captionless3d.landmarks categories=[chair,table] llm=openai out=landmarks.json
    python -m captionless3d.landmarks categories=[chair] llm=openai llm.base_url=http://localhost:8000/v1 llm.model=qwen

Import / convert (no LLM)::

    python -m captionless3d.landmarks import_from=data/descriptions.py taxonomy=taxonomy.json out=landmarks.json
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from captionless3d.errors import Captionless3DError, ConfigError
from captionless3d.hydra_utils import CONFIG_DIR
from captionless3d.landmarks import build_backend
from captionless3d.landmarks.generate import GenerationSettings, generate_landmarks
from captionless3d.landmarks.io import apply_taxonomy, load_landmarks, load_taxonomy, save_landmarks

log = logging.getLogger("captionless3d.landmarks")


def settings_from_config(cfg: DictConfig) -> GenerationSettings:
    prompt = cfg.get("prompt") or {}
    val = cfg.get("validation") or {}
    defaults = GenerationSettings()
    return GenerationSettings(
        count=int(cfg.get("count", defaults.count)),
        per_request=int(val.get("per_request", defaults.per_request)),
        max_rounds=int(val.get("max_rounds", defaults.max_rounds)),
        min_words=int(val.get("min_words", defaults.min_words)),
        max_words=int(val.get("max_words", defaults.max_words)),
        system_prompt=str(prompt.get("system", defaults.system_prompt) or ""),
        user_prompt=str(prompt.get("user", defaults.user_prompt)),
        existing_header=str(prompt.get("avoid_header", defaults.existing_header)),
        existing_max=int(prompt.get("avoid_max", defaults.existing_max)),
    )


def run_landmarks(cfg: DictConfig) -> dict[str, Any]:
    """Generate or import; write ``cfg.out``. Returns ``{category: count}``."""
    out = Path(str(cfg.out))
    taxonomy = load_taxonomy(cfg.taxonomy) if cfg.get("taxonomy") else {}
    if cfg.get("import_from"):
        data = load_landmarks(str(cfg.import_from), taxonomy=taxonomy or None)
        cats = [taxonomy.get(str(c), str(c)) for c in (cfg.get("categories") or [])]
        if cats:
            missing = [c for c in cats if c not in data]
            if missing:
                raise ConfigError(f"categories: {missing} not found in {cfg.import_from} (has {sorted(data)[:10]}...)")
            data = {c: data[c] for c in cats}
    else:
        cats = [taxonomy.get(str(c), str(c)) for c in (cfg.get("categories") or [])]
        if not cats:
            raise ConfigError("categories: give the categories to generate, "
                              "e.g. categories=[chair,table] (or import_from=<file>)")
        llm_cfg = OmegaConf.to_container(cfg.llm, resolve=True)
        backend = build_backend(llm_cfg)
        log.info("generating %d landmarks for %d categories with %s", int(cfg.count), len(cats), backend.id)
        data = generate_landmarks(cats, backend, settings_from_config(cfg), cache_dir=cfg.get("cache_dir"))
        data = apply_taxonomy(data, {})
    save_landmarks(out, data)
    summary = {c: len(v) for c, v in data.items()}
    log.info("wrote %s: %s", out, summary)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="landmarks")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run_landmarks(cfg)
    except Captionless3DError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
