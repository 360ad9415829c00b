"""Shared fixtures: real data from ../shared/data, a seeded random-weight MedSAM2 checkpoint."""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "bench"))  # the stock-predictor baseline lives there
# The Slicer side imports its package as Slicer does: from the module folder on sys.path.
sys.path.insert(0, str(REPO / "MedSAMSegment"))


ERROR_PREFIX = "medsam-server: error:"


def cli(*argv: object) -> tuple[int, str, str]:
    """Run ``medsam-server ARGV`` in this process; (exit code, stdout, stderr)."""
    from medsam_server.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def run_concurrently(fn: Callable[[int], object], n: int, timeout: float) -> dict[int, object]:
    """``fn(0)`` .. ``fn(n-1)`` on n threads at once; their results, or the first error
    raised in any of them (re-raised here, not lost in its thread)."""
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]
    assert len(results) == n, f"{n - len(results)} thread(s) still running after {timeout} s"
    return results


def shared(relative: str) -> Path:
    """A file in ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real test data {path} is absent (expected ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random weights of the exact MedSAM2 architecture, in the released layout."""
    from medsam_server.engine.model import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "medsam2_random_seed0.pt",
                                   seed=0)


@pytest.fixture(scope="module")
def server(random_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A real medsam-server process on loopback (LocalWorker), one per test module."""
    from medsam_client.worker import LocalWorker

    w = LocalWorker(sys.executable, random_checkpoint, device="cpu", startup_timeout=120,
                    log_path=tmp_path_factory.mktemp("server") / "server.log")
    with w:
        yield w


@pytest.fixture(scope="session")
def engine(random_checkpoint: Path):  # noqa: ANN201
    from medsam_server.engine.engine import Engine

    return Engine.from_checkpoint(random_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def ct_u8() -> np.ndarray:
    """The TotalSegmentator abdomen CT (30×101×122), soft-tissue windowed to uint8."""
    from medsam_server.engine.preprocess import window_to_uint8
    from medsam_server.io.volumes import read_volume

    vol = read_volume(shared("totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"))
    return window_to_uint8(vol.array, "ct", (40.0, 400.0))


@pytest.fixture(scope="session")
def liver_box() -> tuple[int, tuple[int, int, int, int]]:
    """Key slice 14 and the reference liver's box there, (x0, y0, x1, y1) in voxels."""
    return 14, (45, 27, 104, 85)


@pytest.fixture(scope="session")
def _torch_default_threads() -> int:
    import torch

    return torch.get_num_threads()


@pytest.fixture(scope="module", autouse=True)
def _torch_threads_kept(_torch_default_threads: int):
    """A command run in-process with ``--threads N`` sets torch's process-wide thread count,
    and fp32 sums (so mask borders) depend on it: a later module comparing in-process results
    with a server's differed by a few voxels. Each module starts with torch's default (a
    module's own fixtures and tests share what they set, as they compare among themselves)."""
    yield
    torch = sys.modules["torch"]
    if torch.get_num_threads() != _torch_default_threads:
        torch.set_num_threads(_torch_default_threads)


@pytest.fixture(scope="session", autouse=True)
def _close_slicer_scenes():
    """Slicer scenes are taken apart in order at the end (see slicer_harness.Scene.close)."""
    yield
    harness = sys.modules.get("slicer_harness")
    if harness is not None:
        harness.close_all()
