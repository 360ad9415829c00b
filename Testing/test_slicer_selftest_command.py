"""The command that runs the Slicer self-test (scripts/slicer_selftest.py), the same one the
GitHub workflow runs, built as Slicer's ``slicer_add_python_unittest`` builds it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import slicer_selftest  # noqa: E402


def test_the_command_is_slicers_unittest_macro_for_this_module():
    cmd = slicer_selftest.command("/opt/Slicer/Slicer")
    assert cmd[:3] == ["/opt/Slicer/Slicer", "--no-splash", "--testing"]
    assert cmd[cmd.index("--additional-module-paths") + 1] == str(ROOT / "MedSAMSegment")
    code = cmd[cmd.index("--python-code") + 1]
    tree = ast.parse(code)  # valid Python, two statements as the macro's "\\;" makes them
    assert len(tree.body) == 2
    call = tree.body[1].value
    assert ast.unparse(call.func) == "slicer.testing.runUnitTest"
    folder, name = (ast.literal_eval(a) for a in call.args)
    assert (Path(folder[0]) / f"{name}.py").is_file()  # the self-test exists there
    assert name == "MedSAMSegmentSelfTest"
    assert (ROOT / "MedSAMSegment" / "MedSAMSegment.py").is_file()  # the module is there


def test_print_shows_it_and_a_missing_slicer_is_refused(tmp_path):
    script = ROOT / "scripts" / "slicer_selftest.py"
    shown = subprocess.run([sys.executable, script, "/opt/Slicer/Slicer", "--print"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--additional-module-paths" in shown.stdout
    missing = subprocess.run([sys.executable, script, str(tmp_path / "Slicer")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_the_workflow_runs_the_documented_command():
    workflow = (ROOT / ".github" / "workflows" / "slicer.yml").read_text()
    doc = (ROOT / "docs" / "development.md").read_text()
    run = re.search(r"run: xvfb-run -a (python3 scripts/slicer_selftest\.py) \S+", workflow)
    assert run, "the workflow does not run scripts/slicer_selftest.py"
    assert run.group(1) in doc
    assert '"5.10.0"' in workflow and '"latest"' in workflow
    assert "on: [push, pull_request]" in workflow and "actions/cache" in workflow


def test_the_workflow_is_valid_yaml_with_both_slicers():
    yaml = __import__("yaml")
    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "slicer.yml").read_text())
    job = flow["jobs"]["selftest"]
    assert job["strategy"]["matrix"]["slicer"] == ["5.10.0", "latest"]
    steps = [s.get("run", "") for s in job["steps"]]
    assert any("download.slicer.org/download?os=linux&stability=release" in s for s in steps)
