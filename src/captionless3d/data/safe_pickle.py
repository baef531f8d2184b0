"""Restricted unpickling for the pickled data files of the 3D ecosystem.

ULIP's ModelNet40 ``.dat`` files are pickles and OpenShape stores each shape as ``np.save`` of a Python dict (an object
``.npy``, i.e. a pickle behind an ``.npy`` header). ``pickle.load`` / ``np.load(allow_pickle=True)`` would execute any
callable a crafted file names. :class:`RestrictedUnpickler` resolves only what numpy arrays and plain containers need;
every other global is refused with a :class:`DataError` that names the file and the global.

Allowed globals:

* numpy array reconstruction: ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
  ``...multiarray.scalar``, ``numpy.core.numeric._frombuffer`` (protocol 5), ``numpy.ndarray``, ``numpy.dtype`` and the
  concrete dtype classes of ``numpy.dtypes`` (newer numpy pickles dtypes through them);
* builtins containers and literals: ``list``, ``dict``, ``tuple``, ``set``, ``frozenset``, ``bytes``, ``bytearray``,
  ``str``, ``int``, ``float``, ``bool``, ``complex``, ``slice``, ``range``, ``collections.OrderedDict``;
* ``_codecs.encode`` restricted to latin-1 (how protocol-2 pickles spell ``bytes``).
"""
from __future__ import annotations

import collections
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.errors import DataError

_NUMPY_FUNCS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}
_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float", "bool",
             "complex", "slice", "range"}


def _latin1_encode(obj: str, encoding: str = "utf-8") -> bytes:
    if encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode("latin1")


def _resolve_numpy(module: str, name: str) -> Any:
    if (module, name) in _NUMPY_FUNCS:
        # numpy 2 keeps the numpy.core names as aliases of numpy._core; resolve through the package that exists
        import importlib

        for candidate in (module.replace("numpy.core", "numpy._core"), module.replace("numpy._core", "numpy.core")):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        return None
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if module == "numpy.dtypes" and name.endswith("DType"):
        import numpy.dtypes as dtypes

        obj = getattr(dtypes, name, None)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            return obj
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that only resolves numpy-array and plain-container globals (see module docstring)."""

    def __init__(self, file: io.BufferedIOBase, *, source: str | os.PathLike = "<pickle>", **kwargs: Any) -> None:
        kwargs.setdefault("encoding", "latin1")  # python-2 pickles of numpy arrays need latin1 for their byte strings
        super().__init__(file, **kwargs)
        self.source = str(source)

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(__import__("builtins"), name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        if module.startswith("numpy"):
            obj = _resolve_numpy(module, name)
            if obj is not None:
                return obj
        raise DataError(f"{self.source}: refusing to unpickle global '{module}.{name}' (only numpy arrays and plain "
                        "containers are allowed)")

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: refusing a pickle that uses persistent ids")


def safe_loads(data: bytes, *, source: str | os.PathLike = "<bytes>") -> Any:
    return _unpickle(io.BytesIO(data), source)


def _unpickle(handle: io.BufferedIOBase, source: str | os.PathLike) -> Any:
    try:
        return RestrictedUnpickler(handle, source=source).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, OverflowError, MemoryError, ImportError) as exc:
        raise DataError(f"{source}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from exc


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; any problem is a :class:`DataError` naming the file."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    with handle:
        return _unpickle(handle, path)


def _read_npy_header(handle: io.BufferedIOBase, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(handle)  # 3.0 only differs in the header encoding
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, EOFError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: not a valid .npy file ({exc})") from exc
    return tuple(int(s) for s in shape), bool(fortran), dtype


def npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data_offset)`` of an ``.npy`` file without reading its payload."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            shape, _, dtype = _read_npy_header(handle, path)
            return shape, dtype, handle.tell()
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from exc


def check_npy_complete(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype]:
    """Check a plain (non-object) ``.npy`` file is not truncated, from its header and size. Returns (shape, dtype)."""
    path = Path(path)
    shape, dtype, offset = npy_header(path)
    if dtype.hasobject:
        return shape, dtype
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise DataError(f"{path}: truncated .npy (header says {shape} {dtype}, {expected} bytes; file has {size})")
    return shape, dtype


def safe_load_npy(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """Load any ``.npy``: plain arrays with ``allow_pickle=False``, object arrays through the restricted unpickler.

    A 0-d object array (``np.save(path, some_dict)``) is returned as the object itself (like ``.item()``).
    """
    path = Path(path)
    shape, dtype = check_npy_complete(path)
    if dtype.hasobject:
        return safe_load_npy_object(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: corrupt or truncated .npy ({exc})") from exc


def safe_load_npy_object(path: str | os.PathLike) -> Any:
    """Read an object-dtype ``.npy`` (``np.save(..., allow_pickle=True)``) without ``np.load(allow_pickle=True)``.

    Parses the ``.npy`` header, then unpickles the payload with :class:`RestrictedUnpickler` and checks it is an array
    of the header's shape. 0-d arrays are unwrapped (``.item()``); other shapes are returned as object arrays.
    """
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    with handle:
        shape, _, dtype = _read_npy_header(handle, path)
        if not dtype.hasobject:
            raise DataError(f"{path}: expected an object .npy, header says dtype {dtype}")
        array = _unpickle(handle, path)
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path}: object .npy payload is a {type(array).__name__}, not an array")
    if tuple(array.shape) != shape:
        raise DataError(f"{path}: payload shape {array.shape} does not match the header shape {shape}")
    return array.item() if array.ndim == 0 else array
