"""Install the local inference worker into a Python interpreter, in resumable steps.

The worker runs in its own Python (by default Slicer's ``PythonSlicer``, or one the user
picks), which needs torch, Meta's sam2, medsam-client and medsam-server (which depends on
that exact medsam-client: both come from the extension's bundle, client first). ``plan_install`` lists the steps
(pure: nothing runs), ``InstallRunner`` runs them with that interpreter's pip, logs every
line and records finished steps, so a run cut short by a crash, a cancel or a restart of
Slicer continues where it stopped, and a finished installation re-checks in seconds.

Pure Python (stdlib + subprocess + threading): the settings panel calls these from a
background thread and shows the progress callbacks. The worker-Python tasks (inspect it,
list and download checkpoints) live in ``worker_tasks.py`` and are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .worker_tasks import (
    InstallCancelled,
    InstallError,
    LogFile,
    WorkerPythonInfo,
    brief,
    child_env,
    default_worker_python,
    download_checkpoint,
    inspect_python,
    list_checkpoints,
    run_logged,
    shown,
)

__all__ = [
    "InstallCancelled", "InstallError", "InstallProgress", "InstallRunner", "InstallStep",
    "WorkerPythonInfo", "bundled_server_source", "bundled_server_version", "client_source_for",
    "default_worker_python", "download_checkpoint", "inspect_python", "list_checkpoints",
    "plan_install",
]

TORCH_REQUIREMENT = "torch>=2.5"  # as medsam-server's pyproject.toml
LTT_REQUIREMENT = "light-the-torch>=0.7"
BUILD_TOOLS = ("setuptools>=68", "wheel")  # sam2 is built without build isolation
CHECK_TIMEOUT_S = 300.0  # a first "import torch" on a slow disk can take a minute
SERVER_COPY = "medsam-server-src"
CLIENT_COPY = "medsam-client-src"

# Steps' checks run in the target interpreter, which may be old: plain Python 3 only.
# Arguments: "dist==version" must be installed at exactly that version; others are imported.
_CHECK_INSTALLED = """\
import importlib, sys
from importlib.metadata import version
for arg in sys.argv[1:]:
    if "==" in arg:
        dist, want = arg.split("==")
        have = version(dist)
        if have != want:
            sys.exit("%s %s is installed, %s is wanted" % (dist, have, want))
    else:
        importlib.import_module(arg)
"""
_CHECK_BUILD_TOOLS = """\
import setuptools, sys, wheel
sys.exit("setuptools %s is older than 68" % setuptools.__version__
         if int(setuptools.__version__.split(".")[0]) < 68 else 0)
"""
# A writable copy with writable files: pip builds in the source folder, and an installed
# extension's folder (and so a copy that kept its permissions) may be read-only.
_COPY_SOURCE = """\
import os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
if os.path.exists(dst):
    shutil.rmtree(dst)
for root, dirs, files in os.walk(src):
    dirs[:] = [d for d in dirs if d not in ("build", "dist", "__pycache__", ".pytest_cache")
               and not d.endswith(".egg-info")]
    out = os.path.join(dst, os.path.relpath(root, src))
    os.makedirs(out)
    for name in files:
        if not name.endswith(".pyc"):
            shutil.copyfile(os.path.join(root, name), os.path.join(out, name))
