"""Write label volumes as DICOM SEG (through highdicom), referencing the source series.

One segment per non-empty object, with its name, recommended display colour (CIELab),
property category and type codes, algorithm identification (MedSAM2, the product version
and checkpoint, family Artificial Intelligence) and algorithm type SEMIAUTOMATIC: a person
placed the prompts and the model drew the contour. A new series in the source's study and
Frame of Reference. Empty objects are left out with a note; an export with nothing left is
refused.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dicom_series import SourceSeries
from .structure_codes import StructureCode
from .volumes import Volume, VolumeError

MAX_LO = 64  # DICOM Long String: Segment Label, ROI Name
ALGORITHM_NAME = "MedSAM2"


@dataclass(frozen=True)
class ExportObject:
    """One object to export: its label in the label volume and how DICOM describes it."""

    label: int
    name: str
    color: tuple[float, float, float]  # RGB 0..1
    code: StructureCode
    rt_type: str = "ORGAN"


def export_objects(specs: list) -> tuple[list[ExportObject], list[str]]:
    """ExportObjects of ``ObjectSpec``s with their codes (``structure_codes``), and a note for
    each name without a known code; names DICOM cannot carry are refused."""
    from .structure_codes import code_for, rt_type_for

    objects, notes = [], []
    for s in specs:
        code = code_for(s.name, s.code)
        if not code.known:
            notes.append(f"{s.name}: no code known for this name; exported as generic Tissue "
                         "(give \"code\" in the prompts file, e.g. from Slicer's terminology)")
        objects.append(ExportObject(s.label, s.name, s.color, code, rt_type_for(s.rt_type)))
    check_names(objects)
    return objects, notes


def check_names(objects: list[ExportObject]) -> None:
    """Names DICOM can carry (Long String: at most 64 characters, no backslash)."""
    for obj in objects:
        if not obj.name.strip():
            raise VolumeError(f"object {obj.label} has an empty name; DICOM needs one")
        if len(obj.name) > MAX_LO or "\\" in obj.name:
            raise VolumeError(f"object name {obj.name[:70]!r} cannot go into DICOM: at most "
                              f"{MAX_LO} characters and no backslash")


def present(labels: np.ndarray, objects: list[ExportObject]) -> tuple[list[ExportObject],
                                                                      list[str]]:
    """The objects with voxels, and a note for each one left out."""
    kept = [o for o in objects if (labels == o.label).any()]
    notes = [f"{o.name}: empty everywhere, left out of the DICOM object" for o in objects
             if o not in kept]
    if not kept:
        raise VolumeError("every object is empty: there is nothing to write to DICOM")
    return kept, notes


def write_seg(path: str | os.PathLike, labels: np.ndarray, source: SourceSeries,
              objects: list[ExportObject], *, version: str, checkpoint: str) -> list[str]:
    """Write the SEG file; returns notes for the user (objects left out)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    check_names(objects)
    kept, notes = present(labels, objects)
    notes = source.notes + notes
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence,
        version=f"medsam-server {version}, checkpoint {checkpoint}"[:MAX_LO])
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=o.name,
            segmented_property_category=hd.sr.CodedConcept(*o.code.category),
            segmented_property_type=hd.sr.CodedConcept(*o.code.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*(round(c * 255) for c in o.color)))
        for n, o in enumerate(kept, start=1)]
    # (slices, rows, columns, segments) in the source instances' order (instances[k])
    pixels = np.stack([labels == o.label for o in kept], axis=-1)
    first = source.first
    seg = hd.seg.Segmentation(
        source_images=source.instances, pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="MedSAMSegment",
        manufacturer_model_name=ALGORITHM_NAME, software_versions=version,
        device_serial_number="none", content_label="MEDSAM2",
        content_description="MedSAM2 segmentation from user prompts",
        series_description="MedSAM2 segmentation")
    out = Path(path)
    tmp = out.parent / f".{secrets.token_hex(6)}-{out.name}"
    try:
        seg.save_as(tmp)
        os.replace(tmp, out)
    except OSError as exc:
        raise VolumeError(f"{out}: cannot write the DICOM SEG: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return notes


def read_seg(path: str | os.PathLike, like: Volume) -> Volume:
    """A DICOM SEG as a label volume on ``like``'s grid (e.g. the CT's, or a reference's).

    Segment number N becomes label N (DICOM numbers segments 1, 2, ...; where segments
    overlap, the higher number wins). The SEG's frames are placed by their own geometry
    (highdicom) and resampled onto ``like`` by nearest neighbour.
    """
    import highdicom as hd
    import SimpleITK as sitk

    p = Path(path)
    try:
        seg = hd.seg.segread(p)
    except Exception as exc:  # noqa: BLE001 - pydicom/highdicom raise many kinds for bad files
        raise VolumeError(f"{p}: not a readable DICOM SEG ({exc})") from None
    labels = np.zeros(like.array.shape, dtype=np.uint8)
    for number in seg.segment_numbers:
        vol = seg.get_volume(segment_numbers=[number], combine_segments=True)
        if number > 255:
            raise VolumeError(f"{p}: segment {number} does not fit a uint8 label volume")
        affine = np.asarray(vol.affine, dtype=float)
        # highdicom's array axes are (slice, row, column); SimpleITK's index is (i, j, k) =
        # (column, row, slice), so its axis vectors are the affine's columns 2, 1, 0
        axes = affine[:3, [2, 1, 0]]
        spacing = np.linalg.norm(axes, axis=0)
        image = sitk.GetImageFromArray(np.ascontiguousarray(vol.array > 0).astype(np.uint8))
        image.SetSpacing(tuple(float(s) for s in spacing))
        image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
        image.SetDirection(tuple(float(v) for v in (axes / spacing).ravel()))
        on_grid = sitk.Resample(image, like.image_like(labels), sitk.Transform(),
                                sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        labels[sitk.GetArrayViewFromImage(on_grid) > 0] = number
    return Volume(labels, like.spacing, like.origin, like.direction, str(p))
