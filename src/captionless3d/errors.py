"""The project's own exception types.

Every error a user can cause (bad path, bad file, bad config value, stale cache) is raised as one of these, with a
message that names the file or config key and the problem. Tests assert on these types, never on bare exceptions from
deep inside torch or numpy.
"""
from __future__ import annotations


class Captionless3DError(Exception):
    """Base class of every error captionless3d raises on purpose."""


class ConfigError(Captionless3DError, ValueError):
    """A configuration value is missing, unknown or out of range. The message names the config key."""


class DataError(Captionless3DError, ValueError):
    """An input file or array is missing, unreadable or malformed. The message names the file or object id."""


class CacheError(Captionless3DError):
    """A cache/artefact on disk is corrupt or does not match what the run expects (manifest mismatch)."""


class CheckpointError(Captionless3DError):
    """A checkpoint is missing, corrupt, or incompatible (wrong keys, teacher dimension, format version)."""


class NumericalError(Captionless3DError, FloatingPointError):
    """A NaN/Inf appeared in a loss or embedding. The message names the step and the object ids."""
