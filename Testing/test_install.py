"""The local-worker installer of the Slicer extension (MedSAMSegmentLib.install).

Plans are checked as data; the runner runs small real steps (``python -c``); one test
installs the worker for real into a fresh venv standing in for Slicer's Python and has it
serve /health; the worker-Python tasks run against the repo's .venv Python and a local
HTTP server standing in for Hugging Face.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import medsam_client
import medsam_server
import pytest
from conftest import REPO
from medsam_client.worker import LocalWorker
from MedSAMSegmentLib.install import (
    InstallCancelled,
    InstallError,
    InstallProgress,
    InstallRunner,
    InstallStep,
    bundled_server_source,
    bundled_server_version,
    client_source_for,
    download_checkpoint,
    inspect_python,
    list_checkpoints,
    plan_install,
)

PY = sys.executable  # the repo's .venv: medsam-server, torch and sam2 are installed
PIP = (PY, "-m", "pip", "--disable-pip-version-check", "install", "--no-warn-script-location")
POSIX = os.name == "posix"


def fresh_venv(folder: Path, *, pip: bool = True) -> str:
    """A new venv without system site packages (as Slicer's Python would be)."""
    args = [sys.executable, "-m", "venv", str(folder)] + ([] if pip else ["--without-pip"])
    subprocess.run(args, check=True, capture_output=True)
    return str(folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))


# ---- plans ----------------------------------------------------------------------------


def test_bundled_source_in_the_git_tree_is_the_repo_server():
    source = bundled_server_source()
    assert source == REPO / "server"
    assert bundled_server_version(source) == medsam_server.__version__
    assert client_source_for(source) == REPO / "client"
    # medsam-server pins the medsam-client of its own tree, at its exact version
    client_version = bundled_server_version(REPO / "client")
    assert client_version == medsam_client.__version__
    assert f'"medsam-client=={client_version}"' in (source / "pyproject.toml").read_text()


def test_plan_with_a_pinned_torch(tmp_path):
    source = bundled_server_source()
    steps = plan_install(PY, torch="torch==2.13.0", source=source, work_dir=tmp_path)
    assert [s.name for s in steps] == ["build-tools", "torch", "sam2", "medsam-client",
                                       "medsam-server"]
    tools, torch_step, sam2, client, server = steps

    # every pip call goes through the target interpreter with the version check off
    for step in steps:
        for cmd in step.commands:
            if "pip" in cmd:
                assert cmd[:6] == PIP, cmd
    assert tools.commands == ((*PIP, "setuptools>=68", "wheel"),)
    assert torch_step.commands == ((*PIP, "torch==2.13.0"),)
    assert torch_step.check == (PY, "-c", "import torch")

    assert sam2.commands == ((*PIP, "--no-deps", "--no-build-isolation", "--require-hashes",
                              "-r", str(source / "requirements-sam2.txt")),)
    assert sam2.env == {"SAM2_BUILD_CUDA": "0"}
    assert sam2.check[-1] == "sam2==1.1.0"

    copy = tmp_path / "medsam-server-src"
    (copier, installer) = server.commands
    assert copier[:2] == (PY, "-c") and copier[-2:] == (str(source), str(copy))
    assert installer == (*PIP, str(copy))  # the writable copy, never the bundle itself
    assert server.check[-1] == f"medsam-server=={medsam_server.__version__}"
    assert {"medsam_server", "medsam_client", "sam2.modeling.sam2_base"} <= set(server.check)
    # the client it depends on goes first, the same way, from ../client
    client_copy = tmp_path / "medsam-client-src"
    (copier, installer) = client.commands
    assert copier[-2:] == (str(REPO / "client"), str(client_copy))
    assert installer == (*PIP, str(client_copy))
    assert client.check[-2:] == ("medsam_client", f"medsam-client=={medsam_client.__version__}")


def test_plan_auto_torch_uses_light_the_torch(tmp_path):
    torch_step = plan_install(PY, work_dir=tmp_path)[1]
    assert torch_step.commands == (
        (*PIP, "light-the-torch>=0.7"),
        (PY, "-m", "light_the_torch", "install", "torch>=2.5"),
    )
    assert torch_step.check == (PY, "-c", "import torch")
    assert "light-the-torch" in torch_step.title


