"""Readers of the real data sets; each returns a :class:`ReaderCollection` (the ShapeCollection attributes of
docs/architecture.md). One module per format; see each module's docstring for the on-disk layout it expects."""
from captionless3d.data.readers.base import LazyArray, ReaderCollection
from captionless3d.data.readers.modelnet40 import read_modelnet40
from captionless3d.data.readers.nocaptions import export_nocaptions, load_nocaptions_priors, read_nocaptions
from captionless3d.data.readers.openshape import read_openshape, read_openshape_modelnet40
from captionless3d.data.readers.pix3d import read_pix3d
from captionless3d.data.readers.scanobjectnn import read_scanobjectnn
from captionless3d.data.readers.ulip_shapenet import read_ulip_objaverse, read_ulip_shapenet

__all__ = [
    "LazyArray", "ReaderCollection", "export_nocaptions", "load_nocaptions_priors", "read_modelnet40",
    "read_nocaptions", "read_openshape", "read_openshape_modelnet40", "read_pix3d", "read_scanobjectnn",
    "read_ulip_objaverse", "read_ulip_shapenet",
]
