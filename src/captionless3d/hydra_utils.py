"""Helpers shared by the Hydra entry points."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import OmegaConf

from captionless3d.errors import Captionless3DError, CheckpointError, ConfigError

# configs/ sits at the repository root (design card). A wheel carries it as captionless3d/configs (setup.py); a
# source checkout or an editable install reads it at the root.
_PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
_CHECKOUT_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def find_config_dir() -> Path:
    """The configs the package runs with: inside the installed package (wheel), else the checkout's ``configs/``.
    :class:`ConfigError` when neither exists (a broken install)."""
    for candidate in (_PACKAGED_CONFIGS, _CHECKOUT_CONFIGS):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise ConfigError(f"no configs found: neither {_PACKAGED_CONFIGS} (installed package) nor {_CHECKOUT_CONFIGS} "
                      "(source checkout) holds train.yaml; reinstall captionless3d")


CONFIG_DIR = str(find_config_dir())


def _constant(name: str) -> Any:
    """``${captionless3d:<name>}`` in a config: a method constant whose one definition lives in the code."""
    if name == "prompt_template":
        from captionless3d.teacher.store_format import DEFAULT_PROMPT_TEMPLATE

        return DEFAULT_PROMPT_TEMPLATE
    if name == "delta":
        from captionless3d.mining.priors import DEFAULT_DELTA

        return DEFAULT_DELTA
    raise ConfigError(f"${{captionless3d:{name}}}: unknown constant; known: prompt_template, delta")


OmegaConf.register_new_resolver("captionless3d", _constant, replace=True)


def resolve_ckpt_path(value: str | None, run_dir: Path) -> str | None:
    """``None`` → fresh run; ``"last"`` → ``run_dir/checkpoints/last.ckpt``; else a path that must exist."""
    if value in (None, "", "null"):
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if value == "last" else Path(value)
    if not path.is_file():
        hint = (" (ckpt_path=last resumes the run in hydra.run.dir; pass hydra.run.dir=<old run dir>)"
                if value == "last" else "")
        raise CheckpointError(f"ckpt_path: checkpoint {path} does not exist{hint}")
    return str(path)


def instantiate(config: Any, *args: Any, key: str = "", **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces our own errors instead of Hydra's wrapper.

    A :class:`Captionless3DError` raised by the target (a missing checkpoint, a bad data folder) is re-raised as is;
    any other instantiation failure becomes a :class:`ConfigError` naming the config ``key`` and the target.
    """
    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, Captionless3DError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, Captionless3DError):
            raise cause from None
        target = config.get("_target_", "?") if hasattr(config, "get") else "?"
        raise ConfigError(f"{key or 'config'}: could not build {target}: {exc}") from exc
