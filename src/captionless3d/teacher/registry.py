"""One entry point for every teacher backend: ``create(backend, ...)``.

Configs name it as their factory, e.g. ``configs/teacher/hf_clip.yaml``::

    factory:
      _target_: captionless3d.teacher.registry.create
      backend: hf
      name_or_path: openai/clip-vit-base-patch32

Backends (the keyword arguments are the backend factory's own):

- ``"openclip"``: :func:`captionless3d.teacher.openclip.create_teacher` (``model_name``, ``pretrained``, ...);
- ``"hf"``: :func:`captionless3d.teacher.hf_clip.create_hf_clip_teacher` (``name_or_path``, ``revision``, ...),
  needs the ``hf`` extra (``transformers``);
- ``"synthetic"``: :func:`captionless3d.teacher.synthetic.ensure_synthetic_teacher` (the collection first).

Backend modules are imported only when used, so ``transformers`` is never imported for an OpenCLIP teacher.
"""
from __future__ import annotations

import importlib
from typing import Any

from captionless3d.errors import ConfigError

#: backend name -> "module:function" of its factory.
TEACHER_BACKENDS: dict[str, str] = {
    "openclip": "captionless3d.teacher.openclip:create_teacher",
    "hf": "captionless3d.teacher.hf_clip:create_hf_clip_teacher",
    "synthetic": "captionless3d.teacher.synthetic:ensure_synthetic_teacher",
}


def create(backend: str, *args: Any, **kwargs: Any) -> Any:
    """Build a teacher with the factory of ``backend`` (``args``/``kwargs`` are passed on unchanged).

    Raises:
        ConfigError: ``backend`` is not one of :data:`TEACHER_BACKENDS` (the message lists them).
    """
    target = TEACHER_BACKENDS.get(str(backend))
    if target is None:
        raise ConfigError(
            f"teacher.factory.backend: unknown teacher backend {backend!r}; known backends: "
            f"{', '.join(TEACHER_BACKENDS)}"
        )
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)(*args, **kwargs)


__all__ = ["TEACHER_BACKENDS", "create"]