def fake_source(folder: Path, version: str) -> Path:
    """A fake medsam-server source folder, with a fake medsam-client beside it."""
    client = folder.parent / "client"
    if not client.exists():
        client.mkdir(parents=True)
        (client / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools"]\n\n[project]\nname = "medsam-client"\n'
            'version = "0.0.7"\n')
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools"]\n\n[project]\nname = "medsam-server"\n'
        f'version = "{version}"\n')
    (folder / "requirements-sam2.txt").write_text("# pinned\nsam2==1.1.0 --hash=sha256:00\n")
    return folder


def test_plan_follows_the_bundle_version(tmp_path):
    old = plan_install(PY, torch="torch", source=fake_source(tmp_path / "a", "0.1.0"),
                       work_dir=tmp_path)
    new = plan_install(PY, torch="torch", source=fake_source(tmp_path / "b", "0.2.0"),
                       work_dir=tmp_path)
    assert new[4].check[-1] == "medsam-server==0.2.0" and old[4].check[-1].endswith("0.1.0")
    assert new[4].title == "Install medsam-server 0.2.0"
    assert new[3].check[-1] == "medsam-client==0.0.7"
    assert new[3].title == "Install medsam-client 0.0.7"


def test_plan_refuses_a_broken_bundle(tmp_path):
    with pytest.raises(InstallError, match="no pinned requirement"):
        src = fake_source(tmp_path / "s", "1.0")
        (src / "requirements-sam2.txt").write_text("sam2\n")
        plan_install(PY, torch="torch", source=src, work_dir=tmp_path)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "pyproject.toml").write_text('[project]\nname = "x"\n')
    with pytest.raises(InstallError, match="no \\[project\\] version"):
        plan_install(PY, torch="torch", source=tmp_path / "t", work_dir=tmp_path)
    lone = tmp_path / "lone" / "server"
    lone.mkdir(parents=True)
    (lone / "pyproject.toml").write_text('[project]\nname = "medsam-server"\nversion = "1"\n')
    with pytest.raises(InstallError, match="medsam-client source is missing"):
        plan_install(PY, torch="torch", source=lone, work_dir=tmp_path)


def test_server_copy_is_writable_and_clean_even_from_a_read_only_bundle(tmp_path):
    src = fake_source(tmp_path / "bundle", "0.1.0")
    for sub in ("medsam_server", "medsam_server/__pycache__", "medsam_server.egg-info"):
        (src / sub).mkdir()
    (src / "medsam_server" / "__init__.py").write_text("__version__ = '0.1.0'\n")
    (src / "medsam_server" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (src / "medsam_server.egg-info" / "PKG-INFO").write_text("stale\n")
    for path in [*src.rglob("*"), src]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        copier = plan_install(PY, torch="torch", source=src, work_dir=tmp_path / "w")[4].commands[0]
        for _ in range(2):  # the second run replaces the first copy
            subprocess.run(copier, check=True, capture_output=True)
        copy = tmp_path / "w" / "medsam-server-src"
        files = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file())
        assert files == ["medsam_server/__init__.py", "pyproject.toml", "requirements-sam2.txt"]
        for path in [*copy.rglob("*"), copy]:
            assert path.stat().st_mode & stat.S_IWUSR, path
    finally:
        for path in [*src.rglob("*"), src]:
            path.chmod(0o755 if path.is_dir() else 0o644)


# ---- the runner, with small real steps --------------------------------------------------


def py_step(name: str, code: str, *, check: str | None = None, env: dict | None = None
            ) -> InstallStep:
    return InstallStep(name, f"Step {name}", commands=((PY, "-c", code),),
                       check=(PY, "-c", check) if check is not None else None, env=env or {})


def runner(steps: list[InstallStep], tmp: Path, seen: list | None = None,
           cancel: threading.Event | None = None) -> InstallRunner:
    return InstallRunner(steps, log_path=tmp / "logs" / "install.log",
                         state_path=tmp / "state" / "install.json",
                         on_progress=seen.append if seen is not None else None, cancel=cancel)


def appender(path: Path, text: str = "x") -> str:
    """Code for a step that appends to ``path`` (so we can count how often it ran)."""
    return f"open({str(path)!r}, 'a').write({text!r}); print('ran {path.name}')"


