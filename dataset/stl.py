"""STL meshes (binary and ASCII) as vertex arrays: all MulSen-AD needs of a point cloud file.

The Dinomaly2 preview code reads them with open3d's ``read_triangle_mesh`` followed by
``remove_duplicated_vertices``; this reader gives the same vertices (open3d keeps the
first occurrence of each exact duplicate, so do we) without the 100 MB dependency.
"""
from __future__ import annotations

import os
import struct

import numpy as np

from .errors import DatasetError

_HEADER = 80
_BINARY_FACET = np.dtype([("normal", "<f4", 3), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])


def _binary_triangles(data: bytes) -> np.ndarray | None:
    """``N × 3 × 3`` float32 triangles if ``data`` is a well-formed binary STL, else None."""
    if len(data) < _HEADER + 4:
        return None
    (count,) = struct.unpack_from("<I", data, _HEADER)
    if len(data) != _HEADER + 4 + count * _BINARY_FACET.itemsize:
        return None
    facets = np.frombuffer(data, dtype=_BINARY_FACET, count=count, offset=_HEADER + 4)
    return facets["vertices"].copy()


def _ascii_triangles(data: bytes, path: str) -> np.ndarray:
    """``N × 3 × 3`` float64 triangles of an ASCII STL (``solid … facet … vertex x y z …``)."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        raise DatasetError(f"cannot read mesh {path}: neither a binary STL (its size does not match "
                           "its triangle count) nor ASCII — replace or remove this file") from e
    words = text.split()
    if not words or words[0].lower() != "solid":
        raise DatasetError(f"cannot read mesh {path}: not an STL file (no binary triangle count that "
                           "fits its size, no 'solid' line) — replace or remove this file")
    coords: list[float] = []
    for k, word in enumerate(words):
        if word.lower() == "vertex":
            try:
                coords.extend(float(w) for w in words[k + 1:k + 4])
            except ValueError as e:
                raise DatasetError(f"cannot read mesh {path}: a 'vertex' line without three numbers "
                                   f"({' '.join(words[k:k + 4])!r}) — replace or remove this file") from e
    if len(coords) % 9:
        raise DatasetError(f"cannot read mesh {path}: {len(coords) // 3} vertices is not a whole number "
                           "of triangles — replace or remove this file")
    return np.asarray(coords, dtype=np.float64).reshape(-1, 3, 3)


def read_stl(path: str | os.PathLike) -> np.ndarray:
    """The triangles of an STL file, ``N × 3 × 3`` (triangle, corner, xyz): binary (float32
    values) or ASCII (float64). Errors name the file."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read mesh {path}: {e.strerror or e} — check the Pointcloud folder") from e
    triangles = _binary_triangles(data)
    if triangles is None:  # an ASCII file starting with 'solid' can never pass the size test by chance
        triangles = _ascii_triangles(data, path)
    return triangles


def stl_vertices(path: str | os.PathLike) -> np.ndarray:
    """The distinct vertices of an STL mesh, ``V × 3`` float64, in order of first appearance
    (open3d's ``read_triangle_mesh`` + ``remove_duplicated_vertices``)."""
    corners = read_stl(path).reshape(-1, 3).astype(np.float64)
    if len(corners) == 0:
        return corners
    _, first = np.unique(corners, axis=0, return_index=True)
    return corners[np.sort(first)]
