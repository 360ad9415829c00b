"""numpy masks <-> vtkOrientedImageData on the source image grid (MRML layer).

Masks travel as boolean (k, j, i) arrays indexed like the source image's voxel array
(index 0 = the image's extent start). Writes crop to the mask's bounding box so a
small structure in a large volume costs little.
"""

from __future__ import annotations

import numpy as np
import slicer
from vtk.util import numpy_support

from .views import array_shape


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The smallest (k, j, i) slices holding every True voxel; None when empty."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=other))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return box[0], box[1], box[2]


def to_oriented_image(values: np.ndarray, reference: slicer.vtkOrientedImageData,
                      region: tuple[slice, slice, slice] | None = None) -> slicer.vtkOrientedImageData:
    """A uint8 image on ``reference``'s grid holding ``values`` (the region's voxels).

    ``values`` has the shape of ``region`` (or of the whole reference when None).
    """
    ext = reference.GetExtent()
    shape = array_shape(reference)
    if region is None:
        region = (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    k, j, i = region
    expected = (k.stop - k.start, j.stop - j.start, i.stop - i.start)
    if tuple(values.shape) != expected:
        raise ValueError(f"values of shape {values.shape} do not fill region {expected}")
    image = slicer.vtkOrientedImageData()
    image.SetSpacing(reference.GetSpacing())
    image.SetOrigin(reference.GetOrigin())
    image.CopyDirections(reference)
    image.SetExtent(ext[0] + i.start, ext[0] + i.stop - 1, ext[2] + j.start, ext[2] + j.stop - 1,
                    ext[4] + k.start, ext[4] + k.stop - 1)
    flat = np.ascontiguousarray(values, dtype=np.uint8).ravel()
    scalars = numpy_support.numpy_to_vtk(flat, deep=True,
                                         array_type=numpy_support.get_vtk_array_type(np.uint8))
    image.GetPointData().SetScalars(scalars)
    return image


def to_numpy_on(image: slicer.vtkOrientedImageData,
                reference: slicer.vtkOrientedImageData) -> np.ndarray:
    """Any labelmap image as a bool array on ``reference``'s voxel array (resampled if needed)."""
    out = np.zeros(array_shape(reference), dtype=bool)
    if image is None or image.GetPointData().GetScalars() is None:
        return out
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        image, reference, resampled, False, False)
    if resampled.GetPointData().GetScalars() is None:
        return out
    values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars())
    values = values.reshape(array_shape(resampled)) != 0
    ref_ext, ext = reference.GetExtent(), resampled.GetExtent()
    # place the resampled extent inside the reference's, clipping what lies outside
    lo = [max(ext[2 * a], ref_ext[2 * a]) for a in range(3)]
    hi = [min(ext[2 * a + 1], ref_ext[2 * a + 1]) for a in range(3)]
    if any(h < low for low, h in zip(lo, hi, strict=True)):
        return out
    dst = tuple(slice(lo[a] - ref_ext[2 * a], hi[a] - ref_ext[2 * a] + 1) for a in (2, 1, 0))
    src = tuple(slice(lo[a] - ext[2 * a], hi[a] - ext[2 * a] + 1) for a in (2, 1, 0))
    out[dst] = values[src]
    return out


def segment_array(segmentation_node: slicer.vtkMRMLSegmentationNode, segment_id: str,
                  reference: slicer.vtkOrientedImageData) -> np.ndarray:
    """A segment as a bool array on the reference grid (what the user painted)."""
    image = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, image)
    return to_numpy_on(image, reference)
