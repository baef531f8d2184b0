"""Readers of the real data sets; each returns a :class:`ReaderCollection` (the ShapeCollection attributes of
docs/architecture.md). One module per format; see each module's docstring for the on-disk layout it expects."""
from captionless3d.data.readers.base import LazyArray, ReaderCollection
from captionless3d.data.readers.modelnet40 import read_modelnet40
from captionless3d.data.readers.pix3d import read_pix3d
from captionless3d.data.readers.scanobjectnn import read_scanobjectnn

__all__ = ["LazyArray", "ReaderCollection", "read_modelnet40", "read_pix3d", "read_scanobjectnn"]
