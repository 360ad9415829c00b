"""Slice views and the source image grid (MRML layer: vtk + slicer, no Qt).

The model sees ``sourceVolumeImageData()``: the source volume on the segmentation's
grid, a vtkOrientedImageData in the segmentation's own coordinates (before the
segmentation node's parent transform). A view pixel reaches that grid as
XY -> RAS (slice node) -> segmentation coordinates (inverse parent transform) ->
image IJK (the image's world-to-image matrix) -> array index (minus the extent start).
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from .geometry import GeometryError, SliceFrame, slice_index_to_array, slice_shape, view_slice


def vtk_matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def world_to_segmentation(transform_node: slicer.vtkMRMLTransformNode | None) -> np.ndarray:
    """World RAS -> the segmentation's coordinates; a non-linear transform is refused."""
    if transform_node is None:
        return np.eye(4)
    if not transform_node.IsTransformToWorldLinear():
        raise GeometryError(
            f"the segmentation is under a non-linear transform ({transform_node.GetName()}); "
            "harden or remove it before using MedSAM2")
    m = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformFromWorld(m)
    return vtk_matrix_to_numpy(m)


def image_to_array(image: slicer.vtkOrientedImageData) -> np.ndarray:
    """The image's world (segmentation coordinates) -> array index (i, j, k) matrix."""
    m = vtk.vtkMatrix4x4()
    image.GetWorldToImageMatrix(m)
    world_to_ijk = vtk_matrix_to_numpy(m)
    ext = image.GetExtent()
    shift = np.eye(4)
    shift[:3, 3] = [-ext[0], -ext[2], -ext[4]]
    return shift @ world_to_ijk


def xy_to_array(slice_node: slicer.vtkMRMLSliceNode, image: slicer.vtkOrientedImageData,
                transform_node: slicer.vtkMRMLTransformNode | None = None) -> np.ndarray:
    """4x4: a view pixel (x, y, 0) -> continuous array index (i, j, k) of ``image``."""
    xy_to_ras = vtk_matrix_to_numpy(slice_node.GetXYToRAS())
    return image_to_array(image) @ world_to_segmentation(transform_node) @ xy_to_ras


def array_shape(image: slicer.vtkOrientedImageData) -> tuple[int, int, int]:
    """(k, j, i) shape of the image's voxel array."""
    dims = image.GetDimensions()
    return int(dims[2]), int(dims[1]), int(dims[0])


def slice_frame(slice_node: slicer.vtkMRMLSliceNode, image: slicer.vtkOrientedImageData,
                transform_node: slicer.vtkMRMLTransformNode | None = None) -> SliceFrame:
    """Which slice of the image this view shows (GeometryError if oblique or outside)."""
    dims = slice_node.GetDimensions()
    return view_slice(xy_to_array(slice_node, image, transform_node), (dims[0], dims[1]),
                      array_shape(image))


def shown_slice(slice_node: slicer.vtkMRMLSliceNode, image: slicer.vtkOrientedImageData,
                transform_node: slicer.vtkMRMLTransformNode | None = None
                ) -> tuple[str, int] | None:
    """(axis, index) of the image slice a view shows; None if it shows none (oblique,
    rotated, or outside the volume)."""
    try:
        frame = slice_frame(slice_node, image, transform_node)
    except GeometryError:
        return None
    return frame.axis, frame.index


def slice_centre_ras(image: slicer.vtkOrientedImageData, axis: str, index: int,
                     transform_node: slicer.vtkMRMLTransformNode | None = None) -> np.ndarray:
    """World RAS of the centre of slice ``index`` along ``axis`` (for jumping views there)."""
    rows, cols = slice_shape(array_shape(image), axis)
    x, y = (cols - 1) / 2.0, (rows - 1) / 2.0
    ijk = np.array([*slice_index_to_array(axis, index, x, y), 1.0])
    seg_to_world = np.linalg.inv(world_to_segmentation(transform_node))
    return (seg_to_world @ np.linalg.inv(image_to_array(image)) @ ijk)[:3]


def jump_views(slice_nodes: list[slicer.vtkMRMLSliceNode], image: slicer.vtkOrientedImageData,
               axis: str, index: int,
               transform_node: slicer.vtkMRMLTransformNode | None = None) -> int:
    """Move every view that shows slices along ``axis`` to slice ``index`` (no panning).

    Returns how many views moved; views showing another axis (or oblique) are left alone.
    """
    ras = slice_centre_ras(image, axis, index, transform_node)
    moved = 0
    for node in slice_nodes:
        try:
            frame = slice_frame(node, image, transform_node)
        except GeometryError:
            continue
        if frame.axis == axis:
            node.JumpSliceByOffsetting(float(ras[0]), float(ras[1]), float(ras[2]))
            moved += 1
    return moved
