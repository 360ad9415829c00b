"""``segment --format dicom-seg|rtstruct``: the result as DICOM objects that reference the
series it was drawn on (SEG through highdicom, RTSTRUCT on pydicom; see io/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..engine import ObjectSpec
from ..io.dicom_series import NOT_A_SERIES, SourceSeries
from ..io.volumes import VolumeError

FORMATS = ("dicom-seg", "rtstruct")


def dicom_format(args: argparse.Namespace) -> str | None:
    """The DICOM format asked for (None: a label file); cheap checks of the names first."""
    out = Path(args.output)
    dcm = out.name.lower().endswith(".dcm")
    if args.format is None:
        if dcm:
            raise VolumeError(f"{out}: a .dcm output needs --format dicom-seg or --format "
                              "rtstruct")
        return None
    if not dcm:
        raise VolumeError(f"{out}: --format {args.format} writes a DICOM file: name it .dcm")
    if not Path(args.input).is_dir():
        raise VolumeError(f"{args.input}: {NOT_A_SERIES}")
    if not out.parent.is_dir():
        raise VolumeError(f"{out}: output folder {out.parent} does not exist")
    return str(args.format)


def write_dicom(fmt: str, out: Path, labels: np.ndarray, source: SourceSeries,
                specs: list[ObjectSpec], checkpoint: str, *, quiet: bool) -> None:
    from .. import __version__
    from ..io.dicom_seg import export_objects, write_seg
    from ..io.rtstruct import write_rtstruct

    objects, notes = export_objects(specs)
    writer = write_seg if fmt == "dicom-seg" else write_rtstruct
    notes += writer(out, labels, source, objects, version=__version__, checkpoint=checkpoint)
    if not quiet:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
