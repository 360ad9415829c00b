"""A propagation's plan, its report, and the rule that lets a correction stop early."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

import numpy as np


@dataclass
class PropagationReport:
    object_id: int
    axis: str
    slices: list[int]  # slices reported (prompted start slices too), in finishing order
    cancelled: bool = False


@dataclass(frozen=True)
class PropagationPlan:
    """What a propagation will do: along ``axis``, from ``starts``, within first..last."""

    axis: str
    starts: tuple[int, ...]
    first: int
    last: int
    steps: tuple[int, ...]  # +1 forward, -1 backward

    @property
    def max_slices(self) -> int:
        """Slices it may report at most (fewer when a stop condition ends a pass early)."""
        reach: set[int] = set()
        for s in self.starts:
            if 1 in self.steps:
                reach.update(range(s, self.last + 1))
            if -1 in self.steps:
                reach.update(range(self.first, s + 1))
        return len(reach)


def tracked_through(prompts: Container[int], tracked_before: set[int], index: int, step: int,
                    end: int) -> bool:
    """Did every slice after ``index`` up to ``end`` (or the next prompted slice) have a
    result before this propagation? Only then may a direction stop where nothing changed:
    a run over a wider range than the last one must go on to the slices it never reached."""
    for i in range(index + step, end + step, step):
        if i in prompts:
            return True
        if i not in tracked_before:
            return False
    return True


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    if union == 0:
        return 1.0
    return np.count_nonzero(a & b) / union