def test_runner_runs_steps_with_progress_log_and_state(tmp_path):
    steps = [
        py_step("one", "import sys; print('hello from one'); print('warn one', file=sys.stderr)"),
        py_step("two", appender(tmp_path / "two.txt")),
    ]
    seen: list[InstallProgress] = []
    runner(steps, tmp_path, seen).run()

    lines = [(p.step_index, p.step_count, p.step, p.line) for p in seen]
    assert (0, 2, "one", "hello from one") in lines
    assert (0, 2, "one", "warn one") in lines  # stderr reaches the progress too
    assert (1, 2, "two", "ran two.txt") in lines
    assert all(p.title == f"Step {p.step}" and not p.skipped for p in seen)
    assert seen[0].line.startswith("$ ") and "-c" in seen[0].line
    assert (tmp_path / "two.txt").read_text() == "x"

    log = (tmp_path / "logs" / "install.log").read_text()
    assert "step 1/2 one: Step one" in log and "step 2/2 two: Step two" in log
    assert f"$ {PY} -c " in log and "hello from one\n" in log and "warn one\n" in log
    assert log.count("--- exit status 0") == 2 and "all 2 steps done" in log
    state = json.loads((tmp_path / "state" / "install.json").read_text())
    assert set(state["done"]) == {"one", "two"} and len(state["plan"]) == 64


def test_child_environment_drops_slicers_python_settings(tmp_path, monkeypatch):
    for var in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONNOUSERSITE"):
        monkeypatch.setenv(var, "/slicer/own/python")  # a child keeping PYTHONHOME would die
    names = ["PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONNOUSERSITE", "PYTHONUNBUFFERED",
             "PIP_NO_INPUT", "SAM2_BUILD_CUDA"]
    code = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {names!r}}}))"
    seen: list[InstallProgress] = []
    runner([py_step("env", code, env={"SAM2_BUILD_CUDA": "0"})], tmp_path, seen).run()
    env = json.loads(next(p.line for p in seen if p.line.startswith("{")))
    assert env == {"PYTHONHOME": None, "PYTHONPATH": None, "PYTHONSTARTUP": None,
                   "PYTHONNOUSERSITE": None, "PYTHONUNBUFFERED": "1", "PIP_NO_INPUT": "1",
                   "SAM2_BUILD_CUDA": "0"}


def test_failing_step_names_itself_with_the_log_tail(tmp_path):
    steps = [
        py_step("ok", "print('fine')"),
        py_step("bad", "import sys\nfor i in range(30): print(f'line {i}')\nsys.exit(3)"),
        py_step("never", appender(tmp_path / "never.txt")),
    ]
    with pytest.raises(InstallError) as info:
        runner(steps, tmp_path).run()
    err = info.value
    assert err.step == "bad" and err.returncode == 3
    assert err.log_path == tmp_path / "logs" / "install.log"
    msg = str(err)
    assert "step 'bad' (Step bad) failed" in msg and "exited with status 3" in msg
    assert "line 29" in msg and "line 12" in msg and "line 5\n" not in msg  # the last 20
    assert not (tmp_path / "never.txt").exists()
    state = json.loads((tmp_path / "state" / "install.json").read_text())
    assert list(state["done"]) == ["ok"]
    assert "line 29" in err.log_path.read_text()


def test_missing_program_is_an_install_error(tmp_path):
    step = InstallStep("ghost", "Ghost", commands=((str(tmp_path / "no-python"), "-V"),))
    with pytest.raises(InstallError, match="cannot run .*no-python") as info:
        runner([step], tmp_path).run()
    assert info.value.step == "ghost"


def test_step_whose_check_passes_is_skipped(tmp_path):
    steps = [py_step("present", appender(tmp_path / "ran.txt"), check="pass")]
    seen: list[InstallProgress] = []
    runner(steps, tmp_path, seen).run()
    assert not (tmp_path / "ran.txt").exists()
    assert [(p.step, p.skipped) for p in seen] == [("present", False), ("present", True)]
    assert seen[0].line.startswith("checking") and seen[1].line.startswith("skipped")
    assert "skipped: already installed" in (tmp_path / "logs" / "install.log").read_text()