print("copied %s to %s" % (src, dst))
"""


@dataclass(frozen=True)
class InstallStep:
    """One step: ``commands`` run in order; ``check`` exiting 0 means it is already done."""

    name: str
    title: str
    commands: tuple[tuple[str, ...], ...]
    check: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:  # accept lists; store tuples of str
        object.__setattr__(self, "commands",
                           tuple(tuple(str(a) for a in cmd) for cmd in self.commands))
        if self.check is not None:
            object.__setattr__(self, "check", tuple(str(a) for a in self.check))
        object.__setattr__(self, "env", dict(self.env))


@dataclass
class InstallProgress:
    """One progress report: ``step_index`` counts from 0; ``line`` is one line of output."""

    step_index: int
    step_count: int
    step: str
    title: str
    line: str
    skipped: bool = False


# ---- the plan ----------------------------------------------------------------------------


def bundled_server_source() -> Path:
    """The medsam-server source the extension ships (installed) or the repo's (git tree).

    Both lay the two distributions out alike: ``<root>/server`` and ``<root>/client``.
    """
    here = Path(__file__).resolve().parent
    candidates = (here / "server_bundle" / "server", here.parents[1] / "server")
    for folder in candidates:
        if (folder / "pyproject.toml").is_file():
            return folder
    raise InstallError("the medsam-server source is missing from this extension (looked in "
                       f"{' and '.join(map(str, candidates))}); reinstall the MedSAMSegment "
                       "extension")


def client_source_for(server_source: Path) -> Path:
    """The medsam-client source beside a medsam-server source (``../client``)."""
    folder = Path(server_source).parent / "client"
    if not (folder / "pyproject.toml").is_file():
        raise InstallError(f"the medsam-client source is missing beside {server_source} (no "
                           f"{folder / 'pyproject.toml'}); reinstall the MedSAMSegment extension")
    return folder


def bundled_server_version(source: Path | None = None) -> str:
    """The ``[project] version`` of the bundled medsam-server's (or any) pyproject.toml."""
    pyproject = Path(source or bundled_server_source()) / "pyproject.toml"
    # a regex, not tomllib: Slicer's Python may predate 3.11
    match = re.search(r'^\[project\][^\[]*?^version\s*=\s*"([^"]+)"',
                      pyproject.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    if match is None:
        raise InstallError(f"no [project] version in {pyproject}; reinstall the extension")
    return match.group(1)


def _pins(requirements: Path) -> list[str]:
    """The ``name==version`` pins of a requirements file (what its step must leave)."""
    pins = []
    for line in requirements.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if match:
            pins.append(f"{match.group(1)}=={match.group(2)}")
    if not pins:
        raise InstallError(f"no pinned requirement (name==version) in {requirements}")
    return pins


def plan_install(python: str, *, torch: str = "auto", source: Path | None = None,
                 work_dir: Path) -> list[InstallStep]:
    """The steps that give ``python`` everything the local worker needs (nothing runs).

    ``torch="auto"``: light-the-torch picks the CUDA or CPU build that fits this machine's
    NVIDIA driver (as Slicer's PyTorch extension does); any other value is a pip
    requirement used as it is (``"torch==2.13.0"``). ``source``: medsam-server's source
    folder (default: the bundled one), with medsam-client's beside it (``../client``);
    ``work_dir``: a writable folder for their build copies.
    """
    if not python or not torch:
        raise ValueError("plan_install needs a Python interpreter and a torch requirement")
    source = Path(source) if source is not None else bundled_server_source()
    version = bundled_server_version(source)
    client = client_source_for(source)
    client_version = bundled_server_version(client)
    requirements = source / "requirements-sam2.txt"
    pins = _pins(requirements)
    copy = Path(work_dir) / SERVER_COPY
    client_copy = Path(work_dir) / CLIENT_COPY
    pip = (python, "-m", "pip", "--disable-pip-version-check", "install",
           "--no-warn-script-location")

    if torch == "auto":
        torch_step = InstallStep(
            "torch", "Install PyTorch (light-the-torch picks the build for this computer's GPU)",
            commands=((*pip, LTT_REQUIREMENT),
                      (python, "-m", "light_the_torch", "install", TORCH_REQUIREMENT)),
            check=(python, "-c", "import torch"))
    else:
        torch_step = InstallStep("torch", f"Install PyTorch ({torch})", commands=((*pip, torch),),
                                 check=(python, "-c", "import torch"))
    return [
        InstallStep("build-tools", "Install build tools (setuptools, wheel)",
                    commands=((*pip, *BUILD_TOOLS),),
                    check=(python, "-c", _CHECK_BUILD_TOOLS)),
        torch_step,
        # sam2 is imported only after medsam-server brings its dependencies (hydra):
        # its own check looks at the installed version alone.
        InstallStep("sam2", f"Install Meta's SAM2 code ({', '.join(pins)})",
                    commands=((*pip, "--no-deps", "--no-build-isolation", "--require-hashes",
                               "-r", str(requirements)),),
                    check=(python, "-c", _CHECK_INSTALLED, *pins),
                    env={"SAM2_BUILD_CUDA": "0"}),  # pure Python: no CUDA toolkit needed
        # medsam-server pins this exact medsam-client: installed first, pip finds it there
        InstallStep("medsam-client", f"Install medsam-client {client_version}",
                    commands=((python, "-c", _COPY_SOURCE, str(client), str(client_copy)),
                              (*pip, str(client_copy))),
                    check=(python, "-c", _CHECK_INSTALLED, "medsam_client",
                           f"medsam-client=={client_version}")),
        InstallStep("medsam-server", f"Install medsam-server {version}",
                    commands=((python, "-c", _COPY_SOURCE, str(source), str(copy)),
                              (*pip, str(copy))),
                    check=(python, "-c", _CHECK_INSTALLED, "medsam_server", "medsam_client",
                           "sam2.modeling.sam2_base", f"medsam-server=={version}")),
    ]


def plan_fingerprint(steps: Iterable[InstallStep]) -> str:
    """Changes whenever any step's commands, check or environment change."""
    plan = [[s.name, s.commands, s.check, sorted(s.env.items())] for s in steps]
    return hashlib.sha256(json.dumps(plan).encode()).hexdigest()


# ---- running it --------------------------------------------------------------------------


class InstallRunner:
    """Runs install steps with a log, progress callbacks, cancel and resume.

    A step is skipped when its check passes, or when it has no check and ``state_path``
    records it as done for this same plan. Every command's output is appended to
    ``log_path``; ``on_progress`` hears each line (from the thread calling ``run``).
    """

    def __init__(self, steps: Iterable[InstallStep], *, log_path: Path, state_path: Path,
                 on_progress: Callable[[InstallProgress], None] | None = None,
                 cancel: threading.Event | None = None) -> None:
        self.steps = list(steps)
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names must be unique: {names}")
        self.log_path = Path(log_path)
        self.state_path = Path(state_path)
        self.on_progress = on_progress
        self.cancel = cancel
        self.fingerprint = plan_fingerprint(self.steps)

    def run(self) -> None:
        """Run every step not done yet; raises InstallError (InstallCancelled on cancel)."""
        with LogFile(self.log_path) as log:
            log.write(f"\n===== {_now()} installing {len(self.steps)} steps "
                      f"(plan {self.fingerprint[:12]})")
            done = self._load_state(log)
            for index, step in enumerate(self.steps):
                if self.cancel is not None and self.cancel.is_set():
                    raise InstallCancelled(f"cancelled before step '{step.name}'; completed "
                                           "steps are kept, run it again to continue",
                                           step=step.name, log_path=self.log_path)
                self._run_step(index, step, done, log)
            log.write(f"===== {_now()} all {len(self.steps)} steps done")

    def _report(self, index: int, step: InstallStep, line: str, skipped: bool = False) -> None:
        if self.on_progress is not None:
            self.on_progress(InstallProgress(index, len(self.steps), step.name, step.title,
                                             line, skipped))

    def _run_step(self, index: int, step: InstallStep, done: dict, log: LogFile) -> None:
        log.write(f"=== {_now()} step {index + 1}/{len(self.steps)} {step.name}: {step.title}")
        if step.env:
            log.write("env: " + " ".join(f"{k}={v}" for k, v in sorted(step.env.items())))
        if step.check is not None:  # a check can take seconds (import torch): say so
            self._report(index, step, "checking whether it is installed already")
        if step.check is not None and self._check(step, log):
            reason = "already installed (its check passes)"
        elif step.check is None and step.name in done:
            reason = f"already done on {done[step.name]['finished']}"
        else:
            reason = None
        if reason is not None:
            log.write(f"skipped: {reason}")
            self._report(index, step, f"skipped: {reason}", skipped=True)
            self._record(done, step, 0.0, skipped=True)
            return

        start, offset = time.monotonic(), log.offset()
        for cmd in step.commands:
            self._report(index, step, f"$ {brief(cmd)}")
            try:
                rc = run_logged(cmd, env=child_env(step.env), log=log, cancel=self.cancel,
                                on_line=lambda line: self._report(index, step, line))
            except InstallCancelled:
                raise InstallCancelled(
                    f"cancelled during step '{step.name}' ({step.title}); completed steps are "
                    "kept, run it again to continue", step=step.name,
                    log_path=self.log_path) from None
            except InstallError as exc:
                raise InstallError(f"step '{step.name}' ({step.title}) failed: {exc}",
                                   step=step.name, log_path=self.log_path) from None
            if rc != 0:
                raise InstallError(
                    f"step '{step.name}' ({step.title}) failed: {shown(cmd)} exited with status "
                    f"{rc}. Last lines of {self.log_path}:\n{log.tail(offset)}",
                    step=step.name, returncode=rc, log_path=self.log_path)
        if step.check is not None and not self._check(step, log):
            raise InstallError(
                f"step '{step.name}' ({step.title}) ran without errors, but its check still "
                f"fails. Last lines of {self.log_path}:\n{log.tail(offset)}",
                step=step.name, log_path=self.log_path)
        self._record(done, step, time.monotonic() - start, skipped=False)
        self._report(index, step, f"done in {time.monotonic() - start:.0f} s")

    def _check(self, step: InstallStep, log: LogFile) -> bool:
        log.write("check:")
        try:
            rc = run_logged(step.check, env=child_env(step.env), log=log, cancel=self.cancel,
                            timeout=CHECK_TIMEOUT_S)
        except InstallCancelled:
            raise InstallCancelled(f"cancelled while checking step '{step.name}'",
                                   step=step.name, log_path=self.log_path) from None
        except InstallError as exc:
            raise InstallError(f"step '{step.name}': {exc}", step=step.name,
                               log_path=self.log_path) from None
        except subprocess.TimeoutExpired:
            return False  # a check that hangs has not passed; the log says so
        return rc == 0

    # ---- state: {"plan": fingerprint, "done": {step: {"finished", "seconds", "skipped"}}}
    def _load_state(self, log: LogFile) -> dict:
        if not self.state_path.is_file():
            return {}
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            plan, done = state["plan"], dict(state["done"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.write(f"the state file {self.state_path} is unreadable ({exc}); starting over")
            return {}
        if plan != self.fingerprint:
            log.write("the plan changed since the last run: its recorded steps are not reused")
            return {}
        if done:
            log.write(f"recorded as done before: {', '.join(done)}")
        return done

    def _record(self, done: dict, step: InstallStep, seconds: float, skipped: bool) -> None:
        done[step.name] = {"finished": _now(), "seconds": round(seconds, 1), "skipped": skipped}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps({"plan": self.fingerprint, "done": done}, indent=1),
                       encoding="utf-8")
        os.replace(tmp, self.state_path)  # atomic: a crash never leaves half a state file


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
