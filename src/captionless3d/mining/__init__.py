"""Hard-negative mining priors (paper §3-§6): I2I and (I2L)² per-category matrices and the :class:`PriorStore`."""
from captionless3d.mining.priors import i2i_prior, i2l2_prior, i2l_profiles, mean_view_embedding
from captionless3d.mining.store import DEFAULT_DELTA, PRIOR_KINDS, PriorStore, resolve_options

__all__ = [
    "DEFAULT_DELTA",
    "PRIOR_KINDS",
    "PriorStore",
    "i2i_prior",
    "i2l2_prior",
    "i2l_profiles",
    "mean_view_embedding",
    "resolve_options",
]
