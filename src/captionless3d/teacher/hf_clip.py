"""Frozen Hugging Face ``transformers`` CLIP teachers (``CLIPModel`` + its tokenizer and image processor).

Needs the optional extra ``hf`` (``pip install 'captionless3d[hf]'``, i.e. ``transformers``). Two ways to name
the weights, both ending in ``CLIPModel.from_pretrained``:

>>> create_hf_clip_teacher("openai/clip-vit-base-patch32")                  # hub name (needs the download or cache)
>>> create_hf_clip_teacher("/models/clip-vit-base-patch32")                 # a save_pretrained directory

With ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) nothing is downloaded: a hub name must already be in the
Hugging Face cache.

Teacher ids (recorded in every downstream manifest; they identify the *weights*):

- local directory: ``"hf:<directory name>:sha256:<12 hex>"``, the hash over the directory's weight files
  (``*.safetensors`` / ``pytorch_model*.bin`` and shard indices; names and contents), so re-saving other weights
  into the same directory changes the id;
- hub name: ``"hf:<name>@<commit>"``, the commit the cache/hub resolved ``revision`` to (the revision string
  itself when no commit is known).

Image preprocessing
-------------------
The model's image processor config (``preprocessor_config.json``: ``size``, ``crop_size``, ``resample``,
``rescale_factor``, ``image_mean``, ``image_std``, ``do_*``) is read once, and the steps of
``transformers``' default (torchvision-backend) ``CLIPImageProcessor`` are run as batched torch ops on the whole
uint8 batch ``(B, H, W, 3)``: ``torchvision.transforms.v2.functional.resize`` of the shortest edge (or to
``height x width``) on the uint8 tensor with antialiasing -> centre crop at ``int((H - h) / 2)`` -> float ->
``(x - mean / rescale) / (std / rescale)``. That equals the HF torchvision-backend processor to float rounding
(tested: max abs difference <= 1e-5). Against the PIL-backend processor (``CLIPImageProcessorPil``, the classic
``transformers`` < 5 behaviour) torchvision's uint8 antialiased bicubic differs from PIL's by at most one grey level
on a few pixels, and nothing differs when no resize happens (inputs already at the processor's size): tested on
random-noise and smooth images of several shapes with max abs difference <= 1 grey level (0.015 in normalised
units). On CUDA torchvision resizes in float and rounds, which may add another grey level. PIL images are converted
to RGB arrays and grouped by size, then go the same batched way. The steps are recorded in ``preprocess_id``.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captionless3d.errors import CheckpointError, ConfigError, DataError
from captionless3d.teacher.base import batch_slices, l2_normalise
from captionless3d.utils.manifest import file_sha256

log = logging.getLogger(__name__)

#: Weight files ``save_pretrained`` writes (single file or shards plus their index).
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "tf_model*.h5", "flax_model*.msgpack", "*.index.json")
#: PIL resample codes -> torchvision interpolation names supported by the batched path.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0", "false", "False")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _is_local(name_or_path: str | os.PathLike) -> bool:
    """A path (existing, absolute, or starting with ``.``/``~``) rather than a hub name such as ``org/model``."""
    if isinstance(name_or_path, os.PathLike):
        return True
    s = str(name_or_path)
    return (Path(s).expanduser().exists() or s.startswith(("/", "./", "../", "~", ".\\"))
            or (os.sep == "\\" and ":" in s))


def weights_sha256(directory: str | os.PathLike) -> str:
    """SHA-256 over the weight files of a ``save_pretrained`` directory (file names and contents, sorted).

    Raises:
        CheckpointError: the directory holds no weight file.
    """
    directory = Path(directory)
    files = sorted({p for pat in WEIGHT_PATTERNS for p in directory.glob(pat) if p.is_file()})
    if not files:
        raise CheckpointError(
            f"HF CLIP directory {directory} has no weight file (expected model.safetensors or pytorch_model.bin, "
            "as written by CLIPModel.save_pretrained)"
        )
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode("utf-8") + b"\0" + file_sha256(f).encode("ascii") + b"\n")
    return digest.hexdigest()


def create_hf_clip_teacher(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    autocast: bool = True,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> HFCLIPTeacher:
    """Load a frozen ``transformers`` CLIP teacher from a hub name or a local ``save_pretrained`` directory.

    Args:
        name_or_path: a hub repository (``"openai/clip-vit-base-patch32"``) or a directory holding ``config.json``,
            the weights, the tokenizer files and ``preprocessor_config.json``.
        revision: hub branch / tag / commit (hub names only; default the repository's default branch).
        device: where the model runs; embeddings are always returned on the CPU.
        autocast: run the forward passes under fp16 autocast on CUDA (ignored on the CPU, which runs fp32).
        local_files_only: never download; default ``True`` when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set.
        cache_dir: Hugging Face cache directory (default: the library's).

    Raises:
        ImportError: ``transformers`` is not installed (install the ``hf`` extra).
        CheckpointError: the directory is missing or not a CLIP model directory, its files are corrupt or incomplete,
            or a hub model is not available (offline and not cached, or the download failed).
        ConfigError: the model is not a CLIP model, or its image processor config is not supported.
    """
    try:
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPConfig, CLIPModel
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the Hugging Face CLIP teacher needs `transformers`: pip install 'captionless3d[hf]'"
        ) from exc

    local = _is_local(name_or_path)
    offline = _offline() if local_files_only is None else bool(local_files_only)
    if local:
        path = Path(name_or_path).expanduser()
        where = f"HF CLIP directory {path}"
        if not path.is_dir():
            raise CheckpointError(f"{where} does not exist (or is not a directory)")
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{where} is not a save_pretrained model directory: it has no config.json")
        if revision is not None:
            raise ConfigError(f"revision: {revision!r} only applies to hub names, not to the local {where}")
        source: str = str(path)
        weights_hash = weights_sha256(path)
        kwargs: dict[str, Any] = {"local_files_only": True}
    else:
        source = str(name_or_path)
        where = f"HF CLIP model {source!r}" + (f" (revision {revision})" if revision else "")
        weights_hash = ""
        kwargs = {"local_files_only": offline, "revision": revision}
        if cache_dir is not None:
            kwargs["cache_dir"] = str(cache_dir)

    def _load(what: str, fn, *args: Any, **kw: Any) -> Any:
        try:
            return fn(source, *args, **kwargs, **kw)
        except ImportError:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError, json/safetensors/torch errors from transformers
            hint = ""
            if not local:
                hint = (" It is not in the Hugging Face cache and downloads are off (HF_HUB_OFFLINE / "
                        "local_files_only)."
                        if offline else " The download failed.")
                hint += " Download it on a machine with internet access, or save_pretrained it and pass the directory."
            detail = " ".join(str(exc).split()).rstrip(".")
            raise CheckpointError(f"{where}: cannot load the {what} ({type(exc).__name__}: {detail}).{hint}") from exc

    config = _load("config", AutoConfig.from_pretrained)
    if not isinstance(config, CLIPConfig):
        raise ConfigError(
            f"{where}: model_type {getattr(config, 'model_type', '?')!r} is not a CLIP model (need model_type 'clip')"
        )
    with _quiet_transformers(errors_only=False):
        model, info = _load("weights", CLIPModel.from_pretrained, config=config, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    bad = missing + [str(m) for m in info.get("mismatched_keys", [])] + [str(e) for e in info.get("error_msgs", [])]
    if bad:
        raise CheckpointError(
            f"{where}: the weights do not fit the CLIP config (missing/mismatched: {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''}); refusing to run with randomly initialised parameters"
        )
    if local and not ((path / "tokenizer.json").is_file()
                      or {"vocab.json", "merges.txt"} <= {p.name for p in path.iterdir()}):
        # AutoTokenizer would silently build an empty-vocabulary CLIPTokenizer from config.json alone
        raise CheckpointError(f"{where}: cannot load the tokenizer: no tokenizer.json (or vocab.json + merges.txt)")
    tokenizer = _load("tokenizer", AutoTokenizer.from_pretrained)
    if len(tokenizer) > config.text_config.vocab_size:
        raise CheckpointError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the text tower only "
            f"{config.text_config.vocab_size}"
        )
    processor = _load("image processor", AutoImageProcessor.from_pretrained)

    if local:
        teacher_id = f"hf:{path.resolve().name}:sha256:{weights_hash[:12]}"
    else:
        commit = getattr(config, "_commit_hash", None) or _cached_commit(source, revision, cache_dir)
        if not commit:
            log.warning("%s: no commit hash resolved; the teacher id uses the revision %r", where, revision or "main")
        teacher_id = f"hf:{source}@{commit or revision or 'main'}"
    log.info("loaded %s (transformers %s) as %s", where, transformers.__version__, teacher_id)
    return HFCLIPTeacher(model, tokenizer, processor, teacher_id=teacher_id, device=device, autocast=autocast,
                         source=where)


def _byte_level_symbols() -> list[str]:
    """The 256 base symbols of a byte-level BPE vocabulary (GPT-2 / CLIP ``bytes_to_unicode``), in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


@contextlib.contextmanager
def _quiet_transformers(errors_only: bool = True):
    """No progress bars ("Loading weights", "Writing model shards") from transformers inside; with ``errors_only``
    no warnings either."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if errors_only:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def save_random_clip(
    directory: str | os.PathLike,
    *,
    projection_dim: int = 24,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 32,
    layers: int = 1,
    heads: int = 2,
    context_length: int = 16,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised ``CLIPModel`` with a working offline tokenizer and image processor (for tests,
    benchmarks and smoke runs; nothing is downloaded).

    The tokenizer is a byte-level ``CLIPTokenizer`` without merges (514 tokens: 256 byte symbols, the same with
    ``</w>``, ``<|startoftext|>`` = 512, ``<|endoftext|>`` = 513), so every text tokenises to its characters. The
    image processor is ``CLIPImageProcessor`` (bicubic shortest edge ``image_size`` -> centre crop, OpenAI mean/std).
    ``width``/``layers``/``heads`` are used by both towers (MLP ``4 x width``). Returns ``directory``.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    directory = Path(directory)
    symbols = _byte_level_symbols()
    vocab = {c: i for i, c in enumerate(symbols)} | {c + "</w>": 256 + i for i, c in enumerate(symbols)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    tower = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=len(vocab), max_position_embeddings=context_length, bos_token_id=512,
                         eos_token_id=513, pad_token_id=513),
        vision_config=dict(tower, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    with _quiet_transformers():
        model.save_pretrained(directory)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(directory)
    return directory


def _cached_commit(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None) -> str | None:
    """The commit of the cached snapshot that ``revision`` resolved to (``.../snapshots/<commit>/config.json``)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision)
    except Exception:  # noqa: BLE001 - an id without a commit is still usable (a warning says so)
        return None
    if isinstance(found, (str, os.PathLike)) and Path(found).parent.parent.name == "snapshots":
        return Path(found).parent.name
    return None


def _size_dict(value: Any) -> dict[str, int]:
    """``size``/``crop_size`` of an image processor (a dict, a ``SizeDict`` or an int) as a plain dict of ints."""
    if value is None:
        return {}
    if isinstance(value, int):
        return {"height": value, "width": value}
    if isinstance(value, Mapping):
        items = dict(value)
    else:
        items = {k: getattr(value, k, None) for k in ("shortest_edge", "longest_edge", "height", "width")}
    return {k: int(v) for k, v in items.items() if v is not None}


class HFCLIPTeacher:
    """A frozen ``transformers`` ``CLIPModel`` behind the :class:`~captionless3d.teacher.base.Teacher` interface.

    Attributes:
        id: identifies the weights (see the module doc); ``dim``: ``config.projection_dim``;
        image_size: the square input size of the vision tower (pixels); preprocess_id: the preprocessing steps.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        image_processor: Any,
        *,
        teacher_id: str,
        device: str | torch.device = "cpu",
        autocast: bool = True,
        source: str = "HF CLIP model",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.id = teacher_id
        self.source = source
        self.autocast = bool(autocast)
        cfg = model.config
        self.dim = int(cfg.projection_dim)
        self.image_size = int(cfg.vision_config.image_size)
        self.context_length = int(cfg.text_config.max_position_embeddings)

        p = image_processor
        where = f"{source}: preprocessor_config.json"
        self.do_resize = bool(getattr(p, "do_resize", True))
        self.size = _size_dict(getattr(p, "size", None))
        self.do_center_crop = bool(getattr(p, "do_center_crop", True))
        self.crop_size = _size_dict(getattr(p, "crop_size", None))
        resample = getattr(p, "resample", 3)
        resample = int(getattr(resample, "value", resample)) if resample is not None else 2
        if resample not in _RESAMPLE:
            raise ConfigError(f"{where}: resample={resample} is not supported (use 0 nearest, 2 bilinear, 3 bicubic)")
        self.interpolation = _RESAMPLE[resample]
        self.do_rescale = bool(getattr(p, "do_rescale", True))
        self.rescale_factor = float(getattr(p, "rescale_factor", 1 / 255))
        self.do_normalize = bool(getattr(p, "do_normalize", True))
        mean, std = getattr(p, "image_mean", None), getattr(p, "image_std", None)
        if self.do_normalize and (mean is None or std is None):
            raise ConfigError(f"{where}: do_normalize is set but image_mean/image_std are missing")
        self.mean = tuple(float(v) for v in (mean if mean is not None else (0.0, 0.0, 0.0)))
        self.std = tuple(float(v) for v in (std if std is not None else (1.0, 1.0, 1.0)))
        if self.do_resize and not ("shortest_edge" in self.size or {"height", "width"} <= set(self.size)):
            raise ConfigError(f"{where}: size={self.size} is not supported (need shortest_edge, or height and width)")
        if set(self.size) - {"shortest_edge", "height", "width"}:
            raise ConfigError(f"{where}: size={self.size} is not supported (longest_edge / max sizes)")
        if self.do_center_crop:
            if not {"height", "width"} <= set(self.crop_size):
                raise ConfigError(f"{where}: do_center_crop needs crop_size height and width, got {self.crop_size}")
            out_hw = (self.crop_size["height"], self.crop_size["width"])
            if "shortest_edge" in self.size and self.size["shortest_edge"] < max(out_hw):
                raise ConfigError(f"{where}: crop_size {out_hw} is larger than size {self.size} (padding unsupported)")
        elif "height" in self.size:
            out_hw = (self.size["height"], self.size["width"])
        else:
            raise ConfigError(f"{where}: without do_center_crop the size must be height x width to give square inputs")
        if out_hw != (self.image_size, self.image_size):
            raise ConfigError(
                f"{where}: the processor produces {out_hw[0]}x{out_hw[1]} images but the vision tower expects "
                f"{self.image_size}x{self.image_size} (config.json vision_config.image_size)"
            )
        resize = ("shortest" + str(self.size["shortest_edge"]) if "shortest_edge" in self.size
                  else f"{self.size['height']}x{self.size['width']}") if self.do_resize else "none"
        scale = self.rescale_factor if self.do_rescale else 1.0
        self.preprocess_id = (
            f"hf-clip|resize={resize}:{self.interpolation}:antialias|"
            f"centercrop={'x'.join(map(str, out_hw)) if self.do_center_crop else 'none'}|rescale={scale:.6g}"
            + (f"|mean={','.join(f'{v:.6g}' for v in self.mean)}|std={','.join(f'{v:.6g}' for v in self.std)}"
               if self.do_normalize else "|nonormalize")
        )
        # fused rescale + normalise, as the HF torchvision backend: (x - mean / scale) / (std / scale)
        if self.do_normalize:
            self._sub = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) / scale
            self._div = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) / scale
        else:
            self._sub = torch.zeros(1, 3, 1, 1, device=self.device)
            self._div = torch.full((1, 3, 1, 1), 1.0 / scale, device=self.device)

    def __repr__(self) -> str:
        return f"HFCLIPTeacher(id={self.id!r}, dim={self.dim}, image_size={self.image_size})"

    # -- images --------------------------------------------------------------------------------------------------
    def preprocess_uint8(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> normalised float32 ``(B, 3, S, S)`` on the teacher's device (module doc)."""
        from torchvision.transforms.v2 import functional as tvF

        if isinstance(batch, np.ndarray) and not batch.flags.writeable:  # read-only memmaps (torch warns)
            batch = np.array(batch)
        x = torch.as_tensor(batch).to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous()
        h, w = x.shape[-2:]
        if self.do_resize:
            if "shortest_edge" in self.size:  # transformers.image_transforms.get_resize_output_image_size
                s = self.size["shortest_edge"]
                if (h <= w and h == s) or (w <= h and w == s):
                    new_hw = (h, w)
                elif w < h:
                    new_hw = (int(s * h / w), s)
                else:
                    new_hw = (s, int(s * w / h))
            else:
                new_hw = (self.size["height"], self.size["width"])
            if new_hw != (h, w):
                x = tvF.resize(x, list(new_hw), interpolation=tvF.InterpolationMode(self.interpolation), antialias=True)
            h, w = new_hw
        if self.do_center_crop:
            ch, cw = self.crop_size["height"], self.crop_size["width"]
            if ch > h or cw > w:
                raise DataError(f"{self.source}: images of {h}x{w} px after resizing are smaller than the crop "
                                f"{ch}x{cw}")
            top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
            x = x[:, :, top : top + ch, left : left + cw]
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise DataError(
                f"{self.source}: preprocessed images are {tuple(x.shape[-2:])}, the model expects {self.image_size} px"
            )
        return (x.float() - self._sub) / self._div

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            out = self.model.get_image_features(pixel_values=pixels)
        return l2_normalise(_features(out)).cpu()

    @torch.no_grad()
    def encode_images(
        self, images: np.ndarray | Sequence, *, batch_size: int = 256, progress: bool | None = None
    ) -> torch.Tensor:
        """Embed images: uint8 ``(B, H, W, 3)`` array/tensor or a list of PIL images -> float32 ``(B, dim)``, CPU,
        L2-normalised. PIL images are converted to RGB; images of different sizes are preprocessed per size group."""
        if isinstance(images, torch.Tensor):
            images = images.cpu().numpy()
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise DataError(
                    f"encode_images expects a uint8 array (B, H, W, 3), got {images.dtype} {tuple(images.shape)}"
                )
            out = [
                self._encode_pixels(self.preprocess_uint8(images[sl]))
                for sl in batch_slices(len(images), batch_size, progress=progress, desc="encode images")
            ]
            return torch.cat(out) if out else torch.zeros(0, self.dim)
        images = list(images)
        out = []
        for sl in batch_slices(len(images), batch_size, progress=progress, desc="encode images"):
            arrays = [_to_rgb_array(im) for im in images[sl]]
            groups: dict[tuple[int, int], list[int]] = {}
            for i, a in enumerate(arrays):
                groups.setdefault(a.shape[:2], []).append(i)
            pixels = torch.empty(len(arrays), 3, self.image_size, self.image_size, device=self.device)
            for idx in groups.values():
                pixels[idx] = self.preprocess_uint8(np.stack([arrays[i] for i in idx]))
            out.append(self._encode_pixels(pixels))
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    # -- texts ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256,
                     progress: bool | None = None) -> torch.Tensor:
        """Embed texts -> float32 ``(B, dim)``, CPU, L2-normalised. Tokenised with the model's tokenizer, padded to
        the batch's longest text and truncated to the context length (the causal text tower makes padding inert)."""
        if isinstance(texts, str):
            raise DataError("encode_texts expects a list of strings, got a single string")
        texts = [str(t) for t in texts]
        out = []
        for sl in batch_slices(len(texts), batch_size, progress=progress, desc="encode texts"):
            tok = self.tokenizer(texts[sl], padding=True, truncation=True, max_length=self.context_length,
                                 return_tensors="pt")
            with self._autocast():
                feats = self.model.get_text_features(
                    input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
                )
            out.append(l2_normalise(_features(feats)).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()


def _features(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers < 5) or an output object with ``pooler_output`` (>= 5)."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    if isinstance(out, (tuple, list)) and len(out) > 1 and isinstance(out[1], torch.Tensor):
        return out[1]
    raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")


def _to_rgb_array(image: Any) -> np.ndarray:
    """A PIL image (any mode) or a uint8 ``(H, W, 3)`` array -> uint8 ``(H, W, 3)`` array."""
    if hasattr(image, "convert"):
        image = image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise DataError(f"encode_images expects PIL images or uint8 (H, W, 3) arrays, got {arr.dtype} {arr.shape}")
    return arr


__all__ = ["HFCLIPTeacher", "create_hf_clip_teacher", "save_random_clip", "weights_sha256"]
