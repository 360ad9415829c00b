"""Write label volumes as DICOM RTSTRUCT, the contours radiotherapy planning systems read.

Written on pydicom, not through a library: rt-utils (the usual one) is unmaintained since
2023 and writes decimal strings longer than DICOM's 16 characters, which planning systems
reject; highdicom has no RTSTRUCT writer. What this writes is checked in the tests by
Plastimatch (SlicerRT's engine) converting it back, and by dciodvfy.

Contours: per slice, scikit-image's ``find_contours`` at level 0.5 on the mask padded by
one voxel, so every island and every hole is a closed polygon through the midpoints between
inside and outside voxel centres. Each island is one CLOSED_PLANAR contour. A hole is joined
to the island around it by a zero-width "keyhole" cut (the polygon runs in along a bridge,
around the hole, and back out), because readers disagree on separate hole contours:
Plastimatch ORs a slice's contours by default (``--xor-contours`` to XOR them) and fills
such holes, while others use the even-odd rule. A keyhole polygon means the same under
both rules. One ROI per object, ROI Generation Algorithm SEMIAUTOMATIC (a person placed the
prompts, the model drew).
"""

from __future__ import annotations

import datetime
import os
import secrets
from pathlib import Path

import numpy as np

from .dicom_seg import ALGORITHM_NAME, ExportObject, check_names, present
from .dicom_series import SourceSeries, index_to_patient
from .volumes import VolumeError

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# Referenced SOP Class of a study in RT Referenced Study Sequence (PS3.3 C.8.8.5)
STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.1"
MAX_DS = 16


def decimal_string(value: float) -> str:
    """A DICOM DS of at most 16 characters (0.1 µm resolution for patient coordinates)."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if len(text) > MAX_DS:
        text = f"{value:.10g}"[:MAX_DS]
    return text


def slice_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D mask as (N, 2) (column, row) voxel coordinates (no repeat of
    the first point): one per island, its holes joined to it by keyhole cuts."""
    from skimage.measure import find_contours

    padded = np.pad(mask2d.astype(np.uint8), 1)
    rings = []
    for c in find_contours(padded, 0.5):
        c = c[:-1] if np.allclose(c[0], c[-1]) else c
        if len(c) >= 3:
            rings.append(c[:, ::-1] - 1.0)  # (row, col) -> (col, row), unpad
    return _join_holes(rings)


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _join_holes(rings: list[np.ndarray]) -> list[np.ndarray]:
    """Islands (even nesting depth) with each hole (odd depth) spliced into its parent."""
    from skimage.measure import points_in_poly

    lo = [r.min(axis=0) for r in rings]
    hi = [r.max(axis=0) for r in rings]

    def inside(i: int, j: int) -> bool:  # ring i within ring j (bounding boxes first: cheap)
        if i == j or (lo[i] < lo[j]).any() or (hi[i] > hi[j]).any():
            return False
        return bool(points_in_poly(rings[i][:1], rings[j])[0])

    contains = [[inside(i, j) for j in range(len(rings))] for i in range(len(rings))]
    depth = [sum(row) for row in contains]
    holes_of: dict[int, list[int]] = {i: [] for i in range(len(rings)) if depth[i] % 2 == 0}
    for h in (i for i in range(len(rings)) if depth[i] % 2):
        parents = [j for j in holes_of if contains[h][j] and depth[j] == depth[h] - 1]
        holes_of[min(parents, key=lambda j: _area(rings[j]))].append(h)
    return [_keyhole(rings[i], [rings[h] for h in hs]) if hs else rings[i]
            for i, hs in holes_of.items()]


def _keyhole(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """One polygon: along ``outer``; at the vertex nearest each hole, in along a zero-width
    bridge, once around the hole, and back out to the same vertex."""
    from scipy.spatial import cKDTree

    tree = cKDTree(outer)
    at: dict[int, list[np.ndarray]] = {}
    for hole in holes:
        dist, nearest = tree.query(hole)
        b = int(np.argmin(dist))
        at.setdefault(int(nearest[b]), []).append(np.concatenate([hole[b:], hole[:b + 1]]))
    parts = []
    start = 0
    for a in sorted(at):
        parts.append(outer[start:a + 1])
        for loop in at[a]:
            parts += [loop, outer[a:a + 1]]
        start = a + 1
    parts.append(outer[start:])
    return np.concatenate(parts)


def write_rtstruct(path: str | os.PathLike, labels: np.ndarray, source: SourceSeries,
                   objects: list[ExportObject], *, version: str, checkpoint: str) -> list[str]:
    """Write the RTSTRUCT file; returns notes for the user (objects left out)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ImplicitVRLittleEndian, generate_uid

    check_names(objects)
    kept, notes = present(labels, objects)
    notes = source.notes + notes
    first = source.first
    now = datetime.datetime.now()
    sop_uid = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    # Implicit VR: Contour Data of a long contour passes the 64 KB that an explicit-VR DS
    # element can hold (pydicom would then write it as UN, which readers reject)
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = RT_STRUCTURE_SET_STORAGE, sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
                    "StudyID", "AccessionNumber"):
        setattr(ds, keyword, first.get(keyword, ""))
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(getattr(first, "SeriesNumber", 0) or 0) + 1001
    ds.SeriesDescription = "MedSAM2 structures"
    ds.OperatorsName = ""
    ds.Manufacturer, ds.ManufacturerModelName = "MedSAMSegment", ALGORITHM_NAME
    ds.SoftwareVersions = version
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.StructureSetLabel = ALGORITHM_NAME
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime

    def image_ref(instance: Dataset) -> Dataset:
        ref = Dataset()
        ref.ReferencedSOPClassUID = instance.SOPClassUID
        ref.ReferencedSOPInstanceUID = instance.SOPInstanceUID
        return ref

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = first.SeriesInstanceUID
    series_ref.ContourImageSequence = Sequence([image_ref(i) for i in source.instances])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = STUDY_COMPONENT_CLASS
    study_ref.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = Sequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_ref.RTReferencedStudySequence = Sequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_ref])

    rois, contours, observations = [], [], []
    for number, obj in enumerate(kept, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIName = obj.name
        roi.ROIGenerationAlgorithm = "SEMIAUTOMATIC"
        roi.ROIGenerationDescription = (f"{ALGORITHM_NAME} (medsam-server {version}, "
                                        f"checkpoint {checkpoint}) from user prompts")[:64]
        rois.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ROIDisplayColor = [round(c * 255) for c in obj.color]
        item.ContourSequence = Sequence(_contours(labels == obj.label, source, image_ref))
        contours.append(item)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = obj.rt_type
        obs.ROIInterpreter = ""
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = obj.code.type
        obs.RTROIIdentificationCodeSequence = Sequence([code])
        observations.append(obs)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    ds.ApprovalStatus = "UNAPPROVED"  # a planner reviews and approves in the planning system

    out = Path(path)
    tmp = out.parent / f".{secrets.token_hex(6)}-{out.name}"
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, out)
    except OSError as exc:
        raise VolumeError(f"{out}: cannot write the RTSTRUCT: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return notes


def _contours(mask: np.ndarray, source: SourceSeries, image_ref) -> list:  # noqa: ANN001
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    items = []
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        for poly in slice_contours(mask[k]):
            ijk = np.column_stack([poly, np.full(len(poly), float(k))])
            xyz = index_to_patient(source.volume, ijk)
            contour = Dataset()
            contour.ContourImageSequence = Sequence([image_ref(source.instances[k])])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(xyz)
            contour.ContourData = [decimal_string(v) for v in xyz.ravel()]
            items.append(contour)
    return items
