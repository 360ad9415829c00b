"""The extension's settings and the backend they describe (pure Python).

Settings persist in Slicer's settings (QSettings in the Qt glue; a dict in tests)
under the ``MedSAMSegment/`` group. ``BackendHolder`` is the one backend every
Segment Editor effect instance shares: one local worker per Slicer, or one client of
a remote server; it is rebuilt when the settings change.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from medsam_client.client import MedSAMError

from .backend import Backend, LocalBackend, RemoteBackend

GROUP = "MedSAMSegment"
TOKEN_ENV = "MEDSAM_TOKEN"  # a remote token from the environment is used and never stored


@dataclass
class Settings:
    backend: str = "local"  # local or remote
    python: str = ""  # interpreter of the local worker ("" = not installed yet)
    checkpoint: str = ""  # MedSAM2 weights for the local worker
    device: str = "auto"  # auto, cpu, cuda, mps
    server_url: str = ""
    token: str = ""
    modality: str = "auto"  # auto, ct, mr
    log_dir: str = ""  # annotation log and worker log folder ("" = default)

    def validate(self) -> list[str]:
        """What is missing for the chosen backend, in words a user can act on."""
        problems = []
        if self.backend == "local":
            if not self.python:
                problems.append("no Python for the local worker: click Install (or choose an "
                                "interpreter that has medsam-server)")
            if not self.checkpoint or not Path(self.checkpoint).is_file():
                problems.append("no MedSAM2 checkpoint: click Download (or choose the file)")
        elif self.backend == "remote":
            if not self.server_url:
                problems.append("no server URL")
            if not (self.token or os.environ.get(TOKEN_ENV)):
                problems.append(f"no access token (set it here or in ${TOKEN_ENV})")
        else:
            problems.append(f"unknown backend {self.backend!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            problems.append(f"unknown device {self.device!r}")
        if self.modality not in ("auto", "ct", "mr"):
            problems.append(f"unknown intensity mode {self.modality!r}")
        return problems


def stored_text(value: object) -> str | None:
    """One setting as read back from QSettings, as the text that was saved.

    PythonQt hands QSettings values over as Python objects. Slicer's settings file is INI:
    text saved by ``setValue`` comes back as ``str``, but a value with unquoted commas (a
    path edited by hand) comes back as a list of its parts (a QStringList), and a missing
    key as ``None``. Other stores give numbers, flags or bytes. Every field here is text, so
    each is turned back into the text the file holds.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class SettingsStore:
    """Key/value persistence (interface); keys are ``MedSAMSegment/<field>``; ``get`` may
    return any object QSettings gives back (``load`` converts it with ``stored_text``)."""

    def get(self, key: str) -> object | None:  # pragma: no cover - interface
        raise NotImplementedError

    def set(self, key: str, value: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class DictStore(SettingsStore):
    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def get(self, key: str) -> object | None:
        return self.values.get(key)

    def set(self, key: str, value: str) -> None:
        self.values[key] = value


def load(store: SettingsStore) -> Settings:
    s = Settings()
    for f in fields(Settings):
        value = stored_text(store.get(f"{GROUP}/{f.name}"))
        if value is not None:
            setattr(s, f.name, value)
    return s


def save(store: SettingsStore, settings: Settings) -> None:
    for f in fields(Settings):
        store.set(f"{GROUP}/{f.name}", str(getattr(settings, f.name)))


# fields whose change means another backend (a local worker started with other arguments,
# another server): the shared backend is rebuilt on its next use
BACKEND_FIELDS = frozenset(("backend", "python", "checkpoint", "device", "server_url", "token",
                            "log_dir"))


def update(store: SettingsStore, **changes: str) -> tuple[Settings, set[str]]:
    """Save ``changes`` over the stored settings; returns them and the fields that changed.

    An unknown field or a value that is not text is refused before anything is written.
    """
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    not_text = sorted(k for k, v in changes.items() if not isinstance(v, str))
    if not_text:
        raise ValueError(f"setting(s) {', '.join(not_text)} must be text")
    current = load(store)
    changed = {k for k, v in changes.items() if getattr(current, k) != v}
    for key, value in changes.items():
        setattr(current, key, value)
    save(store, current)
    return current, changed


def rebuilds_backend(changed: set[str]) -> bool:
    """Does a change of these fields need a new backend?"""
    return bool(changed & BACKEND_FIELDS)


def log_folder(settings: Settings, default: Path) -> Path:
    return Path(settings.log_dir) if settings.log_dir else default


def make_backend(settings: Settings, log_dir: Path,
                 on_message: Callable[[str], None] | None = None) -> Backend:
    problems = settings.validate()
    if problems:
        raise MedSAMError("MedSAM2 is not set up: " + "; ".join(problems) +
                          ". Open the MedSAMSegment module to finish the set-up.",
                          code="not_configured")
    if settings.backend == "remote":
        return RemoteBackend(settings.server_url, settings.token or os.environ[TOKEN_ENV])
    return LocalBackend(settings.python, settings.checkpoint, device=settings.device,
                        log_path=log_dir / "medsam-worker.log", on_message=on_message)


class BackendHolder:
    """The shared backend, built from the settings on first use and after each change."""

    def __init__(self, settings: Callable[[], Settings], log_dir: Callable[[], Path],
                 on_message: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self._log_dir = log_dir
        self._on_message = on_message
        self._backend: Backend | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Backend:
        """The current backend (worker thread); MedSAMError when not set up."""
        with self._lock:
            if self._backend is None:
                self._backend = make_backend(self._settings(), self._log_dir(),
                                             self._on_message)
            return self._backend

    def peek(self) -> Backend | None:
        return self._backend

    def reset(self) -> None:
        """Settings changed: drop the old backend; sessions replay on the next.

        The old one is closed on a thread of its own: stopping a local worker waits for
        a start in progress (up to its start-up timeout), which must never block the GUI.
        """
        with self._lock:
            old, self._backend = self._backend, None
        if old is not None:
            threading.Thread(target=old.close, name="MedSAM2 backend close", daemon=True).start()
