"""Process-wide objects of the extension inside Slicer (Qt glue): settings, backend, threads.

Every "MedSAM2" effect instance and the module's settings panel share one backend (one
local worker per Slicer, or one remote server client) and one worker thread for
model calls; the settings panel has its own worker thread for installs and downloads,
so a long install never delays a prompt.
"""

from pathlib import Path

import qt
import slicer

from MedSAMSegmentLib import interaction
from MedSAMSegmentLib import settings as stored
from MedSAMSegmentLib.annotation_log import AnnotationLog
from MedSAMSegmentLib.settings import BackendHolder, Settings, SettingsStore, log_folder
from MedSAMSegmentLib.tasks import TaskRunner

_state = {}


class QtSettingsStore(SettingsStore):
    """Slicer's own settings file (QSettings), group MedSAMSegment/."""

    def get(self, key: str) -> object | None:
        return qt.QSettings().value(key)  # converted to text by settings.load

    def set(self, key: str, value: str) -> None:
        qt.QSettings().setValue(key, value)


def settings() -> Settings:
    """The settings as saved (main thread: reads QSettings)."""
    current = stored.load(QtSettingsStore())
    _state["snapshot"] = (current, log_folder(current, default_log_dir()))
    return current


def snapshot() -> tuple[Settings, Path]:
    """The settings and log folder as last read on the main thread (safe on any thread:
    worker threads must not touch QSettings or slicer.app)."""
    if "snapshot" not in _state:
        settings()
    return _state["snapshot"]


def update_settings(**changes: str) -> Settings:
    """Save changed settings; a change that affects the backend rebuilds it on next use."""
    current, changed = stored.update(QtSettingsStore(), **changes)
    settings()  # refresh the snapshot
    if stored.rebuilds_backend(changed) and "holder" in _state:
        _state["holder"].reset()
    return current


def default_log_dir() -> Path:
    return Path(slicer.app.slicerUserSettingsFilePath).parent / "MedSAMSegment"


def log_dir() -> Path:
    return snapshot()[1]


def runner() -> TaskRunner:
    """The worker thread for model calls (shared by all effect instances)."""
    if "runner" not in _state:
        _state["runner"] = TaskRunner("MedSAM2 model calls")
    return _state["runner"]


def settings_runner() -> TaskRunner:
    """The worker thread for installs, downloads and connection tests."""
    if "settings_runner" not in _state:
        _state["settings_runner"] = TaskRunner("MedSAM2 set-up")
    return _state["settings_runner"]


def backend_holder() -> BackendHolder:
    if "holder" not in _state:
        snapshot()  # taken here, on the main thread; the holder runs on the worker thread
        _state["holder"] = BackendHolder(lambda: _state["snapshot"][0],
                                         lambda: _state["snapshot"][1])
    return _state["holder"]


def annotation_log() -> AnnotationLog:
    return AnnotationLog(log_dir() / "annotation-log.jsonl")


def backend_summary() -> str:
    """One line for the effect's panel: which backend, and whether it is set up."""
    backend = backend_holder().peek()
    return interaction.backend_summary(settings(), backend.describe() if backend else None)
