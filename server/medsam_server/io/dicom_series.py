"""The DICOM series a label volume was drawn on: its instances, slice by slice.

DICOM SEG and RTSTRUCT must reference the images they were drawn on (their SOP instances,
Frame of Reference and study). ``source_series`` reads the headers of the series that
``volumes.read_volume`` read from a folder (the same largest series) and puts each instance
at the k index its Image Position (Patient) has on the volume's grid, so slice k of a label
volume is known to lie on instance ``instances[k]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .volumes import Volume, VolumeError

NOT_A_SERIES = ("DICOM SEG and RTSTRUCT must reference the images they were drawn on: give "
                "the folder of the DICOM series as the input")


@dataclass
class SourceSeries:
    """The instances of a series in the volume's k order, and the volume they make."""

    folder: Path
    instances: list  # pydicom Datasets without pixel data, instances[k] = slice k
    volume: Volume
    notes: list[str]  # what had to be filled in from the files' own meta information

    @property
    def first(self):  # noqa: ANN201 - a pydicom Dataset
        return self.instances[0]


def source_series(path: str | os.PathLike, volume: Volume) -> SourceSeries:
    """Headers of the DICOM series in folder ``path`` that ``volume`` was read from."""
    import pydicom

    p = Path(path)
    if not p.is_dir():
        raise VolumeError(f"{p}: {NOT_A_SERIES}")
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
    if not series_ids:
        raise VolumeError(f"{p}: {NOT_A_SERIES}")
    files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), s) for s in series_ids),
                key=len)
    datasets = [pydicom.dcmread(name, stop_before_pixels=True) for name in files]
    instances = place_on_slices(datasets, volume, str(p))
    frames = {str(ds.get("FrameOfReferenceUID", "")) for ds in instances}
    if len(frames) != 1 or "" in frames:
        raise VolumeError(f"{p}: the series needs one Frame of Reference UID, has {frames}")
    return SourceSeries(p, instances, volume, _complete(instances))


def place_on_slices(datasets: list, volume: Volume, where: str) -> list:
    """``datasets`` in k order: each instance's Image Position (Patient) must fall on its own
    slice of ``volume``'s grid and every slice must have one, so a missing slice or uneven
    slice spacing (which ITK's series reader only warns about) is refused, naming ``where``.
    """
    image = volume.image_like()
    slices = volume.array.shape[0]
    by_k: dict[int, object] = {}
    for ds in datasets:
        position = [float(v) for v in ds.ImagePositionPatient]
        k = image.TransformPhysicalPointToContinuousIndex(position)[2]
        if abs(k - round(k)) > 0.01 or not 0 <= round(k) < slices or round(k) in by_k:
            raise VolumeError(f"{ds.filename}: lies at k = {k:.2f}, not on a slice of {where}'s "
                              "volume (missing, repeated or unevenly spaced slices)")
        by_k[int(round(k))] = ds
    if sorted(by_k) != list(range(slices)):
        raise VolumeError(f"{where}: {len(by_k)} instances for {slices} slices")
    return [by_k[k] for k in range(slices)]


def _complete(instances: list) -> list[str]:
    """Fill identifiers some anonymisers blank, from what the files themselves state.

    SOP Class/Instance UID equal the file meta's Media Storage ones (PS3.10 7.1). A blank
    Study or Series Instance UID gets one derived from the Frame of Reference UID, so every
    export of the same series shares it; the user is told, since readers group by them.
    """
    from pydicom.uid import generate_uid

    notes = []
    for ds in instances:
        meta = getattr(ds, "file_meta", None)
        for field, meta_field in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                  ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(field, "")) and meta is not None and meta.get(meta_field):
                setattr(ds, field, meta.get(meta_field))
        if not str(ds.get("SOPInstanceUID", "")) or not str(ds.get("SOPClassUID", "")):
            raise VolumeError(f"{ds.filename}: no SOP Class/Instance UID to reference")
    frame = str(instances[0].FrameOfReferenceUID)
    for field, what in (("StudyInstanceUID", "study"), ("SeriesInstanceUID", "series")):
        values = {str(ds.get(field, "")) for ds in instances}
        if values == {""}:
            uid = generate_uid(entropy_srcs=[frame, str(instances[0].get("StudyInstanceUID", "")),
                                             what])
            for ds in instances:
                setattr(ds, field, uid)
            notes.append(f"the source series has no {what} instance UID (anonymised?); the "
                         f"export references {uid}, derived from its Frame of Reference UID")
        elif len(values) != 1:
            raise VolumeError(f"{instances[0].filename}: the instances have {len(values)} "
                              f"different {what} UIDs")
    return notes


def index_to_patient(volume: Volume, ijk: np.ndarray) -> np.ndarray:
    """(N, 3) continuous (i, j, k) indices → (N, 3) LPS patient coordinates in mm."""
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    spacing = np.asarray(volume.spacing, dtype=float)
    return np.asarray(volume.origin, dtype=float) + (ijk * spacing) @ direction.T
