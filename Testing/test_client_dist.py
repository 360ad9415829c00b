"""medsam-client on its own: a fresh venv with only ``pip install client/`` (numpy and
requests come with it; no torch, no sam2, no medsam-server) segments through a running
server, and its result equals the engine's in process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from conftest import REPO, shared

CT = "totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz"
KEY, BOX = 3, (45, 27, 104, 85)
WINDOW = (40.0, 400.0)

SCRIPT = """
    import importlib.util, json, sys
    from importlib.metadata import distributions
    import numpy as np
    from medsam_client.client import MedSAMClient, slice_mask

    url, token, volume, out = sys.argv[1:5]
    with MedSAMClient(url, token) as client:
        session = client.upload(np.load(volume), modality="ct", window=(40.0, 400.0))
        first = slice_mask(client.prompt(session, 1, "k", 3, box=(45, 27, 104, 85)))
        job = client.propagate(session, [1])
        np.save(out, client.object_mask(session, 1))
        client.close_session(session)
    print(json.dumps({
        "job": job.state, "first_slice_voxels": int(first.sum()),
        "missing": [m for m in ("torch", "sam2", "medsam_server", "fastapi")
                    if importlib.util.find_spec(m) is None],
        "dists": sorted(d.metadata["Name"].lower() for d in distributions()),
    }))
"""


def test_a_venv_with_only_medsam_client_segments_through_a_server(server, engine,
                                                                  tmp_path: Path) -> None:
    from medsam_server.engine.preprocess import window_to_uint8
    from medsam_server.engine.prompts import Prompt
    from medsam_server.engine.session import Session
    from medsam_server.io.volumes import read_volume

    crop = np.ascontiguousarray(read_volume(shared(CT)).array[11:17])
    np.save(tmp_path / "crop.npy", crop)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True,
                   capture_output=True)
    python = str(tmp_path / "venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    source = shutil.copytree(REPO / "client", tmp_path / "client-src")  # pip builds in place
    pip = subprocess.run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q",
                          str(source)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr

    run = subprocess.run([python, "-c", textwrap.dedent(SCRIPT), server.url, server.token,
                          str(tmp_path / "crop.npy"), str(tmp_path / "mask.npy")],
                         capture_output=True, text=True, timeout=300,
                         env={"PATH": os.environ["PATH"]})  # nothing of this venv leaks in
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["job"] == "done" and result["first_slice_voxels"] > 0
    assert result["missing"] == ["torch", "sam2", "medsam_server", "fastapi"]
    assert "medsam-client" in result["dists"] and "medsam-server" not in result["dists"]
    assert {"numpy", "requests"} <= set(result["dists"])

    reference = Session(engine, window_to_uint8(crop, "ct", WINDOW))
    reference.add_prompt(1, "k", KEY, Prompt(box=BOX))
    reference.propagate(1)
    np.testing.assert_array_equal(np.load(tmp_path / "mask.npy"), reference.mask(1))
