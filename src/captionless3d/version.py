"""The package version (one definition; ``captionless3d.__version__`` and the cache manifests' provenance read it)."""
__version__ = "0.1.0"
