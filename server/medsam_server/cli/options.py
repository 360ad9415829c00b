"""Command-line options that ``segment``, ``batch`` and ``serve`` share: one definition,
so "every segment option applies to every case of a batch" stays true."""

from __future__ import annotations

import argparse

Parser = argparse.ArgumentParser | argparse._ArgumentGroup


def add_checkpoint_options(p: Parser) -> None:
    p.add_argument("--checkpoint", help="MedSAM2 checkpoint (.pt); default: "
                   "$MEDSAM2_CHECKPOINT or the cache (see 'medsam-server checkpoints')")
    p.add_argument("--download", action="store_true",
                   help="download the default release into the cache if it is missing")


def add_segmentation_options(p: Parser, *, axis_help: str, threads_help: str) -> None:
    """Slice axis, preprocessing, recipe, stop rule, device, precision, threads."""
    p.add_argument("--axis", choices=["k", "j", "i"], default="k", help=axis_help)
    p.add_argument("--modality", choices=["ct", "mr", "none"], default="ct")
    p.add_argument("--window", type=float, nargs=2, metavar=("LEVEL", "WIDTH"),
                   help="CT window (default 40 400)")
    p.add_argument("--recipe", choices=["box", "mask"], default="box",
                   help="propagate from the box (MedSAM2 default) or from the key-slice mask")
    p.add_argument("--no-lcc", action="store_true",
                   help="keep every connected component (default: the largest one)")
    p.add_argument("--stop-after-empty", type=int, default=0, metavar="N",
                   help="stop a direction after N slices without the object (0 = never)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    add_precision_argument(p)
    p.add_argument("--threads", type=int, help=threads_help)


def add_precision_argument(p: Parser) -> None:
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="arithmetic: bf16 autocast (MedSAM2's own on GPU) or full fp32; "
                        "auto = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16, "
                        "AMX), else fp32")


def precision_note(engine: object) -> str:
    """What the user is told about the arithmetic in use (segment and batch)."""
    device, precision = engine.device, engine.precision  # type: ignore[attr-defined]
    note = f"running on {device} in {precision}"
    if precision == "bf16":
        note += " (bf16 autocast; --precision fp32 for full precision)"
    if getattr(engine, "kernels", "stock") != "stock":
        note += f", {engine.kernels} kernels"  # type: ignore[attr-defined]
    return note


def load_engine(args: argparse.Namespace):  # noqa: ANN201 - an Engine (torch loads lazily)
    """The engine a segmenting command runs on: the checkpoint as resolved from ``args``,
    on ``--device`` with ``--threads`` and ``--precision``; says which unless ``--quiet``."""
    import sys

    from ..checkpoints import resolve_checkpoint
    from ..engine import Engine

    checkpoint = resolve_checkpoint(args.checkpoint, download=args.download)
    engine = Engine.from_checkpoint(checkpoint, args.device, args.threads,
                                    precision=args.precision)
    if not args.quiet:
        print(precision_note(engine), file=sys.stderr)
    return engine
