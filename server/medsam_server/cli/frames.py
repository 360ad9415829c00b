"""``medsam-server segment --time``: frames (2D + time) segmented along time.

The frame index plays the slice's role (axis k). The recipe is MedSAM2's video one
(``medsam2_infer_video.py``: prompt the key frame, propagate forward) with both directions as
the default (``--direction``). No 3D largest-component step: along time a structure's
frames are not one object in space (the video recipe has none either). With ``--server``
the same uint8 frames go to the service as one time session (``remote.segment_frames_remote``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..engine import ObjectSpec, PreprocessError, PromptError
from ..io.frames import check_frame_prompt, frames_u8, read_frames
from ..io.sequences import SUFFIX as SEQUENCE_SUFFIX
from ..io.volumes import VolumeError, check_output_path


def cmd_segment_frames(args: argparse.Namespace, specs: list[ObjectSpec]) -> int:
    """Read, check everything, segment along time, write on the frames' grid."""
    out = Path(args.output)
    sequence = out.name.lower().endswith(SEQUENCE_SUFFIX)
    if not sequence:
        check_output_path(out)
    elif not out.parent.is_dir():
        raise VolumeError(f"{out}: output folder {out.parent} does not exist")
    if args.window is not None and args.modality != "ct":
        raise PreprocessError("--window is only used with --modality ct")
    for spec in specs:
        if spec.axis != "k":
            raise PromptError(f"{spec.name}: with --time the frame axis is k, not {spec.axis}")
    frames = read_frames(args.input)
    for spec in specs:
        check_frame_prompt(frames.pixels.shape, spec)
    pixels = frames_u8(frames, args.modality, tuple(args.window) if args.window else None)
    if not args.quiet:
        print(f"{args.input}: {frames.describe()}", file=sys.stderr)
    t0 = time.perf_counter()
    if args.server:  # remote: the same frames, one time session; no torch needed here
        from .remote import segment_frames_remote

        labels, where = segment_frames_remote(args, specs, pixels)
    else:
        labels, where = _segment(args, specs, pixels)
    if sequence:
        from ..io.sequences import write_label_sequence

        write_label_sequence(out, labels, frames.grid, frame_time_ms=frames.frame_time_ms)
    else:
        from ..io.volumes import write_mask

        write_mask(out, labels, frames.grid,
                   segments=[(s.label, s.name, s.color) for s in specs])
    if not args.quiet:
        counts = ", ".join(
            f"{s.name}: {int((labels == s.label).any(axis=(1, 2)).sum())} frames" for s in specs)
        print(f"wrote {out} ({counts}; {time.perf_counter() - t0:.1f} s, {where})",
              file=sys.stderr)
    return 0


def _segment(args: argparse.Namespace, specs: list[ObjectSpec],
             pixels: np.ndarray) -> tuple[np.ndarray, str]:
    from ..engine import Session, segment_objects
    from .options import load_engine

    engine = load_engine(args)
    session = Session(engine, pixels)
    labels, _overlap = segment_objects(session, specs, recipe=args.recipe, lcc=False,
                                       stop_after_empty=args.stop_after_empty,
                                       direction=args.direction)
    return labels, (f"on {engine.device} in {engine.precision}, "
                    f"{engine.encoder_calls} frames encoded")
