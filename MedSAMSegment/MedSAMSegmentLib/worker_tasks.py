"""Run the worker's Python for the settings panel: inspect it, list and download checkpoints.

Everything here blocks and is meant for a background thread; nothing imports qt, slicer or
torch. The worker's interpreter is a separate program (by default Slicer's ``PythonSlicer``),
so we only ever talk to it through subprocesses, with Slicer's own Python settings removed
from the environment. ``install.py`` builds the installer on the helpers below.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from medsam_client.worker import _DROP_ENV

TAIL_LINES = 20
KILL_GRACE_S = 5.0
ERROR_PREFIX = "medsam-server: error:"  # how medsam-server's CLI reports a user error
_WINDOWS = os.name == "nt"
_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)


class InstallError(Exception):
    """An installation step or worker task failed; the message says what to do next.

    ``step``: the step's name; ``returncode``: the failed command's exit status;
    ``log_path``: where the full output is.
    """

    def __init__(self, message: str, *, step: str | None = None, returncode: int | None = None,
                 log_path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.returncode = returncode
        self.log_path = Path(log_path) if log_path is not None else None


class InstallCancelled(InstallError):
    """The user cancelled; what was completed stays recorded and a re-run continues."""


# ---- child processes ---------------------------------------------------------------------


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the worker's Python: without Slicer's Python settings."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env["PYTHONUNBUFFERED"] = "1"  # output lines arrive as they happen
    env["PIP_NO_INPUT"] = "1"  # pip must never wait for an answer nobody can type
    env["PYTHONIOENCODING"] = "utf-8"  # we decode as utf-8, whatever the console code page
    env.update(extra or {})
    return env


def shown(argv: Sequence[str]) -> str:
    """A command as the user would type it in their shell."""
    return subprocess.list2cmdline(argv) if _WINDOWS else shlex.join(argv)


def brief(argv: Sequence[str]) -> str:
    """``shown`` with inline scripts elided, for one-line progress displays."""
    return shown([a if "\n" not in a else f"<{a.count(chr(10))}-line script>" for a in argv])


def terminate_tree(proc: subprocess.Popen) -> None:
    """Stop a child and what it started (pip runs build backends in their own processes)."""
    if proc.poll() is not None:
        return
    if _WINDOWS:
        subprocess.run(["taskkill", "/PID", str(proc.pid), "/T", "/F"], capture_output=True,
                       creationflags=_NO_WINDOW, check=False)
    else:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: pid == process group
        except ProcessLookupError:
            pass
    try:
        proc.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        if _WINDOWS:
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(KILL_GRACE_S)


def _popen_options() -> dict:
    if _WINDOWS:
        return {"creationflags": _NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}  # so terminate_tree reaches the whole group


class LogFile:
    """The append-only install log; ``tail(offset)`` gives a step's last lines for errors."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] = open(self.path, "ab")  # closed by close() / the with block

    def write(self, line: str) -> None:
        self._fh.write((line.rstrip("\n") + "\n").encode("utf-8", errors="replace"))
        self._fh.flush()  # the user may be reading it while a step runs

    def offset(self) -> int:
        return self._fh.tell()

    def tail(self, offset: int, lines: int = TAIL_LINES) -> str:
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", errors="replace")
        return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> LogFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pump(stream: IO[bytes], lines: queue.Queue) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw)
    lines.put(None)


