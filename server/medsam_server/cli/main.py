"""``medsam-server`` command line: segment, checkpoints, make-test-checkpoint (evaluate and
batch: ``cli/batch.py``).

Every user error ends the process with status 2 and one line on stderr, and
writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from medsam_client.client import MedSAMError

from .. import __version__
from ..batch.cases import BatchError
from ..batch.evaluate import EvaluationError
from ..checkpoints import (
    CheckpointError,
    DeviceError,
    format_checkpoint_table,
    list_checkpoints,
    resolve_checkpoint,
)
from ..engine import (
    DEFAULT_COLORS,
    ObjectSpec,
    PreprocessError,
    Prompt,
    PromptError,
    check_slice_prompt,
)
from ..io.prompts_file import load_prompts_file
from ..io.volumes import VolumeError
from .batch import add_parsers as add_batch_parsers
from .options import (
    add_checkpoint_options,
    add_precision_argument,
    add_segmentation_options,
    load_engine,
)

USER_ERRORS = (BatchError, CheckpointError, DeviceError, EvaluationError, MedSAMError,
               PreprocessError, PromptError, VolumeError)


def _segment_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment a volume from a box on one slice",
                       description="Segment a 3D volume with MedSAM2 from a box on one slice.")
    p.add_argument("input", help="NIfTI, NRRD, MHA file or a DICOM series folder; with --time "
                   "also a multi-frame DICOM file, a DICOM cine folder (one position), a "
                   "video (MP4, AVI, MOV, MKV), or with --phase a 4D file or DICOM phases")
    p.add_argument("-o", "--output", required=True,
                   help="output mask: .nii.gz, .nrrd or .seg.nrrd (on the input's grid); with "
                        "--time also .seq.nrrd (a volume sequence, as 3D Slicer loads one)")
    add_checkpoint_options(p)
    p.add_argument("--slice", "--frame", dest="slice", type=int,
                   help="key slice index along --axis (with --time: the key frame)")
    p.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                   help="box on the key slice, x along columns, y along rows (voxels)")
    add_segmentation_options(
        p, axis_help="slice axis: k → arr[k], j → arr[:, j, :], i → arr[:, :, i]",
        threads_help="CPU threads for torch")
    p.add_argument("--prompts", help="JSON file with several objects (see README)")
    p.add_argument("--name", default="Segment_1", help="segment name (single object)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--format", choices=["dicom-seg", "rtstruct"],
                   help="write DICOM SEG or RTSTRUCT (a .dcm output) referencing the input "
                        "DICOM series (see docs/dicom-export.md)")
    p.add_argument("--time", action="store_true",
                   help="the input is 2D + time: the frame index plays the slice's role "
                        "(axis k), colour frames go to the model as RGB (see docs/video.md)")
    p.add_argument("--direction", choices=["both", "forward", "backward"], default="both",
                   help="propagate both ways from the key slice (default) or one way only "
                        "(MedSAM2's video recipe is forward)")
    p.add_argument("--phase", type=int,
                   help="with --time on a 4D file or a DICOM folder of phases (3D + time): the key "
                        "phase, segmented in 3D from the prompts, then carried to the other "
                        "phases (docs/video.md)")
    p.add_argument("--server", metavar="URL",
                   help="run on a medsam-server service instead of in this process")
    p.add_argument("--token", help="bearer token for --server (default $MEDSAM_TOKEN)")
    p.set_defaults(func=cmd_segment)


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP inference service",
                       description="Serve MedSAM2 over HTTP (local worker or shared GPU server).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", help="bearer token (default $MEDSAM_TOKEN); required off loopback")
    p.add_argument("--checkpoint", help="MedSAM2 checkpoint (.pt)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    add_precision_argument(p)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the image encoder at start-up (minutes; then faster "
                        "slices, for long-lived GPU servers); if it fails the server says so "
                        "in its log and /info and runs eager")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--log-file", help="also write the log here (no image data is logged)")
    p.add_argument("--idle-timeout", type=float, default=1800.0,
                   help="seconds without work before a session is closed")
    p.add_argument("--lease-timeout", type=float, default=60.0,
                   help="seconds without a heartbeat before a leased session is closed, jobs "
                        "and all (its client crashed or was cut off)")
    p.add_argument("--replica", metavar="NAME",
                   help="this server's name behind a proxy: it starts every session id, so "
                        "the proxy routes a session's requests here (see examples/nginx)")
    p.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                   help="skip the dummy forward pass before serving (the first box pays it)")
    p.add_argument("--memory-budget-mb", type=int, default=4096,
                   help="feature cache + session memory budget")
    p.add_argument("--max-upload-mb", type=int, default=1024, help="largest request body")
    p.add_argument("--parent-pid", type=int, metavar="PID",
                   help="shut down when process PID exits (the launcher of a local worker)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..service.run import serve

    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam-server",
                                     description="MedSAM2 engine and tools for MedSAMSegment")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _segment_parser(sub)
    _serve_parser(sub)
    add_batch_parsers(sub)  # evaluate, batch (cli/batch.py)
    p = sub.add_parser("checkpoints", help="list known MedSAM2 releases and the cache")
    p.add_argument("--cache-dir", help="cache folder (default $MEDSAM2_CACHE_DIR or ~/.cache/medsam2)")
    p.add_argument("--download", metavar="NAME", help="download a release into the cache")
    p.add_argument("--base-url", metavar="URL",
                   help="download from this mirror of https://huggingface.co")
    p.add_argument("--json", action="store_true",
                   help="print the list as one JSON array on stdout (for programs)")
    p.add_argument("--progress-json", action="store_true",
                   help="with --download: instead of a progress bar, write JSON lines on stdout "
                   '({"event": "licence"|"progress"|"done", ...})')
    p.set_defaults(func=cmd_checkpoints)
    p = sub.add_parser("make-test-checkpoint",
                       help="write a seeded RANDOM-weight checkpoint (tests/benchmarks only)")
    p.add_argument("output", help="where to write the .pt file")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_test_checkpoint)
    return parser


def _objects_from_args(args: argparse.Namespace) -> list[ObjectSpec]:
    if args.prompts:
        if args.slice is not None or args.box is not None:
            raise PromptError("give either --prompts or --slice/--box, not both")
        return load_prompts_file(args.prompts)
    if args.slice is None or args.box is None:
        raise PromptError("--slice and --box are required (or --prompts FILE.json)")
    return [ObjectSpec(1, args.name, args.axis, args.slice, Prompt(box=tuple(args.box)),
                       DEFAULT_COLORS[0])]


def cmd_segment(args: argparse.Namespace) -> int:
    from ..io.dicom_seg import export_objects
    from ..io.dicom_series import source_series
    from ..io.volumes import check_output_path, read_volume, write_mask
    from .dicom_export import dicom_format, write_dicom

    # every cheap check first: a typo costs no model load and no upload
    specs = _objects_from_args(args)
    if args.phase is not None and not args.time:
        raise PromptError("--phase needs --time (3D + time: a 4D file or a DICOM folder of phases)")
    if args.time:
        from .frames import cmd_segment_frames
        from .phases import cmd_segment_phases, image_dimension

        if args.phase is not None or (image_dimension(args.input) or 0) >= 4:
            return cmd_segment_phases(args, specs)
        return cmd_segment_frames(args, specs)
    out = Path(args.output)
    fmt = dicom_format(args)
    if fmt is None:
        check_output_path(out)
    else:
        export_objects(specs)  # names and codes DICOM can carry, before the model runs
    if args.window is not None and args.modality != "ct":
        raise PreprocessError("--window is only used with --modality ct")
    volume = read_volume(args.input)
    source = source_series(args.input, volume) if fmt else None
    for spec in specs:
        check_slice_prompt(volume.array.shape, spec.axis, spec.slice, spec.prompt)
    t0 = time.perf_counter()
    if args.server:  # remote: no torch needed in this process
        from .remote import segment_remote

        labels, overlap, where = segment_remote(args, specs, volume)
    else:
        labels, overlap, where = _segment_local(args, specs, volume)
    if fmt:
        where_from = args.server or resolve_checkpoint(args.checkpoint).name
        write_dicom(fmt, out, labels, source, specs, str(where_from), quiet=args.quiet)
    else:
        write_mask(out, labels, volume, segments=[(s.label, s.name, s.color) for s in specs])
    if not args.quiet:
        voxels = ", ".join(f"{s.name}: {int((labels == s.label).sum())} voxels" for s in specs)
        print(f"wrote {out} ({voxels}; {time.perf_counter() - t0:.1f} s, {where})",
              file=sys.stderr)
        if overlap:
            print(f"note: {overlap} voxels were claimed by two objects; the first listed kept "
                  "them", file=sys.stderr)
    return 0


def _segment_local(args: argparse.Namespace, specs: list[ObjectSpec],
                   volume: object) -> tuple[object, int, str]:
    from ..engine import Session, segment_objects, window_to_uint8

    volume_u8 = window_to_uint8(volume.array, args.modality,  # type: ignore[attr-defined]
                                tuple(args.window) if args.window else None)
    engine = load_engine(args)
    session = Session(engine, volume_u8)
    bar = None if args.quiet else _progress_bar(specs, session)
    try:
        labels, overlap = segment_objects(
            session, specs, recipe=args.recipe, lcc=not args.no_lcc,
            stop_after_empty=args.stop_after_empty, direction=args.direction,
            progress=(lambda r: bar.update(1)) if bar else None)
    finally:
        if bar:
            bar.close()
    return labels, overlap, (f"on {engine.device} in {engine.precision}, "
                             f"{engine.encoder_calls} slices encoded")


def _progress_bar(specs: list[ObjectSpec], session: object):  # noqa: ANN202
    from tqdm import tqdm

    total = sum(session.num_slices(s.axis) for s in specs)  # type: ignore[attr-defined]
    return tqdm(total=total, unit="slice", file=sys.stderr, desc="segmenting")


def cmd_checkpoints(args: argparse.Namespace) -> int:
    if args.progress_json and not args.download:
        raise CheckpointError("--progress-json reports a download: add --download NAME")
    if args.progress_json and args.json:
        raise CheckpointError("give --json or --progress-json, not both (stdout carries one "
                              "format)")
    if args.download:
        from ..checkpoints import _cache as cache_dir
        from ..checkpoints import download_release, get_release

        release = get_release(args.download)
        if args.progress_json:
            events = _JsonEvents()
            path = download_release(release, cache_dir(args.cache_dir), base_url=args.base_url,
                                    progress=events.progress,
                                    notify=lambda text: events.emit(event="licence", text=text))
            events.flush_progress()
            events.emit(event="done", path=str(path))
            return 0
        path = download_release(release, cache_dir(args.cache_dir), base_url=args.base_url,
                                progress=_download_progress())
        print(f"downloaded {path}", file=sys.stderr)
    rows = list_checkpoints(args.cache_dir)
    print(json.dumps(rows) if args.json else format_checkpoint_table(rows))
    return 0


class _JsonEvents:
    """``--progress-json``: one JSON object per line on stdout, for the Slicer settings panel.

    Progress comes per 64 KB chunk; at most one line per ``interval`` s keeps the reader's
    GUI responsive, and ``flush_progress`` sends the last figure held back.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self._last = -float("inf")
        self._held: tuple[int, int | None] | None = None

    def emit(self, **event: object) -> None:
        # one write per line, so a line is never split by another write
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    def progress(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._held = (done, total)
            return
        self._last, self._held = now, None
        self.emit(event="progress", done=done, total=total)

    def flush_progress(self) -> None:
        if self._held is not None:
            done, total = self._held
            self._held = None
            self.emit(event="progress", done=done, total=total)


def _download_progress():  # noqa: ANN202
    from tqdm import tqdm

    bar = tqdm(unit="B", unit_scale=True, file=sys.stderr, desc="download")

    def update(done: int, total: int | None) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return update


def cmd_make_test_checkpoint(args: argparse.Namespace) -> int:
    from ..engine import write_random_checkpoint

    path = write_random_checkpoint(args.output, seed=args.seed)
    print(f"wrote {path}: RANDOM weights (seed {args.seed}) of the MedSAM2 architecture; "
          "its masks are meaningless, use it only for tests and benchmarks", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except USER_ERRORS as exc:
        print(f"medsam-server: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medsam-server: interrupted; nothing written", file=sys.stderr)
        return 130
    if argv is None and args.command == "segment":
        _exit_at_once(rc)
    return rc


def _exit_at_once(rc: int) -> None:
    """End a finished ``segment`` process without the interpreter's teardown.

    Tearing down torch, sam2 and the volumes took 0.8 s of a 12 s run on a 20-slice CT
    (bench/bench_startup.py). By now the output is written (renamed into place) and
    closed; only the standard streams and logging hold anything, and they are flushed.
    Only as a program (``argv`` None): callers of ``main([...])`` get their return.
    """
    import logging

    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
