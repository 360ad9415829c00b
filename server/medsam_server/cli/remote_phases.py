"""``medsam-server segment --time --phase P --server URL``: 3D + time on a medsam-server service.

Every phase goes up raw in one 3D + time session (capability "phases"); the server windows
them with one mapping, as ``cli/phases.py`` does. Each object is prompted on the key phase
and propagated in 3D there (``remote._segment_objects``, combined as in-process with the
largest-component step), then carried along time (``propagate_phases``); each phase's masks
come back and are combined as ``engine.segment_phases`` does (the first listed keeps a voxel).

Where the local path and this one can differ: the local path carries the key phase's
*post-processed* slices (largest component, earlier objects' voxels removed); the service
carries its own, unprocessed key-phase masks. Slices the post-processing emptied are emptied
here too (the local path carries nothing there), so both agree unless the post-processing
changed a slice it left non-empty: those slices are named in a note. This module needs no torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from medsam_client.client import MedSAMClient, MedSAMError, SessionHandle

from ..engine import ObjectSpec, add_object
from ..io.phases import Phases
from .remote import _note_ignored, _require, _say_where, _segment_objects, _token


def segment_phases_remote(args: argparse.Namespace, specs: list[ObjectSpec],
                          phases: Phases) -> tuple[np.ndarray, str]:
    """The (phases, k, j, i) uint8 labels segmented on ``args.server``, and where it ran.

    A server without capability "phases" is refused before the upload (MedSAMError, a user
    error for the CLI)."""
    _note_ignored(args)
    with MedSAMClient(args.server, _token(args)) as client:
        _require(_say_where(client, args, "the phases"), args, "phases",
                 "3D + time sessions", "--time --phase")
        grid = phases.grid
        session = client.upload_phases(
            phases.array, key_phase=args.phase, spacing=grid.spacing, origin=grid.origin,
            direction=grid.direction, modality=args.modality, window=args.window,
            name=Path(args.input).name)
        try:
            return _segment_phases(client, session, phases.count, specs, args), args.server
        finally:
            client.close_session(session, quiet=True)


def _time_targets(count: int, key: int, direction: str) -> list[int]:
    """The phases a pass along time reaches from ``key`` (as ``engine.segment_phases``)."""
    before = list(range(key)) if direction != "forward" else []
    after = list(range(key + 1, count)) if direction != "backward" else []
    return before + after


def _segment_phases(client: MedSAMClient, session: SessionHandle, count: int,
                    specs: list[ObjectSpec], args: argparse.Namespace) -> np.ndarray:
    key = args.phase
    key_labels, _ = _segment_objects(client, session, session.shape[1:], specs, args,
                                     lcc=not args.no_lcc, phase=key)
    out = np.zeros((count, *key_labels.shape), dtype=np.uint8)
    out[key] = key_labels
    present = [s for s in specs if (key_labels == s.label).any()]
    targets = _time_targets(count, key, args.direction)
    if not present or not targets:
        return out  # nothing to carry, as segment_phases
    _note_changed_slices(client, session, key, key_labels, present, args)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(unit="slice", file=sys.stderr, desc="along time")
    try:
        job = client.propagate_phases(session, [s.label for s in present],
                                      direction=args.direction,
                                      stop_after_empty=args.stop_after_empty,
                                      on_update=None if bar is None else (lambda u: bar.update(1)))
    finally:
        if bar is not None:
            bar.close()
    if job.state != "done":
        raise MedSAMError(f"propagation along time ended {job.state} on the server; "
                          "nothing written", code=f"job_{job.state}")
    for spec in present:
        carried = (key_labels == spec.label).any(axis=(1, 2))  # what the local path carries
        for p in targets:
            mask = client.object_mask(session, spec.label, phase=p)
            mask[~carried] = False
            add_object(out[p], mask, spec.label, lcc=False)  # first listed keeps a voxel
    return out


def _note_changed_slices(client: MedSAMClient, session: SessionHandle, key: int,
                         key_labels: np.ndarray, specs: list[ObjectSpec],
                         args: argparse.Namespace) -> None:
    """Say which key-phase slices the server carries unlike the local path (module doc)."""
    if args.quiet:
        return
    for spec in specs:
        kept = key_labels == spec.label
        raw = client.object_mask(session, spec.label, phase=key)
        changed = [z for z in range(kept.shape[0])
                   if kept[z].any() and (kept[z] != raw[z]).any()]
        if changed:
            print(f"note: {spec.name}: the largest-component step or an earlier object changed "
                  f"key-phase slices {changed}; the server carries them along time as "
                  "propagated, so they can differ from a run without --server",
                  file=sys.stderr)
