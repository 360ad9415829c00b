"""AI provenance on the segments the effect writes, and what DICOM export will need.

Apply tags each segment it writes, so that Slicer's own DICOM SEG export
(``DICOMSegmentationPlugin._createSegmentData`` reads ``DICOM.SegmentAlgorithmType`` and
requires ``DICOM.SegmentAlgorithmName`` whenever the type is not MANUAL) says the contour
is AI-assisted, and the extension's own ``MedSAM2.*`` tags say with what: checkpoint and its
sha256, precision, server version and the number of prompts. Segment tags are kept by later
hand edits (the segment is still AI-assisted) and saved in ``.seg.nrrd`` files.
"""

from __future__ import annotations

from medsam_client.protocol import Info

ALGORITHM_TYPE_TAG = "DICOM.SegmentAlgorithmType"
ALGORITHM_NAME_TAG = "DICOM.SegmentAlgorithmName"
SEMIAUTOMATIC = "SEMIAUTOMATIC"  # a person placed the prompts, the model drew
ALGORITHM_NAME = "MedSAM2"
PROMPTS_TAG = "MedSAM2.Prompts"


def provenance_tags(info: Info | None, prompts: int) -> dict[str, str]:
    """The tags Apply writes; without the server's /info, only what is known here."""
    tags = {ALGORITHM_TYPE_TAG: SEMIAUTOMATIC, ALGORITHM_NAME_TAG: ALGORITHM_NAME,
            PROMPTS_TAG: str(prompts)}
    if info is not None:
        tags.update({"MedSAM2.Checkpoint": info.model,
                     "MedSAM2.CheckpointSha256": info.checkpoint_sha256,
                     "MedSAM2.Precision": info.precision or "unknown",
                     "MedSAM2.ServerVersion": info.version})
    return tags


def tag_segment(segment: object, tags: dict[str, str]) -> None:
    """``vtkSegment.SetTag`` for each tag (prompts accumulate: the latest count wins)."""
    for key, value in tags.items():
        segment.SetTag(key, value)  # type: ignore[attr-defined]


def terminology_codes(serialized: str) -> tuple[tuple[str, str, str], tuple[str, str, str]] | None:
    """(category, type) as (scheme, value, meaning) from a segment's terminology entry, the
    ``~``-separated form ``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``
    writes (context~category~type~modifier~region context~region~region modifier); None
    when the entry has no category or type code."""
    parts = (serialized or "").split("~")
    if len(parts) < 3:
        return None
    category, typ = (tuple(p.split("^")) for p in parts[1:3])
    if len(category) != 3 or len(typ) != 3 or not category[1] or not typ[1]:
        return None
    return category, typ  # type: ignore[return-value]


def export_note(serialized: str) -> str:
    """What the panel says about DICOM export of a segment ("" when nothing to say)."""
    if terminology_codes(serialized) is None:
        return ("This segment has no terminology (category and type): Slicer's DICOM export "
                "will refuse it. Double-click its colour in the segment list to choose one.")
    return ""
