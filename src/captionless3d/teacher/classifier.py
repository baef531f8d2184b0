"""Zero-shot text classifiers: one L2-normalised text embedding per class, averaged over prompt templates.

The maths is OpenCLIP's ``open_clip.build_zero_shot_classifier``, for any :class:`~captionless3d.teacher.base.Teacher`:
embed every ``(class, template)`` text, L2-normalise each embedding, take the mean over the templates of a class, and
L2-normalise the mean. (OpenCLIP returns the transpose, ``(D, C)``; this module returns ``(C, D)``.)

Templates:

- ``"single"``: the paper's one template, ``"a point cloud model of a {}"`` (no period;
  :data:`captionless3d.teacher.features.DEFAULT_PROMPT_TEMPLATE`);
- ``"openai_imagenet"`` (80 templates) and ``"simple_imagenet"`` (7): the lists OpenCLIP ships in
  ``open_clip.zero_shot_metadata`` (``OPENAI_IMAGENET_TEMPLATES``, ``SIMPLE_IMAGENET_TEMPLATES``), converted from
  ``lambda c: f"..."`` to ``"...{}..."`` format strings;
- a single format string containing ``{}`` (e.g. ``"a photo of a {}."``);
- any sequence of format strings and/or callables ``str -> str``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from captionless3d.errors import ConfigError, DataError
from captionless3d.teacher.base import Teacher, l2_normalise
from captionless3d.teacher.features import DEFAULT_PROMPT_TEMPLATE

Template = str | Callable[[str], str]

_SENTINEL = "\x00class\x00"


def _as_format_string(template: Callable[[str], str], where: str) -> str:
    """``lambda c: f"a photo of a {c}."`` -> ``"a photo of a {}."`` (checked to give the same text)."""
    text = template("{}")
    if text.replace("{}", _SENTINEL) != template(_SENTINEL) or text.count("{}") != 1:
        raise ConfigError(f"{where}: template {template!r} cannot be written as a '{{}}' format string")
    return text


def _openclip_sets() -> dict[str, list[str]]:
    from open_clip import zero_shot_metadata as meta

    return {
        "openai_imagenet": [_as_format_string(t, "OPENAI_IMAGENET_TEMPLATES") for t in meta.OPENAI_IMAGENET_TEMPLATES],
        "simple_imagenet": [_as_format_string(t, "SIMPLE_IMAGENET_TEMPLATES") for t in meta.SIMPLE_IMAGENET_TEMPLATES],
    }


#: Named template sets: name -> list of ``"{}"`` format strings.
TEMPLATE_SETS: dict[str, list[str]] = {"single": [DEFAULT_PROMPT_TEMPLATE], **_openclip_sets()}


def template_set(templates: str | Sequence[Template]) -> list[Template]:
    """Resolve a template-set name, one ``"{}"`` format string, or a sequence of templates to a list of templates.

    Raises:
        ConfigError: an unknown name (the message lists the known ones), an empty list, a format string without
            exactly one ``{}``, or an item that is neither a string nor a callable.
    """
    if isinstance(templates, str):
        if templates in TEMPLATE_SETS:
            return list(TEMPLATE_SETS[templates])
        if "{}" not in templates:
            raise ConfigError(
                f"templates: unknown template set {templates!r}; known sets: {', '.join(sorted(TEMPLATE_SETS))} "
                "(or give a format string with '{}', or a list of them)"
            )
        templates = [templates]
    out = list(templates)
    if not out:
        raise ConfigError("templates: the template list is empty")
    for t in out:
        if isinstance(t, str):
            if t.count("{}") != 1:
                raise ConfigError(f"templates: {t!r} must contain exactly one '{{}}' for the class name")
        elif not callable(t):
            raise ConfigError(f"templates: {t!r} is neither a format string nor a callable")
    return out


def zero_shot_classifier(
    teacher: Teacher,
    classnames: Sequence[str],
    templates: str | Sequence[Template] = "single",
    *,
    batch_size: int = 256,
    progress: bool | None = None,
) -> torch.Tensor:
    """Class embeddings ``(C, D)`` float32 (CPU), rows L2-normalised, averaged over ``templates`` (module doc).

    Args:
        teacher: any :class:`~captionless3d.teacher.base.Teacher`; its ``encode_texts`` returns normalised rows.
        classnames: the ``C`` class names, in label order (row ``c`` is class ``c``).
        templates: a set name (:data:`TEMPLATE_SETS`), one ``"{}"`` format string, or a sequence of templates.
        batch_size: texts per ``encode_texts`` batch (all ``C x T`` texts are embedded in these batches).

    Raises:
        DataError: no class names (or a single string instead of a list).
        ConfigError: bad templates (see :func:`template_set`).
    """
    if isinstance(classnames, str):
        raise DataError("zero_shot_classifier expects a list of class names, got a single string")
    classnames = [str(c) for c in classnames]
    if not classnames:
        raise DataError("zero_shot_classifier: no class names")
    temps = template_set(templates)
    texts = [t.format(c) if isinstance(t, str) else str(t(c)) for c in classnames for t in temps]
    emb = l2_normalise(teacher.encode_texts(texts, batch_size=batch_size, progress=progress))
    emb = emb.reshape(len(classnames), len(temps), -1).mean(dim=1)
    return l2_normalise(emb)


__all__ = ["TEMPLATE_SETS", "template_set", "zero_shot_classifier"]
