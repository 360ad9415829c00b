"""Names and codes of segmented structures (SNOMED CT, as DICOM CID 7150/7151 and Slicer's
terminology use them), and RT ROI interpreted types.

An object's code comes from its prompts entry (``"code"``) when given; otherwise common
structure names (TG-263 spellings such as ``Liver``, ``Kidney_L``, ``Lung_R``, and
TotalSegmentator's ``kidney_left``) are looked up here; anything else gets the generic
tissue code, and the caller says so. Codes are never invented: each one below is the
SNOMED CT concept DICOM's segmentation context groups use for that structure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANATOMY = ("123037004", "SCT", "Anatomical Structure")
TISSUE = ("85756007", "SCT", "Tissue")

# normalised name -> SNOMED CT type (value, meaning); category Anatomical Structure
_TYPES: dict[str, tuple[str, str]] = {
    "liver": ("10200004", "Liver"),
    "spleen": ("78961009", "Spleen"),
    "kidney": ("64033007", "Kidney"),
    "kidney_l": ("18639004", "Left kidney"),
    "kidney_r": ("9846003", "Right kidney"),
    "heart": ("80891009", "Heart"),
    "lung": ("39607008", "Lung"),
    "lung_l": ("44029006", "Left lung"),
    "lung_r": ("3341006", "Right lung"),
    "aorta": ("15825003", "Aorta"),
    "pancreas": ("15776009", "Pancreas"),
    "stomach": ("69695003", "Stomach"),
    "gallbladder": ("28231008", "Gallbladder"),
    "bladder": ("89837001", "Urinary bladder"),
    "esophagus": ("32849002", "Esophagus"),
    "brain": ("12738006", "Brain"),
    "spinalcord": ("2748008", "Spinal cord"),
    "prostate": ("41216001", "Prostate"),
    "rectum": ("34402009", "Rectum"),
    "colon": ("71854001", "Colon"),
    "duodenum": ("38848004", "Duodenum"),
    "trachea": ("44567001", "Trachea"),
    "adrenal": ("23451007", "Adrenal gland"),
}
_ALIASES = {"urinary_bladder": "bladder", "spinal_cord": "spinalcord", "oesophagus": "esophagus",
            "gall_bladder": "gallbladder", "adrenal_gland": "adrenal"}
RT_TYPES = ("ORGAN", "PTV", "CTV", "GTV", "AVOIDANCE", "EXTERNAL", "CAVITY", "CONTROL",
            "TREATED_VOLUME", "IRRAD_VOLUME", "BOLUS", "MARKER", "REGISTRATION", "ISOCENTER",
            "CONTRAST_AGENT", "SUPPORT", "FIXATION", "DOSE_REGION")


@dataclass(frozen=True)
class StructureCode:
    category: tuple[str, str, str]  # (value, scheme, meaning)
    type: tuple[str, str, str]
    known: bool  # False: the generic tissue code, nothing better was known


def _normalise(name: str) -> str:
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    key = re.sub(r"_(left|lt)$", "_l", re.sub(r"_(right|rt)$", "_r", key))
    return _ALIASES.get(key, key)


def code_for(name: str, given: dict | None = None) -> StructureCode:
    """The code of a structure: ``given`` (``{"category": [value, scheme, meaning],
    "type": [...]}``, e.g. from Slicer's terminology), else the table, else generic tissue."""
    if given is not None:
        try:
            cat, typ = (tuple(str(v) for v in given[k]) for k in ("category", "type"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{name}: code needs category and type as [value, scheme, "
                             f"meaning] ({exc})") from None
        if len(cat) != 3 or len(typ) != 3 or not all(cat + typ):
            raise ValueError(f"{name}: code category and type are [value, scheme, meaning]")
        return StructureCode(cat, typ, True)  # type: ignore[arg-type]
    found = _TYPES.get(_normalise(name))
    if found is None:
        return StructureCode(TISSUE, TISSUE, False)
    return StructureCode(ANATOMY, (found[0], "SCT", found[1]), True)


def rt_type_for(given: str | None) -> str:
    """RT ROI Interpreted Type: the given one (checked against DICOM's defined terms) or ORGAN."""
    if not given:
        return "ORGAN"
    value = given.strip().upper()
    if value not in RT_TYPES:
        raise ValueError(f"rt_type {given!r} is not one of {', '.join(RT_TYPES)}")
    return value
