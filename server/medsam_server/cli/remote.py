"""``medsam-server segment --server URL``: the same segmentation, run on a medsam-server service.

The CLI reads and checks the volume and prompts, then calls ``segment_remote``: the
volume is uploaded raw (the server windows it by modality/window), each object is
prompted on its key slice and propagated, masks come back cropped, and the labels are
combined exactly as in-process (``postprocess.add_object``). This module needs no torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from medsam_client.client import MedSAMClient, MedSAMError, SessionHandle, slice_mask
from medsam_client.protocol import SliceUpdate

from ..engine import ObjectSpec, add_object, axis_index
from ..io.volumes import Volume


def segment_remote(args: argparse.Namespace, specs: list[ObjectSpec],
                   volume: Volume) -> tuple[np.ndarray, int, str]:
    """Segment on ``args.server``; returns (labels, overlap voxels, where it ran).

    Raises MedSAMError (a user error for the CLI) when the server cannot do it.
    """
    if not args.quiet:
        ignored = [f"--{n}" for n in ("checkpoint", "threads") if getattr(args, n, None)]
        ignored += [f"--{n}" for n in ("device", "precision") if getattr(args, n, "auto") != "auto"]
        ignored += ["--download"] if getattr(args, "download", False) else []
        if ignored:
            print(f"note: {', '.join(ignored)} ignored with --server (the server's model, "
                  "device and precision are used)", file=sys.stderr)
    token = args.token or os.environ.get("MEDSAM_TOKEN")
    with MedSAMClient(args.server, token) as client:
        labels, overlap = _segment(client, volume, specs, args)
    return labels, overlap, args.server


def _segment(client: MedSAMClient, volume: Volume, specs: list[ObjectSpec],
             args: argparse.Namespace) -> tuple[np.ndarray, int]:
    info = client.info()  # token and protocol checked before the upload
    if not args.quiet:
        arithmetic = f" in {info.precision}" if info.precision else ""
        print(f"medsam-server {info.version} at {args.server} ({info.model} on {info.device}"
              f"{arithmetic}); uploading the volume", file=sys.stderr)
    session = client.upload(volume.array, spacing=volume.spacing, origin=volume.origin,
                            direction=volume.direction, modality=args.modality,
                            window=args.window, name=Path(args.input).name)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        total = sum(volume.array.shape[axis_index(s.axis)] for s in specs)
        bar = tqdm(total=total, unit="slice", file=sys.stderr, desc="segmenting")
    try:
        labels = np.zeros(volume.array.shape, dtype=np.uint8)
        overlap = 0
        for spec in specs:
            mask = _segment_object(client, session, spec, args,
                                   (lambda u: bar.update(1)) if bar else None)
            overlap += add_object(labels, mask, spec.label, lcc=not args.no_lcc)
        return labels, overlap
    finally:
        if bar is not None:
            bar.close()
        client.close_session(session, quiet=True)


def _segment_object(client: MedSAMClient, session: SessionHandle, spec: ObjectSpec,
                    args: argparse.Namespace,
                    on_update: Callable[[SliceUpdate], None] | None) -> np.ndarray:
    p = spec.prompt
    update = client.prompt(session, spec.label, spec.axis, spec.slice,  # type: ignore[arg-type]
                           box=p.box, points=list(p.points) or None,
                           point_labels=list(p.labels) or None)
    if args.recipe == "mask":  # MedSAM2's alternative: the key-slice mask as a mask prompt
        client.prompt(session, spec.label, spec.axis, spec.slice,  # type: ignore[arg-type]
                      mask=slice_mask(update))
    job = client.propagate(session, [spec.label], axis=spec.axis,  # type: ignore[arg-type]
                           direction=getattr(args, "direction", "both"),
                           stop_after_empty=args.stop_after_empty, on_update=on_update)
    if job.state != "done":
        raise MedSAMError(f"propagation of {spec.name!r} ended {job.state} on the server; "
                          "nothing written", code=f"job_{job.state}")
    return client.object_mask(session, spec.label)
