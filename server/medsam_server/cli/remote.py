"""``medsam-server segment --server URL``: the same segmentation, run on a medsam-server service.

The CLI reads and checks the volume and prompts, then calls ``segment_remote``: the
volume is uploaded raw (the server windows it by modality/window), each object is
prompted on its key slice and propagated, masks come back cropped, and the labels are
combined exactly as in-process (``postprocess.add_object``). Frames (``--time``) go through
``segment_frames_remote`` as one time session; 3D + time (``--time --phase``) through
``remote_phases``. This module needs no torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from medsam_client.client import MedSAMClient, MedSAMError, SessionHandle, slice_mask
from medsam_client.protocol import Info, SliceUpdate

from ..engine import ObjectSpec, add_object, axis_index
from ..io.volumes import Volume


def segment_remote(args: argparse.Namespace, specs: list[ObjectSpec],
                   volume: Volume) -> tuple[np.ndarray, int, str]:
    """Segment on ``args.server``; returns (labels, overlap voxels, where it ran).

    Raises MedSAMError (a user error for the CLI) when the server cannot do it.
    """
    _note_ignored(args)
    with MedSAMClient(args.server, _token(args)) as client:
        _say_where(client, args, "the volume")
        session = client.upload(volume.array, spacing=volume.spacing, origin=volume.origin,
                                direction=volume.direction, modality=args.modality,
                                window=args.window, name=Path(args.input).name)
        labels, overlap = _segment(client, session, volume.array.shape[:3], specs, args,
                                   lcc=not args.no_lcc)
    return labels, overlap, args.server


def segment_frames_remote(args: argparse.Namespace, specs: list[ObjectSpec],
                          frames_u8: np.ndarray) -> tuple[np.ndarray, str]:
    """``segment --time --server``: the frames as the local path feeds the model (uint8 grey
    or RGB, ``io.frames.frames_u8``) in one time session, so the server does no windowing;
    objects prompted on their frame and propagated along axis "t". Returns (labels, where).

    A server without capability "time" is refused before the upload: the client would send
    grey frames as a volume, but colour ones not at all, so it is said rather than guessed.
    """
    _note_ignored(args)
    with MedSAMClient(args.server, _token(args)) as client:
        _require(_say_where(client, args, "the frames"), args, "time", "time sessions",
                 "--time")
        session = client.upload(frames_u8, modality="none", time=True,
                                name=Path(args.input).name)
        labels, _overlap = _segment(client, session, frames_u8.shape[:3], specs, args,
                                    lcc=False, axis="t")
    return labels, args.server


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("MEDSAM_TOKEN")


def _note_ignored(args: argparse.Namespace) -> None:
    if args.quiet:
        return
    ignored = [f"--{n}" for n in ("checkpoint", "threads") if getattr(args, n, None)]
    ignored += [f"--{n}" for n in ("device", "precision") if getattr(args, n, "auto") != "auto"]
    ignored += ["--download"] if getattr(args, "download", False) else []
    if ignored:
        print(f"note: {', '.join(ignored)} ignored with --server (the server's model, "
              "device and precision are used)", file=sys.stderr)


def _say_where(client: MedSAMClient, args: argparse.Namespace, what: str) -> Info:
    info = client.info()  # token and protocol checked before the upload
    if not args.quiet:
        arithmetic = f" in {info.precision}" if info.precision else ""
        print(f"medsam-server {info.version} at {args.server} ({info.model} on {info.device}"
              f"{arithmetic}); uploading {what}", file=sys.stderr)
    return info


def _segment(client: MedSAMClient, session: SessionHandle, shape: tuple[int, ...],
             specs: list[ObjectSpec], args: argparse.Namespace, *, lcc: bool,
             axis: str | None = None) -> tuple[np.ndarray, int]:
    """``_segment_objects``, then the session closed."""
    try:
        return _segment_objects(client, session, shape, specs, args, lcc=lcc, axis=axis)
    finally:
        client.close_session(session, quiet=True)


def _segment_objects(client: MedSAMClient, session: SessionHandle, shape: tuple[int, ...],
                     specs: list[ObjectSpec], args: argparse.Namespace, *, lcc: bool,
                     axis: str | None = None, phase: int | None = None
                     ) -> tuple[np.ndarray, int]:
    """Every object in turn, combined as in-process (``add_object``).
    ``axis``: the wire's name for every object's axis ("t" for frames), else its own;
    ``phase``: the key phase of a 3D + time session (its masks are the result)."""
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        total = sum(shape[axis_index(s.axis)] for s in specs)
        bar = tqdm(total=total, unit="frame" if axis == "t" else "slice", file=sys.stderr,
                   desc="segmenting")
    try:
        labels = np.zeros(shape, dtype=np.uint8)
        overlap = 0
        for spec in specs:
            mask = _segment_object(client, session, spec, axis or spec.axis, args,
                                   (lambda u: bar.update(1)) if bar else None, phase)
            overlap += add_object(labels, mask, spec.label, lcc=lcc)
        return labels, overlap
    finally:
        if bar is not None:
            bar.close()


def _segment_object(client: MedSAMClient, session: SessionHandle, spec: ObjectSpec,
                    axis: str, args: argparse.Namespace,
                    on_update: Callable[[SliceUpdate], None] | None,
                    phase: int | None = None) -> np.ndarray:
    p = spec.prompt
    update = client.prompt(session, spec.label, axis, spec.slice,  # type: ignore[arg-type]
                           box=p.box, points=list(p.points) or None,
                           point_labels=list(p.labels) or None)
    if args.recipe == "mask":  # MedSAM2's alternative: the key-slice mask as a mask prompt
        client.prompt(session, spec.label, axis, spec.slice,  # type: ignore[arg-type]
                      mask=slice_mask(update))
    job = client.propagate(session, [spec.label], axis=axis,  # type: ignore[arg-type]
                           direction=getattr(args, "direction", "both"),
                           stop_after_empty=args.stop_after_empty, on_update=on_update)
    if job.state != "done":
        raise MedSAMError(f"propagation of {spec.name!r} ended {job.state} on the server; "
                          "nothing written", code=f"job_{job.state}")
    return client.object_mask(session, spec.label, phase=phase)


def _require(info: Info, args: argparse.Namespace, capability: str, what: str,
             local: str) -> None:
    """Refuse, before any upload, a server whose /info lacks ``capability``."""
    if capability not in info.capabilities:
        raise MedSAMError(f"{args.server}: medsam-server {info.version} has no {what} "
                          f"(capability '{capability}'); update it, or run {local} without "
                          "--server", code="unsupported")
