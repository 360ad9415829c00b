"""Slice-view geometry: which slice of the image a view shows, and boxes/points on it.

Pure numpy. The input is a 4x4 matrix mapping a slice view's XY pixel coordinates
(z = 0, the displayed plane) to *array* coordinates of the image the model sees:
continuous (i, j, k) with voxel centres at integers and 0 at the first voxel of the
array (the MRML layer folds the image's extent start and any parent transform in).

The server names slices by the numpy axis of the array ``a[k, j, i]`` and gives
in-slice coordinates as x = column, y = row:
  axis k: a[k]        rows j, columns i   -> (x, y) = (i, j)
  axis j: a[:, j, :]  rows k, columns i   -> (x, y) = (i, k)
  axis i: a[:, :, i]  rows k, columns j   -> (x, y) = (j, k)
Boxes are normalised (min/max per axis), so a flipped or permuted volume gives the
same box as an identity one for the same voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

AXES = ("k", "j", "i")  # numpy order of the image array
IJK_COLUMN = {"i": 0, "j": 1, "k": 2}  # which ijk component each axis is
# (column, row) ijk components of a slice along each axis
IN_PLANE = {"k": ("i", "j"), "j": ("i", "k"), "i": ("j", "k")}
# A view counts as aligned when the slice index drifts by less than this many voxels
# across the whole view (and likewise for in-plane rotation).
MAX_DRIFT_VOXELS = 0.5


class GeometryError(ValueError):
    """A view or a drawing that cannot become a prompt; the message says why and what to do."""


@dataclass(frozen=True)
class SliceFrame:
    """The slice a view shows: axis, index and the XY -> array matrix it came from."""

    axis: str
    index: int
    xy_to_array: np.ndarray  # 4x4

    def to_slice_xy(self, xy: Sequence[float]) -> tuple[float, float]:
        """A view pixel -> (x, y) on the slice in voxel units (unclipped)."""
        ijk = self.xy_to_array @ np.array([xy[0], xy[1], 0.0, 1.0])
        col, row = IN_PLANE[self.axis]
        return float(ijk[IJK_COLUMN[col]]), float(ijk[IJK_COLUMN[row]])


def view_slice(xy_to_array: np.ndarray, view_size: Sequence[float],
               shape: Sequence[int]) -> SliceFrame:
    """Find the array axis a view is normal to and the slice it shows.

    ``view_size``: the view's width and height in pixels (the drift check spans it);
    ``shape``: the image array's shape (k, j, i). Raises GeometryError for an oblique
    or in-plane rotated view, and for a view whose plane lies outside the image.
    """
    m = np.asarray(xy_to_array, dtype=float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise GeometryError("the view's coordinate transform is not a finite 4x4 matrix")
    span = np.abs(m[:3, 0]) * max(view_size[0], 1.0) + np.abs(m[:3, 1]) * max(view_size[1], 1.0)
    normal = [c for c in range(3) if span[c] < MAX_DRIFT_VOXELS]
    if len(normal) != 1:
        raise GeometryError(
            "this view is not aligned with the volume's slices (oblique or rotated), so a "
            "box here is not on one slice. Use 'Rotate to volume plane' in the view's pin "
            "menu, or draw in a view aligned with the volume.")
    c_norm = normal[0]
    axis = AXES[2 - c_norm]
    col, row = IN_PLANE[axis]
    # In-plane: screen x must run along one in-plane axis only, and y along the other.
    for screen in (0, 1):
        size = max(view_size[screen], 1.0)
        along = sorted((abs(m[IJK_COLUMN[a], screen]) * size for a in (col, row)), reverse=True)
        if along[1] >= MAX_DRIFT_VOXELS:
            raise GeometryError(
                "this view is rotated within the slice plane, so a box drawn on the screen "
                "is not a box on the image. Use 'Rotate to volume plane' in the view's pin "
                "menu, or reset the view's orientation.")
    centre = m @ np.array([view_size[0] / 2.0, view_size[1] / 2.0, 0.0, 1.0])
    index = int(np.floor(centre[c_norm] + 0.5))
    n = int(shape[AXES.index(axis)])
    if not 0 <= index < n:
        raise GeometryError(
            f"this view shows slice {index} along axis {axis}, outside the source volume "
            f"(0..{n - 1}); scroll into the volume first")
    return SliceFrame(axis, index, m)


def slice_shape(shape: Sequence[int], axis: str) -> tuple[int, int]:
    """(rows, columns) of a slice along ``axis`` of an array of ``shape`` (k, j, i)."""
    k, j, i = (int(v) for v in shape)
    return {"k": (j, i), "j": (k, i), "i": (k, j)}[axis]


def box_on_slice(frame: SliceFrame, p0: Sequence[float], p1: Sequence[float],
                 shape: Sequence[int], min_size: float = 1.0) -> tuple[float, float, float, float]:
    """The (x0, y0, x1, y1) box, in voxel units of the slice, of a rectangle drawn p0 -> p1.

    All four corners are mapped (the screen may show the slice flipped or transposed),
    the box is their bounding box clipped to the slice (voxel centres 0..n-1, MedSAM2's
    convention for boxes derived from masks). Raises GeometryError for a box that is
    outside the image or smaller than ``min_size`` voxels.
    """
    corners = [(p0[0], p0[1]), (p1[0], p0[1]), (p0[0], p1[1]), (p1[0], p1[1])]
    pts = np.array([frame.to_slice_xy(c) for c in corners])
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    rows, cols = slice_shape(shape, frame.axis)
    if x1 < 0 or y1 < 0 or x0 > cols - 1 or y0 > rows - 1:
        raise GeometryError("the box is outside the source volume; draw it over the image")
    cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
    cx1, cy1 = min(x1, cols - 1.0), min(y1, rows - 1.0)
    if cx1 - cx0 < min_size or cy1 - cy0 < min_size:
        raise GeometryError("the box is too small: drag to draw a box around the structure")
    return float(cx0), float(cy0), float(cx1), float(cy1)


def point_on_slice(frame: SliceFrame, xy: Sequence[float],
                   shape: Sequence[int]) -> tuple[float, float]:
    """A clicked view pixel as (x, y) on the slice; GeometryError when off the image."""
    x, y = frame.to_slice_xy(xy)
    rows, cols = slice_shape(shape, frame.axis)
    if not (-0.5 <= x <= cols - 0.5 and -0.5 <= y <= rows - 0.5):
        raise GeometryError("the point is outside the source volume; click on the image")
    return min(max(x, 0.0), cols - 1.0), min(max(y, 0.0), rows - 1.0)


def slice_index_to_array(axis: str, index: int, x: float, y: float) -> tuple[float, float, float]:
    """(x, y) on slice ``index`` along ``axis`` -> array (i, j, k) coordinates."""
    ijk = [0.0, 0.0, 0.0]
    col, row = IN_PLANE[axis]
    ijk[IJK_COLUMN[col]] = float(x)
    ijk[IJK_COLUMN[row]] = float(y)
    ijk[IJK_COLUMN[axis]] = float(index)
    return ijk[0], ijk[1], ijk[2]


def take_slice(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """View of slice ``index`` along ``axis`` of a (k, j, i) array, rows/columns as above."""
    return np.take(volume, index, axis=AXES.index(axis))


def slice_region(axis: str, index: int) -> tuple[slice | int, ...]:
    """Index expression selecting one slice of a (k, j, i) array (assignable)."""
    region: list[slice | int] = [slice(None)] * 3
    region[AXES.index(axis)] = index
    return tuple(region)