def test_step_whose_check_still_fails_afterwards_is_an_error(tmp_path):
    steps = [py_step("liar", "print('installed, honest')", check="import sys; sys.exit(1)")]
    with pytest.raises(InstallError, match="ran without errors, but its check still fails"):
        runner(steps, tmp_path).run()


def test_resume_after_a_restart_skips_steps_done(tmp_path):
    count, flag = tmp_path / "count.txt", tmp_path / "network-is-back"
    steps = [
        py_step("first", appender(count)),
        py_step("flaky", f"import os, sys; sys.exit(0 if os.path.exists({str(flag)!r}) else 1)"),
    ]
    with pytest.raises(InstallError, match="flaky"):
        runner(steps, tmp_path).run()
    assert count.read_text() == "x"

    flag.touch()  # "restart": a new runner on the same state file
    seen: list[InstallProgress] = []
    runner(steps, tmp_path, seen).run()
    assert count.read_text() == "x", "the step done before ran again"
    first = [p for p in seen if p.step == "first"]
    assert len(first) == 1 and first[0].skipped and "already done" in first[0].line
    assert any(p.step == "flaky" and not p.skipped for p in seen)

    seen.clear()
    runner(steps, tmp_path, seen).run()
    assert [(p.step, p.skipped) for p in seen] == [("first", True), ("flaky", True)]


def test_recorded_step_whose_check_fails_now_runs_again(tmp_path):
    marker = tmp_path / "installed.txt"
    steps = [py_step("pkg", appender(marker), check=f"open({str(marker)!r})")]
    runner(steps, tmp_path).run()
    marker.unlink()  # e.g. the user uninstalled the package since
    seen: list[InstallProgress] = []
    runner(steps, tmp_path, seen).run()
    assert marker.read_text() == "x" and not any(p.skipped for p in seen)


def test_changed_plan_does_not_reuse_the_old_state(tmp_path):
    count = tmp_path / "count.txt"
    runner([py_step("s", appender(count))], tmp_path).run()
    runner([py_step("s", appender(count, "y"))], tmp_path).run()  # other command: other plan
    assert count.read_text() == "xy"
    log = (tmp_path / "logs" / "install.log").read_text()
    assert "the plan changed since the last run" in log

    (tmp_path / "state" / "install.json").write_text("{not json")
    runner([py_step("s", appender(count, "y"))], tmp_path).run()
    assert count.read_text() == "xyy"
    assert "unreadable" in (tmp_path / "logs" / "install.log").read_text()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def test_cancel_terminates_a_long_step_and_keeps_done_steps(tmp_path):
    # the step starts a grandchild, as pip starts build backends: both must go
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print('pids', child.pid, flush=True)\n"
            "time.sleep(60)\n")
    steps = [py_step("quick", "print('quick')"), py_step("slow", code),
             py_step("after", appender(tmp_path / "after.txt"))]
    cancel = threading.Event()
    pids: list[int] = []
    asked: list[float] = []

    def on_progress(p: InstallProgress) -> None:
        if p.line.startswith("pids "):
            pids.append(int(p.line.split()[1]))
            asked.append(time.monotonic())
            cancel.set()

    run = InstallRunner(steps, log_path=tmp_path / "install.log",
                        state_path=tmp_path / "state.json", on_progress=on_progress,
                        cancel=cancel)
    with pytest.raises(InstallCancelled) as info:
        run.run()
    assert time.monotonic() - asked[0] < 2.0
    assert isinstance(info.value, InstallError) and str(info.value).startswith("cancelled")
    assert info.value.step == "slow"
    assert not (tmp_path / "after.txt").exists()
    assert list(json.loads((tmp_path / "state.json").read_text())["done"]) == ["quick"]
    assert "cancelled" in (tmp_path / "install.log").read_text()
    if POSIX:
        deadline = time.monotonic() + 2
        while not _gone(pids[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pids[0]), "the step's own child survived the cancel"


def test_cancel_before_the_start_runs_nothing(tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(InstallCancelled):
        runner([py_step("s", appender(tmp_path / "s.txt"))], tmp_path, cancel=cancel).run()
    assert not (tmp_path / "s.txt").exists()


# ---- the real installation --------------------------------------------------------------


def test_install_into_fresh_python_then_serve_health(tmp_path, random_checkpoint):
    """Slicer's case end to end: install everything into a bare Python, then serve from it."""
    t0 = time.monotonic()
    python = fresh_venv(tmp_path / "slicer-python")
    steps = plan_install(python, torch="torch==2.13.0", source=bundled_server_source(),
                         work_dir=tmp_path / "work")
    log, state = tmp_path / "install.log", tmp_path / "install-state.json"
    seen: list[InstallProgress] = []
    InstallRunner(steps, log_path=log, state_path=state, on_progress=seen.append).run()
    installed_s = time.monotonic() - t0
    assert not any(p.skipped for p in seen), [p.step for p in seen if p.skipped]
    assert {p.step for p in seen} == {"build-tools", "torch", "sam2", "medsam-client",
                                      "medsam-server"}

    info = inspect_python(python, expected_version=bundled_server_version())
    assert info.ok, info.message
    assert info.medsam_server == medsam_server.__version__
    assert info.torch.startswith("2.13.0") and not info.cuda
    where = subprocess.run(
        [python, "-c", "import importlib.util as u, medsam_server; "
         "print(medsam_server.__file__, u.find_spec('torchvision'))"],
        capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]})
    module_file, torchvision = where.stdout.split()
    assert Path(module_file).is_relative_to(tmp_path / "slicer-python")  # the copy, not the repo
    # two distributions: medsam-client on its own, and medsam-server depending on it
    dists = subprocess.run(
        [python, "-c", "from importlib.metadata import version, requires; "
         "print(version('medsam-client')); print(requires('medsam-server'))"],
        capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]})
    client_version, server_requires = dists.stdout.splitlines()
    assert client_version == medsam_client.__version__
    assert f"medsam-client=={client_version}" in server_requires
    assert torchvision == "None"  # sam2's metadata would have pulled it (multi-GB CUDA build)

    worker = LocalWorker(python, random_checkpoint, device="cpu", log_path=tmp_path / "w.log")
    try:
        worker.start()
        health = worker.client().health()
        assert health.status == "ok" and health.version == medsam_server.__version__
    finally:
        worker.stop()

    t1 = time.monotonic()
    seen.clear()
    InstallRunner(steps, log_path=log, state_path=state, on_progress=seen.append).run()
    rerun_s = time.monotonic() - t1
    assert [(p.step, p.skipped) for p in seen if not p.line.startswith("checking")] == [
        ("build-tools", True), ("torch", True), ("sam2", True), ("medsam-client", True),
        ("medsam-server", True)]
    assert rerun_s < 60
    print(f"\ninstall into a fresh venv: {installed_s:.1f} s; re-run, all skipped: {rerun_s:.1f} s")


