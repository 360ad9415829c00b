"""``medsam-server segment --time`` on 4D input: 3D + time (4D CT or cardiac phases), from a
4D file or a DICOM folder (a series per phase, or one series with temporal positions).

The key phase (``--phase``) is segmented in 3D from the usual prompts, then carried to the
other phases along time, slice by slice (``engine.segment_phases``). Output: one label
volume per phase on the phases' grid, as a ``.seq.nrrd`` volume sequence or a 4D file.
With ``--server`` the phases go to the service as one 3D + time session (``remote_phases``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..engine import ObjectSpec, PreprocessError, PromptError, check_slice_prompt
from ..io.dicom_cine import holds_dicom_cine
from ..io.dicom_phases import holds_dicom_phases, read_dicom_phases
from ..io.phases import check_phases_output, read_phases, write_phase_labels
from ..io.volumes import VolumeError

SPATIAL_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def image_dimension(path: str) -> int | None:
    """The dimension of an ITK-readable image file's header, 4 for a folder of DICOM phases;
    None for other inputs."""
    import SimpleITK as sitk

    p = Path(path)
    if p.is_dir():
        # a cine at one position repeats its one position too, but is 2D + time
        return 4 if holds_dicom_phases(p) and not holds_dicom_cine(p) else None
    if not p.is_file() or not p.name.lower().endswith(SPATIAL_SUFFIXES):
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None  # the frames reader says what is wrong with it
    return int(reader.GetDimension())


def cmd_segment_phases(args: argparse.Namespace, specs: list[ObjectSpec]) -> int:
    """Check everything, segment the key phase and carry it along time, write 4D labels."""
    if args.phase is None:
        raise PromptError("a 4D input (file or DICOM phases) is 3D + time: name the key "
                          "phase with --phase P "
                          "(prompts are on that phase)")
    if args.window is not None and args.modality != "ct":
        raise PreprocessError("--window is only used with --modality ct")
    if Path(args.input).is_dir() and holds_dicom_cine(args.input):
        raise PromptError(f"{args.input}: a DICOM cine at one slice position is 2D + time: "
                          "give the key frame with --frame F, without --phase")
    out = check_phases_output(args.output)
    phases = read_dicom_phases(args.input) if Path(args.input).is_dir() else \
        read_phases(args.input)
    if not 0 <= args.phase < phases.count:
        raise VolumeError(f"{args.input}: phase {args.phase} is out of range "
                          f"(0..{phases.count - 1})")
    for spec in specs:
        check_slice_prompt(phases.grid.array.shape, spec.axis, spec.slice, spec.prompt)
    if not args.quiet:
        print(f"{args.input}: {phases.count} phases of {phases.grid.size}", file=sys.stderr)
        for i, name in enumerate(phases.names):  # which index is which DICOM phase
            print(f"  phase {i}: {name}", file=sys.stderr)
    t0 = time.perf_counter()
    if args.server:  # remote: the same phases, one 3D + time session; no torch needed here
        from .remote_phases import segment_phases_remote

        labels, note = segment_phases_remote(args, specs, phases)
    else:
        labels, note = _segment(args, specs, phases.array)
    write_phase_labels(out, labels, phases)
    if not args.quiet:
        counts = ", ".join(f"{s.name}: {int((labels == s.label).any(axis=(1, 2, 3)).sum())} "
                           "phases" for s in specs)
        print(f"wrote {out} ({counts}; {time.perf_counter() - t0:.1f} s, {note})",
              file=sys.stderr)
    return 0


def _segment(args: argparse.Namespace, specs: list[ObjectSpec], array):  # noqa: ANN001, ANN202
    import numpy as np

    from ..engine import segment_phases, window_to_uint8
    from .options import load_engine

    window = tuple(args.window) if args.window else None
    # one windowing for every phase (per-phase windowing would differ between phases)
    pixels = window_to_uint8(array.reshape(-1, *array.shape[2:]), args.modality, window)
    pixels = np.ascontiguousarray(pixels.reshape(array.shape))
    engine = load_engine(args)
    labels, _overlap = segment_phases(engine, pixels, args.phase, specs, recipe=args.recipe,
                                      lcc=not args.no_lcc,
                                      stop_after_empty=args.stop_after_empty,
                                      direction=args.direction)
    return labels, (f"on {engine.device} in {engine.precision}, "
                    f"{engine.encoder_calls} images encoded")
