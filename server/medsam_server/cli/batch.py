"""``medsam-server evaluate`` and ``medsam-server batch``: parsers and commands.

Kept apart from ``cli/main.py`` (which registers them) so that file stays about ``segment``,
``serve`` and checkpoints. Every user error raises one of ``cli.USER_ERRORS``: exit
status 2, one line, nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..batch.cases import FORMATS, BatchError, BatchSettings, read_label_table, read_manifest
from ..batch.evaluate import (
    DEFAULT_TOLERANCE_MM,
    EvaluationError,
    check_labels,
    check_tolerance,
    evaluate_cases,
    match_cases,
    summary,
    write_metrics_csv,
)
from ..batch.run import BatchLedger, report
from ..engine import PreprocessError
from .options import add_checkpoint_options, add_segmentation_options, precision_note

RAY_MISSING = ("--ray needs Ray, an optional extra: pip install 'medsam-server[ray]' "
               "(or pip install ray) in this environment and on every node of the cluster")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _evaluate_parser(sub)
    _batch_parser(sub)


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="Dice and normalised surface Dice of predictions against references",
        description="DSC and NSD per case and label (MedSAM's conventions, DeepMind's "
                    "surface-distance). PRED and REF: two label volumes or two folders "
                    "matched by case name (file name less .nii.gz, .seg.nrrd, ...). A DICOM "
                    "SEG (.dcm) on one side is read onto the other side's grid, segment N "
                    "as label N.")
    p.add_argument("pred", metavar="PRED", help="predicted label volume or folder")
    p.add_argument("ref", metavar="REF", help="reference label volume or folder")
    p.add_argument("--labels", type=int, nargs="+", metavar="L",
                   help="labels to score (default: every label in either volume)")
    p.add_argument("--tolerance-mm", type=float, default=DEFAULT_TOLERANCE_MM, metavar="T",
                   help=f"NSD tolerance in mm (default {DEFAULT_TOLERANCE_MM})")
    p.add_argument("--csv", metavar="OUT", help="write case,label,dsc,nsd rows here")
    p.add_argument("--time", action="store_true",
                   help="2D + time label files (frames along k, or .seq.nrrd): DSC over all "
                        "frames, NSD from each frame's own contours (time is no distance)")
    p.set_defaults(func=cmd_evaluate)


def _batch_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch", help="segment every case of a manifest (resumable; local or on Ray)",
        description="Segment the cases of MANIFEST (CSV: case,image and prompts, or "
                    "reference with --boxes-from-reference) into OUTDIR/<case>.seg.nrrd, "
                    "with OUTDIR/results.csv (and metrics.csv with references). Re-run the "
                    "same command to resume.")
    p.add_argument("manifest", metavar="MANIFEST", help="CSV with a header row")
    p.add_argument("-o", "--output", metavar="OUTDIR", required=True, help="output folder")
    add_checkpoint_options(p)
    g = p.add_argument_group("prompts from reference masks")
    g.add_argument("--boxes-from-reference", action="store_true",
                   help="one box per reference label: its bounding box on its largest slice")
    g.add_argument("--box-jitter", type=int, default=0, metavar="PX",
                   help="grow each box by a seeded random 0..PX voxels per side (MedSAM2)")
    g.add_argument("--seed", type=int, default=0, help="seed of --box-jitter")
    g.add_argument("--labels", type=int, nargs="+", metavar="L",
                   help="only these reference labels get a box")
    g.add_argument("--label-table", metavar="TSV",
                   help="names of the reference labels: 'label<TAB>name' rows under a header "
                        "(TotalSegmentator's labels_total.tsv); default label_<N>")
    g = p.add_argument_group("segmentation (as for segment, applied to every case)")
    add_segmentation_options(
        g, axis_help="slice axis of the reference boxes (prompts files name their own)",
        threads_help="CPU threads for torch (per Ray worker too)")
    g.add_argument("--direction", choices=["both", "forward", "backward"], default="both",
                   help="propagate both ways from the key slice (default) or one way only")
    g.add_argument("--time", action="store_true",
                   help="every case is 2D + time, read as 'segment --time' reads it: a "
                        "prompt's slice is its key frame, no largest-component step, NSD per "
                        "frame (see docs/video.md)")
    g = p.add_argument_group("outputs")
    g.add_argument("--format", choices=FORMATS, default="seg.nrrd",
                   help="OUTDIR/<case>.seg.nrrd (default), .nii.gz, with --time .seq.nrrd "
                        "(a label sequence 3D Slicer loads), or for DICOM series "
                        "<case>.seg.dcm (dicom-seg) / <case>.rtstruct.dcm (rtstruct)")
    g.add_argument("--tolerance-mm", type=float, default=DEFAULT_TOLERANCE_MM, metavar="T",
                   help="NSD tolerance for metrics.csv")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("Ray (pip install 'medsam-server[ray]')")
    g.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on Ray: ADDRESS of a cluster (e.g. auto, HOST:6379, "
                   "ray://HOST:10001); none: $RAY_ADDRESS, else a local Ray")
    g.add_argument("--workers", type=int, metavar="N",
                   help="Ray workers to start (default: as many as the cluster fits)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G")
    p.set_defaults(func=cmd_batch)


def cmd_evaluate(args: argparse.Namespace) -> int:
    tolerance = check_tolerance(args.tolerance_mm)
    labels = check_labels(args.labels)
    csv_out = _check_csv_path(args.csv) if args.csv else None
    cases = match_cases(args.pred, args.ref)
    rows = evaluate_cases(cases, labels, tolerance, frames=args.time)
    if not rows:
        raise EvaluationError(f"no labels in {args.pred} or {args.ref}; give --labels to score "
                              "structures absent from both")
    if csv_out is not None:
        write_metrics_csv(csv_out, rows)
    print(f"{len(cases)} case(s), NSD tolerance {tolerance:g} mm"
          + (f", rows in {csv_out}" if csv_out else ""))
    print(summary(rows))
    return 0


def _check_csv_path(path: str) -> Path:
    out = Path(path)
    if out.is_dir():
        raise EvaluationError(f"--csv {out}: is a folder, give a file name")
    if not out.parent.is_dir():
        raise EvaluationError(f"--csv {out}: folder {out.parent} does not exist")
    return out


def cmd_batch(args: argparse.Namespace) -> int:
    from ..checkpoints import resolve_checkpoint, sha256_file

    tolerance = _check_batch_options(args)
    cases = read_manifest(args.manifest, boxes_from_reference=args.boxes_from_reference)
    ray_options = None
    if args.ray is not None:
        try:
            from ..batch.ray_runner import RayOptions
        except ImportError:
            raise BatchError(RAY_MISSING) from None
        ray_options = RayOptions(args.ray or None, args.workers, args.cpus_per_worker,
                                 args.gpus_per_worker, args.device, args.threads,
                                 args.precision)
    checkpoint = resolve_checkpoint(args.checkpoint, download=args.download)
    settings = BatchSettings(
        checkpoint_sha256=sha256_file(checkpoint), format=args.format, axis=args.axis,
        modality=args.modality, window=tuple(args.window) if args.window else None,
        # along time a structure's frames are not one object in space: no largest component
        recipe=args.recipe, lcc=not (args.no_lcc or args.time),
        stop_after_empty=args.stop_after_empty, direction=args.direction, time=args.time,
        boxes_from_reference=args.boxes_from_reference, box_jitter=args.box_jitter,
        seed=args.seed, labels=tuple(sorted(set(args.labels))) if args.labels else None,
        tolerance_mm=tolerance, precision=args.precision,
        label_names=read_label_table(args.label_table) if args.label_table else None)
    ledger = BatchLedger(Path(args.output), cases, settings)
    todo = ledger.plan()
    skipped = len(cases) - len(todo)
    if skipped:
        print(f"skipped {skipped} case(s) whose output is already in {args.output}",
              file=sys.stderr)
    try:
        if ray_options is not None:
            from ..batch.ray_runner import run_on_ray

            finished = run_on_ray(ledger, todo, checkpoint, ray_options, quiet=args.quiet)
        else:
            from ..batch.run import run_local

            def load_engine() -> object:
                from ..engine import Engine

                engine = Engine.from_checkpoint(checkpoint, args.device, args.threads,
                                                precision=args.precision)
                if not args.quiet:
                    print(precision_note(engine), file=sys.stderr)
                return engine

            finished = run_local(ledger, todo, load_engine, quiet=args.quiet)
    except KeyboardInterrupt:  # a second Ctrl-C: no partial file either (atomic writes)
        print(f"medsam-server: aborted: {ledger.done} case(s) written this run are kept; run "
              "the same command again to resume", file=sys.stderr)
        return 130
    return report(ledger, skipped, finished)


def _check_batch_options(args: argparse.Namespace) -> float:
    if args.window is not None and args.modality != "ct":
        raise PreprocessError("--window is only used with --modality ct")
    if args.stop_after_empty < 0:
        raise BatchError("--stop-after-empty must be >= 0")
    if args.threads is not None and args.threads < 1:
        raise BatchError("--threads must be >= 1")
    if not args.boxes_from_reference:
        given = [f for f, v in (("--box-jitter", args.box_jitter), ("--labels", args.labels),
                                ("--label-table", args.label_table)) if v]
        if given:
            raise BatchError(f"{' and '.join(given)} need --boxes-from-reference")
    if args.box_jitter < 0:
        raise BatchError("--box-jitter must be >= 0")
    if args.time and args.format in ("dicom-seg", "rtstruct"):
        raise BatchError(f"--format {args.format} references a CT/MR series; with --time use "
                         "seq.nrrd, seg.nrrd or nii.gz (labels on the frames' grid)")
    if args.format == "seq.nrrd" and not args.time:
        raise BatchError("--format seq.nrrd is a label sequence of frames: it needs --time")
    if args.time and args.axis != "k":
        raise BatchError(f"with --time the frame axis is k, not {args.axis}")
    check_labels(args.labels)
    if args.ray is None:
        given = [flag for flag, value, default in (
            ("--workers", args.workers, None), ("--cpus-per-worker", args.cpus_per_worker, 1.0),
            ("--gpus-per-worker", args.gpus_per_worker, 0.0)) if value != default]
        if given:
            raise BatchError(f"{', '.join(given)} only apply with --ray")
    if args.workers is not None and args.workers < 1:
        raise BatchError("--workers must be >= 1")
    if not args.cpus_per_worker > 0 or not args.gpus_per_worker >= 0:
        raise BatchError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
    return check_tolerance(args.tolerance_mm)
