"""3D + time (4D CT breathing phases, cardiac phases): the key phase in 3D, then along time.

The recipe: the key phase is segmented in 3D as ``segment`` does (``pipeline``); then each
axial slice (axis k) that holds a structure in the key phase is carried to the other phases
by MedSAM2's memory along time: the slice's images over the phases form a short video whose
key frame is prompted with the key phase's slice mask, propagated as ``--direction`` says.
Each (phase, slice) image is encoded once: the key phase's slice features, kept from its
3D pass, seed every time pass (unless the feature cache had to evict them).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .engine import Engine
from .objects import ObjectSpec
from .pipeline import Recipe, segment_objects
from .prompts import Prompt
from .session import Session

PhaseProgress = Callable[[int, int], None]  # (slices carried so far, slices to carry)


def segment_phases(engine: Engine, phases_u8: np.ndarray, key_phase: int,
                   specs: list[ObjectSpec], *, recipe: Recipe = "box", lcc: bool = True,
                   stop_after_empty: int = 0, direction: str = "both",
                   progress: PhaseProgress | None = None) -> tuple[np.ndarray, int]:
    """Segment ``specs`` (prompts on the key phase) in every phase of ``phases_u8``.

    ``phases_u8``: (phases, k, j, i) uint8, every phase on one grid. Returns the
    (phases, k, j, i) uint8 labels and the voxels claimed by two objects (the first listed
    keeps them, as in ``segment_objects``). The key phase's labels are its 3D result exactly
    (largest component per ``lcc``); the other phases are the time passes' masks.
    ``stop_after_empty`` applies along time too.
    """
    if phases_u8.dtype != np.uint8 or phases_u8.ndim != 4:
        raise ValueError("phases must be (phases, k, j, i) uint8")
    count = phases_u8.shape[0]
    if count < 2:
        raise ValueError("3D + time needs at least two phases")
    if not 0 <= key_phase < count:
        raise ValueError(f"key phase {key_phase} is out of range (0..{count - 1})")
    key = Session(engine, phases_u8[key_phase])
    key_labels, overlap = segment_objects(key, specs, recipe=recipe, lcc=lcc,
                                          stop_after_empty=stop_after_empty,
                                          direction=direction, release_features=False)
    out = np.zeros(phases_u8.shape, dtype=np.uint8)
    out[key_phase] = key_labels
    labels = [s.label for s in specs]
    slices = [z for z in range(key_labels.shape[0]) if key_labels[z].any()]
    for n, z in enumerate(slices):
        overlap += _carry_slice(engine, phases_u8[:, z], key, z, key_phase, key_labels[z],
                                labels, out[:, z], stop_after_empty, direction)
        if progress is not None:
            progress(n + 1, len(slices))
    key.release_features()
    return out, overlap


def _carry_slice(engine: Engine, video: np.ndarray, key: Session, z: int, key_phase: int,
                 key_slice: np.ndarray, labels: list[int], out: np.ndarray,
                 stop_after_empty: int, direction: str) -> int:
    """One axial slice through the phases: ``out`` (phases, j, i) gets the carried masks."""
    session = Session(engine, np.ascontiguousarray(video))
    features = key.cache.get(("k", z))
    if features is not None:  # the same image: the key phase's slice z is frame key_phase
        session.cache.put(("k", key_phase), features)
    present = [label for label in labels if (key_slice == label).any()]
    for label in present:
        session.add_prompt(label, "k", key_phase, Prompt(mask=key_slice == label))
        session.propagate(label, "k", direction=direction,  # type: ignore[arg-type]
                          stop_after_empty=stop_after_empty)
    overlap = 0
    others = [p for p in range(video.shape[0]) if p != key_phase]
    for label in present:  # first listed keeps a voxel, as in segment_objects
        mask = session.mask(label)[others]
        free = out[others] == 0
        overlap += int((mask & ~free).sum())
        out[others] = np.where(mask & free, np.uint8(label), out[others])
    return overlap
