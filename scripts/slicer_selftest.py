"""Run the extension's Slicer self-test in a real 3D Slicer, as Slicer's CTest macro does.

    python3 scripts/slicer_selftest.py /path/to/Slicer [--print]

The command is the one ``slicer_add_python_unittest`` (Slicer's
CMake/SlicerMacroPythonTesting.cmake) registers: the Slicer launcher with ``--no-splash
--testing``, this checkout's module folder as ``--additional-module-paths``, and
``--python-code`` calling ``slicer.testing.runUnitTest([folder], name)``, which exits
non-zero when a test fails. The GitHub workflow (.github/workflows/slicer.yml) runs this
script under ``xvfb-run``; on a desktop run it as is. ``--print`` shows the command only.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MedSAMSegment"
SELF_TEST = MODULE_DIR / "Testing" / "Python" / "MedSAMSegmentSelfTest.py"


def python_code(test: Path = SELF_TEST) -> str:
    """What the CTest macro passes to --python-code (its ``\\;`` is CMake's list escape)."""
    return (f"import slicer.testing; slicer.testing.runUnitTest([{str(test.parent)!r}], "
            f"{test.stem!r})")


def command(slicer: str, module_dir: Path = MODULE_DIR, test: Path = SELF_TEST) -> list[str]:
    """The Slicer command line that runs ``test`` with this checkout's module loaded."""
    return [slicer, "--no-splash", "--testing", "--additional-module-paths", str(module_dir),
            "--python-code", python_code(test)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slicer", help="the Slicer launcher (Slicer-X.Y.Z-linux-amd64/Slicer)")
    ap.add_argument("--print", action="store_true", help="print the command, do not run it")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before giving up")
    args = ap.parse_args(argv)
    cmd = command(args.slicer)
    if args.print:
        print(shlex.join(cmd))
        return 0
    if not Path(args.slicer).is_file():
        print(f"slicer_selftest: {args.slicer}: no such file (give the Slicer launcher)",
              file=sys.stderr)
        return 2
    try:
        return subprocess.run(cmd, timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"slicer_selftest: Slicer did not finish in {args.timeout:g} s", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
