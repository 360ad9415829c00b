"""Whole-volume segmentation of one or more objects: what ``medsam-server segment`` runs.

Objects share one session, so a slice encoded for the first object is reused by the
others. The recipe is MedSAM2's: box on the key slice, propagate both ways (each way
from a fresh memory), optional 3D largest connected component.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from .objects import ObjectSpec
from .postprocess import add_object
from .prompts import Prompt
from .session import Session, SliceResult

Recipe = Literal["box", "mask"]


def segment_objects(session: Session, specs: list[ObjectSpec], *, recipe: Recipe = "box",
                    lcc: bool = True, stop_after_empty: int = 0, direction: str = "both",
                    progress: Callable[[SliceResult], None] | None = None,
                    release_features: bool = True) -> tuple[np.ndarray, int]:
    """Segment every object; returns (uint8 label volume, voxels claimed by two objects).

    Where objects overlap the first listed keeps the voxel: nothing is overwritten.
    ``direction``: both (MedSAM2's 3D recipe, the default), or forward / backward only
    (``medsam2_infer_video.py`` propagates forward from the prompted frame).
    ``release_features=False`` keeps the session's slice features (``phases`` reuses them).
    """
    for spec in specs:  # check every prompt before spending time on the model
        session.check_prompt(spec.axis, spec.slice, spec.prompt)
    for spec in specs:
        result = session.add_prompt(spec.label, spec.axis, spec.slice, spec.prompt)
        if recipe == "mask":  # MedSAM2's alternative: feed the key-slice mask back as a mask prompt
            session.add_prompt(spec.label, spec.axis, spec.slice, Prompt(mask=result.mask))
        session.propagate(spec.label, spec.axis, direction=direction,  # type: ignore[arg-type]
                          stop_after_empty=stop_after_empty, progress=progress)
    # The model's work is done: its cached slice features (up to the cache budget, 2 GB by
    # default) go before the connected-component pass allocates its own volumes.
    if release_features:
        session.release_features()
    labels = np.zeros(session.shape, dtype=np.uint8)
    overlap = 0
    for spec in specs:
        overlap += add_object(labels, session.mask(spec.label), spec.label, lcc=lcc)
    return labels, overlap
