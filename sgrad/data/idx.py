"""IDX files (the MNIST-family format, LeCun et al.): read with full header checks, and write."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np

from sgrad.data.errors import DatasetError

# IDX type codes (third magic byte) -> big-endian numpy dtypes.
_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
           0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {v.newbyteorder("=") if v.byteorder == ">" else v: k for k, v in _DTYPES.items()}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (optionally gzipped); a malformed file names itself in the error."""
    path = Path(path)
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read IDX file ({e}); delete it and fetch it again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        magic = raw[:4].hex() if raw else "empty file"
        raise DatasetError(f"{path}: not an IDX file (magic {magic}); delete it and fetch it again")
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header; delete it and fetch it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    # Python integers: a damaged header's dimensions can overflow any fixed-width product.
    expected = header + math.prod(dims) * dtype.itemsize
    if ndim == 0 or len(raw) != expected:
        raise DatasetError(
            f"{path}: IDX header promises shape {dims} ({expected} bytes) but the file holds "
            f"{len(raw)} bytes (truncated or corrupt); delete it and fetch it again")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` as IDX (gzipped when the name ends in .gz)."""
    path = Path(path)
    array = np.asarray(array)
    code = _CODES.get(array.dtype)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    big = array.astype(_DTYPES[code], copy=False)
    payload = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + big.tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)