# ---- the worker's Python: inspect, checkpoints -------------------------------------------


def test_inspect_the_repo_python():
    info = inspect_python(PY, expected_version=medsam_server.__version__)
    assert info.ok, info.message
    assert info.python == PY and info.medsam_server == medsam_server.__version__
    assert info.torch and info.torch.startswith("2.")
    assert f"medsam-server {medsam_server.__version__}" in info.message


def test_inspect_reports_another_medsam_server_version():
    info = inspect_python(PY, expected_version="9.9.9")
    assert not info.ok and info.medsam_server == medsam_server.__version__
    assert "needs 9.9.9" in info.message and "install the local worker again" in info.message


def test_inspect_a_bare_python_says_what_is_missing(tmp_path):
    python = fresh_venv(tmp_path / "bare", pip=False)
    info = inspect_python(python)
    assert not info.ok
    assert info.medsam_server is None and info.torch is None and not info.cuda
    for needle in ("medsam-server", "torch", "sam2", "Install the local worker",
                   "choose another Python interpreter"):
        assert needle in info.message, info.message


def test_inspect_a_missing_interpreter(tmp_path):
    info = inspect_python(str(tmp_path / "python3"))
    assert not info.ok and "cannot run" in info.message and "PythonSlicer" in info.message


def test_list_checkpoints_through_the_worker_python(tmp_path):
    (tmp_path / "MedSAM2_latest.pt").write_bytes(b"w" * 1000)
    rows = {r["name"]: r for r in list_checkpoints(PY, cache_dir=tmp_path)}
    latest = rows["MedSAM2_latest"]
    assert latest["default"] is True and latest["path"] == str(tmp_path / "MedSAM2_latest.pt")
    assert latest["size"] == 1000 and "CC-BY-SA-4.0" in latest["licence"]
    assert rows["MedSAM2_2411"]["path"] is None