def _decode(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    return text.rsplit("\r", 1)[-1]  # a progress bar redrawn with \r: keep what it shows last


def run_logged(argv: Sequence[str], *, env: Mapping[str, str], log: LogFile,
               on_line: Callable[[str], None] | None = None,
               cancel: threading.Event | None = None, timeout: float | None = None) -> int:
    """Run ``argv``, copying each output line (stdout and stderr) to the log and ``on_line``.

    Returns the exit status. ``cancel`` set: the process tree is terminated and
    InstallCancelled raised; past ``timeout`` s it is terminated and TimeoutExpired raised.
    """
    argv = [str(a) for a in argv]
    log.write(f"$ {shown(argv)}")
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=dict(env), **_popen_options())
    except OSError as exc:
        log.write(f"--- cannot run it: {exc}")
        raise InstallError(f"cannot run {argv[0]}: {exc}. Check that this Python interpreter "
                           "exists, or choose another one", log_path=log.path) from None
    lines: queue.Queue[bytes | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        while True:
            if cancel is not None and cancel.is_set():
                log.write("--- cancelled: stopping it")
                raise InstallCancelled("cancelled", log_path=log.path)
            if timeout is not None and time.monotonic() - start > timeout:
                log.write(f"--- no answer within {timeout:g} s: stopping it")
                raise subprocess.TimeoutExpired(argv, timeout)
            try:
                raw = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if raw is None:
                break
            text = _decode(raw)
            log.write(text)
            if on_line is not None:
                on_line(text)
        rc = proc.wait()
    except BaseException:
        terminate_tree(proc)
        raise
    finally:
        reader.join(KILL_GRACE_S)
        proc.stdout.close()
    log.write(f"--- exit status {rc} after {time.monotonic() - start:.1f} s")
    return rc


# ---- the worker's Python -----------------------------------------------------------------


@dataclass
class WorkerPythonInfo:
    """What an interpreter offers the local worker; ``message`` is for the user."""

    python: str
    ok: bool
    medsam_server: str | None
    torch: str | None
    cuda: bool
    mps: bool
    message: str


# Runs in the inspected interpreter, which may be old: plain Python 3 syntax only.
_INSPECT_SCRIPT = """\
import json, sys
info = {"python": sys.version.split()[0], "medsam_server": None, "sam2": None,
        "torch": None, "cuda": False, "mps": False, "errors": []}
try:
    import medsam_client, medsam_server
    info["medsam_server"] = medsam_server.__version__
except Exception as exc:
    info["errors"].append("medsam-server (%s)" % exc)
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda"] = bool(torch.cuda.is_available())
    mps = getattr(torch.backends, "mps", None)
    info["mps"] = bool(mps is not None and mps.is_available())
except Exception as exc:
    info["errors"].append("torch (%s: %s)" % (type(exc).__name__, exc))
try:
    from importlib.metadata import version
    info["sam2"] = version("sam2")
    import sam2.modeling.sam2_base
except Exception as exc:
    info["errors"].append("sam2 (%s: %s)" % (type(exc).__name__, exc))
print(json.dumps(info))
"""


def inspect_python(python: str, timeout: float = 60, *,
                   expected_version: str | None = None) -> WorkerPythonInfo:
    """Ask ``python`` which of medsam-server, torch and sam2 it has, and its GPU backends.

    ``expected_version``: the medsam-server version the extension ships (see
    ``install.bundled_server_version``); another installed version is reported as not ok.
    """
    def not_ok(message: str, **found: object) -> WorkerPythonInfo:
        fields = {"medsam_server": None, "torch": None, "cuda": False, "mps": False, **found}
        return WorkerPythonInfo(python=python, ok=False, message=message, **fields)

    try:
        done = subprocess.run([python, "-c", _INSPECT_SCRIPT], capture_output=True,
                              timeout=timeout, env=child_env(), stdin=subprocess.DEVNULL,
                              creationflags=_NO_WINDOW, check=False)
    except OSError as exc:
        return not_ok(f"cannot run the Python interpreter {python} ({exc}); choose an existing "
                      "Python executable, or leave it empty to use Slicer's own PythonSlicer")
    except subprocess.TimeoutExpired:
        return not_ok(f"{python} did not answer within {timeout:g} s; try again, or choose "
                      "another Python interpreter")
    out = done.stdout.decode("utf-8", errors="replace").splitlines()
    last = next((ln for ln in reversed(out) if ln.startswith("{")), None)
    if done.returncode != 0 or last is None:
        err = done.stderr.decode("utf-8", errors="replace").strip().splitlines()[-5:]
        return not_ok(f"{python} is not a usable Python interpreter (exit status "
                      f"{done.returncode}): {' / '.join(err) or 'no output'}; choose another one")
    info = json.loads(last)
    found = {"medsam_server": info["medsam_server"], "torch": info["torch"],
             "cuda": info["cuda"], "mps": info["mps"]}
    if info["errors"]:
        return not_ok(f"Python {info['python']} at {python} cannot run the local worker: it "
                      f"lacks {', '.join(info['errors'])}. Install the local worker into it, or "
                      "choose another Python interpreter that has them.", **found)
    if expected_version is not None and info["medsam_server"] != expected_version:
        return not_ok(f"{python} has medsam-server {info['medsam_server']}, but this extension "
                      f"needs {expected_version}: install the local worker again to update it.",
                      **found)
    device = "CUDA GPU" if info["cuda"] else "Apple GPU (MPS)" if info["mps"] else "CPU only"
    return WorkerPythonInfo(
        python=python, ok=True, message=f"medsam-server {info['medsam_server']}, torch "
        f"{info['torch']} ({device}), sam2 {info['sam2']}, Python {info['python']}", **found)


def default_worker_python() -> str | None:
    """Slicer's own interpreter, ``PythonSlicer``, if it is on PATH (it is inside Slicer)."""
    return shutil.which("PythonSlicer")


def _checkpoint_cli(python: str, *args: str, cache_dir: str | os.PathLike | None) -> list[str]:
    argv = [python, "-m", "medsam_server.cli", "checkpoints", *args]
    return argv + (["--cache-dir", str(cache_dir)] if cache_dir is not None else [])


def _server_error(output: str) -> str | None:
    """The one-line message medsam-server's CLI gives for a user error, if any."""
    errors = [ln for ln in output.splitlines() if ln.startswith(ERROR_PREFIX)]
    return errors[-1].removeprefix(ERROR_PREFIX).strip() if errors else None


def list_checkpoints(python: str, timeout: float = 60, *,
                     cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """The known MedSAM2 releases and their cache state, as the worker's Python sees them."""
    argv = _checkpoint_cli(python, "--json", cache_dir=cache_dir)
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, env=child_env(),
                              stdin=subprocess.DEVNULL, creationflags=_NO_WINDOW, check=False)
    except OSError as exc:
        raise InstallError(f"cannot run {python} ({exc}); choose an existing Python "
                           "interpreter") from None
    except subprocess.TimeoutExpired:
        raise InstallError(f"listing checkpoints with {python} took over {timeout:g} s") from None
    err = done.stderr.decode("utf-8", errors="replace")
    if done.returncode != 0:
        message = _server_error(err) or "\n".join(err.strip().splitlines()[-TAIL_LINES:])
        raise InstallError(f"cannot list checkpoints with {python} (exit status "
                           f"{done.returncode}): {message}. Is the local worker installed in "
                           "it?", returncode=done.returncode)
    rows = json.loads(done.stdout)
    if not isinstance(rows, list):
        raise InstallError(f"{shown(argv)} printed {type(rows).__name__}, not a list; the "
                           "installed medsam-server does not match this extension: reinstall it")
    return rows


def download_checkpoint(python: str, name: str, *,
                        on_progress: Callable[[int, int | None], None] | None,
                        cancel: threading.Event | None, log_path: Path,
                        cache_dir: str | os.PathLike | None = None,
                        base_url: str | None = None,
                        on_message: Callable[[str], None] | None = None) -> Path:
    """Download release ``name`` into the worker's checkpoint cache; returns the file.

    ``on_progress(done_bytes, total_bytes_or_None)`` at most ~5 times a second;
    ``on_message`` gets the licence notice (first download into a cache only). Cancel stops
    the download; the partial file is kept and the next call resumes it.
    """
    argv = _checkpoint_cli(python, "--download", name, "--progress-json", cache_dir=cache_dir)
    if base_url is not None:
        argv += ["--base-url", base_url]
    final: list[str] = []

    def on_line(line: str) -> None:
        try:
            event = json.loads(line) if line.startswith("{") else None
        except ValueError:
            event = None
        if not isinstance(event, dict):
            return  # stderr text (warnings, the error message): it is in the log
        kind = event.get("event")
        if kind == "progress" and on_progress is not None:
            on_progress(int(event["done"]), event["total"])
        elif kind == "licence" and on_message is not None:
            on_message(event["text"])
        elif kind == "done":
            final.append(event["path"])

    step = f"download {name}"
    with LogFile(log_path) as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {step}")
        offset = log.offset()
        try:
            rc = run_logged(argv, env=child_env(), log=log, on_line=on_line, cancel=cancel)
        except InstallCancelled:
            raise InstallCancelled(f"cancelled: the download of {name} was stopped; the part "
                                   "downloaded is kept and the next download resumes it",
                                   step=step, log_path=log_path) from None
        except InstallError as exc:
            raise InstallError(str(exc), step=step, log_path=log_path) from None
        tail = log.tail(offset)
    if rc != 0:
        message = _server_error(tail) or f"see the last lines of {log_path}:\n{tail}"
        raise InstallError(f"download of {name} failed: {message}", step=step, returncode=rc,
                           log_path=log_path)
    if not final:
        raise InstallError(f"the download of {name} ended without naming the file it wrote; "
                           f"last lines of {log_path}:\n{tail}", step=step, log_path=log_path)
    return Path(final[-1])
