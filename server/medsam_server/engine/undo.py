"""What ``Session.undo`` needs: each prompt's entry, and slices as they were before it.

A slice's mask is kept as packed bits of its bounding box (an empty slice costs nothing),
its logits as the tensor object the slice held (the slice holds a newer one now), so a
restore is exact and an entry costs little beside the logits it keeps alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .engine import StepOutput
from .features import tensor_nbytes
from .prompts import Prompt


@dataclass
class UndoReport:
    """What ``Session.undo`` took back and which slices it restored."""

    object_id: int
    axis: str
    index: int  # the prompt's slice
    kind: str  # box, points or mask
    slices: list[int]  # restored slices, ascending
    object_removed: bool  # the prompt had created the object
    undo_left: int


@dataclass
class SliceBefore:
    """One slice as it was before an undo entry first changed it."""

    offset: tuple[int, int]  # of the mask's bounding box (packed bits: undo costs little)
    shape: tuple[int, int]
    bits: np.ndarray
    lowres: torch.Tensor | None  # the logits object itself: exact, and no copy
    scores: tuple[float, float] | None

    @classmethod
    def of(cls, mask: np.ndarray, lowres: torch.Tensor | None,
           scores: tuple[float, float] | None) -> SliceBefore:
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if rows.size == 0:
            return cls((0, 0), (0, 0), np.zeros(0, np.uint8), lowres, scores)
        crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        return cls((int(rows[0]), int(cols[0])), crop.shape, np.packbits(crop), lowres, scores)

    def restore_into(self, view: np.ndarray) -> None:
        view[...] = False
        if self.shape[0] and self.shape[1]:
            n = self.shape[0] * self.shape[1]
            crop = np.unpackbits(self.bits, count=n).astype(bool).reshape(self.shape)
            r, c = self.offset
            view[r:r + self.shape[0], c:c + self.shape[1]] = crop

    @property
    def nbytes(self) -> int:
        # the logits it keeps alive count: the slice holds newer ones now
        return int(self.bits.nbytes) + (tensor_nbytes(self.lowres) if self.lowres is not None
                                        else 0)


@dataclass
class UndoEntry:
    """One prompt and everything that changed since, as it was before it."""

    axis: str
    index: int
    kind: str
    prompt: Prompt | None  # the slice's prompt before (points add to an earlier prompt)
    cond: StepOutput | None
    pending: set[int]
    settled: set[int]
    created_object: bool
    created_axis: bool
    slices: dict[int, SliceBefore] = field(default_factory=dict)
    nbytes: int = 0
