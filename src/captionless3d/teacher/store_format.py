"""Feature store format v2: constants, the manifest key, and the shard plan shared by the writers and the loader.

On-disk layout (one directory; arrays fp16 unless noted, rows L2-normalised before the cast)::

    manifest.json                        written LAST (its presence means "complete"); kind "feature_store", version 2
    prompt_emb.npy          (C, D)       prompt_template.format(category), categories in label order
    landmark_emb.npy        (L, D)       every landmark sentence, categories in label order
    landmark_labels.npy     (L,) int64   category index of each landmark
    view_emb/shard-00000.npy          (S, V, D)  renders of objects 0 .. S-1
    view_emb/shard-00001.npy          (S, V, D)  objects S .. 2S-1, ... (the last shard may be shorter)
    photo_emb/shard-XXXXX.npy         (S, K, D)  "photos" as they are (with background); K = 0 without photos
    photo_masked_emb/shard-XXXXX.npy  (S, K, D)  photo * mask on black: the paper's "w/o background" (Pix3D style)
    progress/shard-XXXXX.json         only while a build is running or was interrupted: the journal (see below)

Shard ``k`` holds objects ``[k * shard_size, min((k + 1) * shard_size, N))`` of the collection, in collection order.

Background policy (recorded in the manifest key and ``provenance``): renders are **composited on white**. ShapeNet /
ULIP renders are RGBA with a transparent background; ULIP opens them with ``PIL.convert("RGB")``, which drops alpha and
leaves whatever RGB is stored under it (usually black). A background changes CLIP embeddings, so the policy is fixed
and recorded: white, because that is the plain product-shot background ULIP-2/ShapeNet renders show when composited
and what the paper's teacher embeddings were computed on, and because our readers (``load_rgb(background=white)``) and
the synthetic world both produce it. Photos keep their background (``photo_emb``); ``photo_masked_emb`` multiplies
the photo by its mask, i.e. the background goes to **black**, exactly as the paper's Pix3D "w/o background" protocol
(``ImageChops.multiply``). The store does not composite anything itself: it records what the collection provides.

The manifest (``manifest.json``)::

    kind, version                 "feature_store", 2
    key                           what load_feature_store checks: teacher_id, collection_fingerprint, prompt_template,
                                  landmarks_hash, preprocessing (the teacher's preprocess id), background_policy
    files                         {relative path: SHA-256} for every shard and small array (per-shard checksums)
    layout                        format "sharded-npy", dtype, shard_size, num_objects, num_shards, item shapes
    provenance                    teacher_id, preprocessing, background_policy (+ why), view_angles (null when the
                                  collection has none), collection fingerprint/name, code_version, compute precision
    extra                         build statistics (images, seconds, images/s, ...)

Journal: after a shard's three arrays are written (each atomically), ``progress/shard-XXXXX.json`` is written
(atomically) with the SHA-256 of each file and the build id (a hash of the key and the layout). A shard is
*finished* when its journal entry exists, has this build's id, and its files still have those checksums. A resumed
build skips finished shards and never rewrites them; a shard whose files no longer match its journal entry is logged
(warning naming the file) and re-done. Finalisation writes the small arrays, then the manifest, then deletes
``progress/``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captionless3d.errors import DataError
from captionless3d.utils.manifest import stable_hash

MANIFEST_KIND = "feature_store"
MANIFEST_VERSION = 2
DEFAULT_PROMPT_TEMPLATE = "a point cloud model of a {}"
DEFAULT_SHARD_SIZE = 4096
BACKGROUND_POLICY = "renders composited on white; photo_masked = photo * mask on black"
BACKGROUND_POLICY_REASON = (
    "RGBA renders (ShapeNet/ULIP) have a transparent background that PIL.convert('RGB') leaves undefined (usually "
    "black); the background changes CLIP embeddings, so renders are composited on white (the plain background of "
    "ULIP-2/ShapeNet product-style renders the paper's teacher saw; our readers and the synthetic world produce "
    "it). Photos keep their background; photo_masked_emb = photo * mask (background black), the paper's Pix3D "
    "'w/o background' protocol."
)
#: per-object arrays, stored as shards ``<name>/shard-XXXXX.npy``
SHARDED_ARRAYS = ("view_emb", "photo_emb", "photo_masked_emb")
#: small arrays, stored whole as ``<name>.npy``
SMALL_ARRAYS = ("prompt_emb", "landmark_emb", "landmark_labels")
ARRAY_NAMES = SHARDED_ARRAYS + SMALL_ARRAYS
PROGRESS_DIR = "progress"
STORE_DTYPE = "float16"


def shard_file(name: str, k: int) -> str:
    """Relative path of shard ``k`` of array ``name``: ``view_emb/shard-00003.npy``."""
    return f"{name}/shard-{k:05d}.npy"


def journal_file(k: int) -> str:
    return f"{PROGRESS_DIR}/shard-{k:05d}.json"


def landmarks_hash(landmarks: Mapping[str, Sequence[str]] | None) -> str:
    return stable_hash({str(k): [str(s) for s in v] for k, v in (landmarks or {}).items()})


def resolve_landmarks(collection: Any, landmarks: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """``landmarks`` (``None``: the collection's own), restricted to and ordered by the collection's categories."""
    if landmarks is None:
        landmarks = getattr(collection, "landmarks", None) or {}
    categories = list(collection.categories)
    unknown = [k for k in landmarks if k not in categories]
    if unknown:
        raise DataError(f"landmarks: categories {unknown[:5]} are not in collection {collection.name!r}")
    return {k: [str(s) for s in landmarks[k]] for k in categories if k in landmarks}


def feature_store_key(
    collection: Any,
    teacher: Any,
    *,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    landmarks: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The manifest key that identifies a feature store (what ``load_feature_store`` checks).

    ``landmarks=None`` means the collection's own ``landmarks``, as in ``build_feature_store``. The shard size and
    the code version are *not* part of the key: they do not change the embeddings.
    """
    landmarks = resolve_landmarks(collection, landmarks)
    return {
        "teacher_id": str(teacher.id),
        "collection_fingerprint": str(collection.fingerprint),
        "prompt_template": str(prompt_template),
        "landmarks_hash": landmarks_hash(landmarks),
        "preprocessing": str(getattr(teacher, "preprocess_id", "unknown")),
        "background_policy": BACKGROUND_POLICY,
    }


@dataclass(frozen=True)
class StorePlan:
    """What a build writes: ``num_objects`` objects in shards of ``shard_size``, ``V`` views, ``K`` photos, ``D`` dims.

    ``chunk_objects``: objects encoded per step inside a shard (a chunk never straddles two shards); the chunking is
    part of the plan so that every writer (single process, resumed, any DDP rank) batches a shard identically and
    produces byte-identical files.
    """

    num_objects: int
    shard_size: int
    views: int
    photos: int
    dim: int
    chunk_objects: int
    key: Mapping[str, Any] = field(hash=False)

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise DataError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.chunk_objects < 1:
            raise DataError(f"chunk_objects must be >= 1, got {self.chunk_objects}")

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_objects / self.shard_size)

    def shard_range(self, k: int) -> tuple[int, int]:
        """Objects ``[start, stop)`` of shard ``k``."""
        if not 0 <= k < self.num_shards:
            raise IndexError(f"shard {k} out of range (store has {self.num_shards} shards)")
        start = k * self.shard_size
        return start, min(start + self.shard_size, self.num_objects)

    def bounds(self) -> list[int]:
        return [self.shard_range(k)[0] for k in range(self.num_shards)] + [self.num_objects]

    def chunks(self, k: int) -> list[tuple[int, int]]:
        """The ``[start, stop)`` object chunks of shard ``k``, in order."""
        start, stop = self.shard_range(k)
        return [(a, min(a + self.chunk_objects, stop)) for a in range(start, stop, self.chunk_objects)]

    def item_shape(self, name: str) -> tuple[int, int]:
        return (self.views if name == "view_emb" else self.photos, self.dim)

    @property
    def build_id(self) -> str:
        """Identifies what a build produces: key + layout. Journal entries of another build id are ignored.

        The chunking and batch size are deliberately left out: resuming with a smaller batch (after an out-of-memory
        error, say) keeps the finished shards; byte-identity across runs holds for equal batch settings.
        """
        return stable_hash({
            "version": MANIFEST_VERSION, "key": dict(self.key), "n": self.num_objects, "shard_size": self.shard_size,
            "views": self.views, "photos": self.photos, "dim": self.dim, "dtype": STORE_DTYPE,
        })

    def layout(self) -> dict[str, Any]:
        return {
            "format": "sharded-npy",
            "dtype": STORE_DTYPE,
            "shard_size": self.shard_size,
            "num_objects": self.num_objects,
            "num_shards": self.num_shards,
            "sharded_arrays": {name: list(self.item_shape(name)) for name in SHARDED_ARRAYS},
            "shard_file_pattern": "{array}/shard-{index:05d}.npy",
        }


def shard_bounds(layout: Mapping[str, Any]) -> list[int]:
    """Row bounds ``[0, S, 2S, ..., N]`` of a manifest ``layout``."""
    n, size = int(layout["num_objects"]), int(layout["shard_size"])
    return list(range(0, n, size)) + [n]


def store_paths(directory: Path, name: str, num_shards: int) -> list[Path]:
    return [directory / shard_file(name, k) for k in range(num_shards)]


__all__ = [
    "ARRAY_NAMES",
    "BACKGROUND_POLICY",
    "BACKGROUND_POLICY_REASON",
    "DEFAULT_PROMPT_TEMPLATE",
    "DEFAULT_SHARD_SIZE",
    "MANIFEST_KIND",
    "MANIFEST_VERSION",
    "SHARDED_ARRAYS",
    "SMALL_ARRAYS",
    "StorePlan",
    "feature_store_key",
    "journal_file",
    "landmarks_hash",
    "resolve_landmarks",
    "shard_bounds",
    "shard_file",
]
