"""``medsam-server segment --time --phase P --server URL``: a small 3D + time volume (the real
abdomen CT, three slices, shifted per phase: ``test_time_phases``' builder) goes to a REAL
medsam-server process (random-weight checkpoint, CPU, fp32) as one 3D + time session; the
4D labels it writes equal the in-process path's on the same checkpoint, with no torch in the
client process; a server without capability "phases" is refused before any upload."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer

import numpy as np
import SimpleITK as sitk
import test_time_phases
import test_time_remote
from conftest import ERROR_PREFIX, cli
from test_time_phases import BOX, KEY_PHASE, KEY_SLICE
from test_time_remote import LOCAL, _NoTime

# their fixtures: the 3D + time volume, and the live server (fp32, CPU)
ct, four_d, live = test_time_phases.ct, test_time_phases.four_d, test_time_remote.live

SPLEEN = (15.0, 50.0, 45.0, 90.0)  # a second box on the key slice, apart from the liver's


def remote(*argv: object) -> tuple[int, str, bool]:
    """The CLI in a fresh process: (exit code, stderr, whether torch got imported)."""
    code = ("import sys; from medsam_server.cli.main import main; rc = main(sys.argv[1:]); "
            "print('torch' in sys.modules); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True,
                         text=True, timeout=600)
    return out.returncode, out.stderr, out.stdout.strip() == "True"


def test_two_objects_remote_matches_local_without_torch(live, four_d, random_checkpoint,
                                                        tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"objects": [
        {"label": 1, "name": "liver", "slice": KEY_SLICE, "box": list(BOX)},
        {"label": 2, "name": "other", "slice": KEY_SLICE, "box": list(SPLEEN)}]}))
    args = [four_d, "--time", "--phase", KEY_PHASE, "--prompts", prompts]
    local, far = tmp_path / "local.nii.gz", tmp_path / "remote.nii.gz"
    rc, _, err = cli("segment", *args, "--checkpoint", random_checkpoint, *LOCAL, "--quiet",
                     "-o", local)
    assert rc == 0, err
    rc, err, torch = remote("segment", *args, "--server", live.url, f"--token={live.token}",
                            "-o", far)
    assert rc == 0, err
    assert not torch  # the --server path needs no torch
    assert f"at {live.url}" in err and "uploading the phases" in err
    # random weights: the liver covers most of the slice, so the second object loses voxels
    # to it; the local path carries what it keeps, the server its whole mask (the note)
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith("note: other: "), err
    a, b = sitk.ReadImage(str(local)), sitk.ReadImage(str(far))
    expected, got = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
    assert expected.shape == (3, 3, 101, 122)
    others = np.delete(expected, KEY_PHASE, axis=0)
    for label in (1, 2):  # the premise: both objects segmented and carried along time
        assert (expected[KEY_PHASE] == label).any() and (others == label).any(), label
    np.testing.assert_array_equal(got[KEY_PHASE], expected[KEY_PHASE])  # the key phase: all
    np.testing.assert_array_equal(got == 1, expected == 1)  # the first object: every phase
    assert b.GetSpacing() == a.GetSpacing() and b.GetOrigin() == a.GetOrigin()
    assert b.GetDirection() == a.GetDirection()
    assert b.GetSpacing()[:3] == sitk.ReadImage(four_d).GetSpacing()[:3]


def test_forward_stop_after_empty_sequence_remote_equals_local(live, four_d, random_checkpoint,
                                                               tmp_path):
    args = [four_d, "--time", "--phase", KEY_PHASE, "--slice", KEY_SLICE, "--box", *BOX,
            "--direction", "forward", "--stop-after-empty", 1]
    local, far = tmp_path / "local.seq.nrrd", tmp_path / "remote.seq.nrrd"
    rc, _, err = cli("segment", *args, "--checkpoint", random_checkpoint, *LOCAL, "--quiet",
                     "-o", local)
    assert rc == 0, err
    rc, _, err = cli("segment", *args, "--server", live.url, f"--token={live.token}",
                     "--quiet", "-o", far)
    assert rc == 0, err
    import nrrd

    expected, header = nrrd.read(str(local))  # (phases, i, j, k)
    assert expected.shape == (3, 122, 101, 3)
    assert not expected[0].any() and expected[2].any()  # forward from phase 1
    got, got_header = nrrd.read(str(far))
    np.testing.assert_array_equal(got, expected)
    for field in ("space origin", "space directions"):  # the phases' grid
        np.testing.assert_array_equal(np.asarray(got_header[field], dtype=float),
                                      np.asarray(header[field], dtype=float))


class _NoPhases(_NoTime):
    info: dict = {}
    seen: list[str] = []


def test_a_server_without_phases_is_refused_before_the_upload(live, four_d, tmp_path):
    import requests

    info = requests.get(f"{live.url}/info", timeout=30,
                        headers={"Authorization": f"Bearer {live.token}"}).json()
    assert "phases" in info["capabilities"]  # the premise: the real server's info, less it
    _NoPhases.info = {**info, "capabilities": [c for c in info["capabilities"]
                                               if c != "phases"]}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _NoPhases)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "out.seq.nrrd"
        rc, _, err = cli("segment", four_d, "--time", "--phase", KEY_PHASE, "--slice",
                         KEY_SLICE, "--box", *BOX, "--server",
                         f"http://127.0.0.1:{httpd.server_port}", "--token", "t", "--quiet",
                         "-o", out)
    finally:
        httpd.shutdown()
        httpd.server_close()
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), err
    assert "has no 3D + time sessions (capability 'phases')" in lines[0]
    assert _NoPhases.seen == ["GET /info"]  # nothing uploaded
    assert not out.exists() and list(tmp_path.iterdir()) == []