def test_list_checkpoints_with_a_bare_python_is_an_install_error(tmp_path):
    python = fresh_venv(tmp_path / "bare", pip=False)
    with pytest.raises(InstallError, match="Is the local worker installed"):
        list_checkpoints(python)


FILE_PATH = "/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt"


class _Hub(BaseHTTPRequestHandler):
    """Serves MedSAM2_latest.pt as Hugging Face does (sha256 etag, Range), ``delay`` per 16 KB."""

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        hub = self.server
        rng = self.headers.get("Range")
        hub.ranges.append(rng)
        if self.path != FILE_PATH:
            self.send_error(404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0
        body = hub.data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(hub.data) - 1}/{len(hub.data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Linked-Etag", f'"{hashlib.sha256(hub.data).hexdigest()}"')
        self.end_headers()
        try:
            for i in range(0, len(body), 16384):
                self.wfile.write(body[i:i + 16384])
                self.wfile.flush()
                time.sleep(hub.delay)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was cancelled


@pytest.fixture
def hub():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    httpd.daemon_threads = True
    httpd.data, httpd.delay, httpd.ranges = os.urandom(1_000_000), 0.0, []
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_download_checkpoint_with_progress(hub, tmp_path):
    calls: list[tuple[int, int | None]] = []
    notes: list[str] = []
    path = download_checkpoint(PY, "MedSAM2_latest", on_progress=lambda d, t: calls.append((d, t)),
                               cancel=None, log_path=tmp_path / "download.log",
                               cache_dir=tmp_path / "cache", base_url=hub.base_url,
                               on_message=notes.append)
    assert path == tmp_path / "cache" / "MedSAM2_latest.pt"
    assert path.read_bytes() == hub.data
    assert (tmp_path / "cache" / "MedSAM2_latest.pt.sha256").is_file()
    assert calls[-1] == (len(hub.data), len(hub.data))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(notes) == 1 and "CC-BY-SA-4.0" in notes[0]
    log = (tmp_path / "download.log").read_text()
    assert "download MedSAM2_latest" in log and "--progress-json" in log


def test_download_checkpoint_errors_carry_the_servers_message(hub, tmp_path):
    kw = {"on_progress": None, "cancel": None, "log_path": tmp_path / "d.log",
          "cache_dir": tmp_path / "cache", "base_url": hub.base_url}
    with pytest.raises(InstallError, match="unknown MedSAM2 release 'MedSAM3'") as info:
        download_checkpoint(PY, "MedSAM3", **kw)
    assert info.value.returncode == 2 and info.value.log_path == tmp_path / "d.log"
    with pytest.raises(InstallError, match="download of MedSAM2_2411 failed: .*HTTP 404"):
        download_checkpoint(PY, "MedSAM2_2411", **kw)


def test_cancelled_download_stops_at_once_and_resumes_later(hub, tmp_path):
    hub.delay = 0.05  # 1 MB in 16 KB pieces: about 3 s
    cancel = threading.Event()
    asked: list[float] = []

    def on_progress(done: int, total: int | None) -> None:
        if not cancel.is_set():
            asked.append(time.monotonic())
            cancel.set()

    kw = {"log_path": tmp_path / "d.log", "cache_dir": tmp_path / "cache",
          "base_url": hub.base_url}
    with pytest.raises(InstallCancelled, match="resumes") as info:
        download_checkpoint(PY, "MedSAM2_latest", on_progress=on_progress, cancel=cancel, **kw)
    assert time.monotonic() - asked[0] < 2.0
    assert info.value.step == "download MedSAM2_latest"
    part = tmp_path / "cache" / "MedSAM2_latest.pt.part"
    assert not (tmp_path / "cache" / "MedSAM2_latest.pt").exists()
    kept = part.stat().st_size  # progress is reported after each 64 KB written
    assert 0 < kept < len(hub.data)

    hub.delay = 0.0
    path = download_checkpoint(PY, "MedSAM2_latest", on_progress=None, cancel=None, **kw)
    assert path.read_bytes() == hub.data
    assert hub.ranges == [None, f"bytes={kept}-"]  # resumed from what the .part held
