"""Hard-negative mining priors (docs/method.md, Priors): I2I and (I2L)² per-category matrices and the
:class:`PriorStore`, the label-free sparse stores, the false-negative guard, the sampler's neighbour ranking, and
:func:`~captionless3d.mining.build.ensure_prior_stores`, which builds all of a run's stores."""
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
