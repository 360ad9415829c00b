"""The module panel's flows (settings_flow) and the effect's help (help_text), below the glue.

The flows run for real: a TaskRunner thread, the repo's .venv Python as the worker's
interpreter (it has medsam-server, torch and sam2), settings in a DictStore, and a local
HTTP server standing in for Hugging Face (test_install's ``hub``).
"""

from __future__ import annotations

import ast
import re
import sys
import threading
import time
from pathlib import Path

import pytest
from MedSAMSegmentLib.help_text import LICENCES, effect_help, python_too_old
from MedSAMSegmentLib.install import (
    InstallCancelled,
    InstallError,
    bundled_server_version,
    inspect_python,
    plan_install,
)
from MedSAMSegmentLib.interaction import enter_applies
from MedSAMSegmentLib.settings import BackendHolder, DictStore, Settings, load, save, update
from MedSAMSegmentLib.settings_flow import (
    DOWNLOAD_TEXT,
    INSTALL_CANCELLED,
    NO_PYTHON,
    NO_WORKER,
    RELEASE,
    STOPPED,
    SetupFlow,
    SetupView,
    failure,
    licence_question,
    release_row,
    settings_form,
    unknown_release,
)
from MedSAMSegmentLib.tasks import Task, TaskRunner
from test_install import hub  # noqa: F401 -- the fixture

PY = sys.executable
LIB = Path(__file__).resolve().parents[1] / "MedSAMSegment" / "MedSAMSegmentLib"
SETUP_BUTTONS = ("installButton", "checkButton", "downloadButton", "startButton")


class Panel:
    """What the glue does with the flow: saves through a store, keeps every view shown."""

    def __init__(self, tmp: Path, *, confirm: bool = True, default_python: str | None = None,
                 **settings: str) -> None:
        self.store = DictStore()
        save(self.store, Settings(**settings))
        self.holder = BackendHolder(lambda: load(self.store), lambda: tmp / "logs")
        self.resets = 0
        reset = self.holder.reset

        def counted_reset() -> None:
            self.resets += 1
            reset()

        self.holder.reset = counted_reset
        self.views: list[SetupView] = []
        self.questions: list[tuple[str, str]] = []
        self.runner = TaskRunner("test set-up")
        self.flow = SetupFlow(
            self.runner, on_change=self.views.append,
            update_settings=lambda **changes: update(self.store, **changes)[0],
            holder=lambda: self.holder, log_dir=lambda: tmp / "logs",
            confirm=lambda text, title: self.questions.append((text, title)) or confirm,
            default_python=lambda: default_python, cache_dir=tmp / "cache")

    @property
    def saved(self) -> Settings:
        return load(self.store)

    def wait(self, timeout: float = 120, until: object = None) -> SetupView:
        """Drain as the panel's timer does until the flow is idle (or ``until(view)``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.runner.drain()
            view = self.flow.view
            if until is not None and until(view):
                return view
            if until is None and not self.runner.busy and not view.busy:
                return view
            time.sleep(0.01)
        raise AssertionError(f"the flow did not finish within {timeout} s: {self.flow.view}")


@pytest.fixture
def panel(tmp_path):
    made: list[Panel] = []

    def make(**kw: object) -> Panel:
        made.append(Panel(tmp_path, **kw))
        return made[-1]

    yield make
    for p in made:
        assert p.runner.shutdown()


def idle_and_enabled(view: SetupView) -> bool:
    return not view.busy and all(view.enabled[b] for b in SETUP_BUTTONS)


# ---- what the panel shows first; settings ------------------------------------------------

def test_the_form_shows_the_saved_settings_and_proposes_slicers_python():
    form = settings_form(Settings(backend="remote", server_url="https://a", token="t",
                                  checkpoint="/w.pt", device="cpu"), "/slicer/PythonSlicer")
    assert (form.local, form.server_url, form.token, form.device) == (False, "https://a", "t",
                                                                      "cpu")
    assert (form.python, form.checkpoint) == ("/slicer/PythonSlicer", "/w.pt")
    assert settings_form(Settings(python="/venv/python"), "/slicer/PythonSlicer").python == \
        "/venv/python"
    assert settings_form(Settings(), None).python == "" and settings_form(Settings(), None).local


def test_update_saves_reports_changes_and_refuses_bad_fields():
    store = DictStore()
    save(store, Settings(device="cpu"))
    current, changed = update(store, device="cpu", modality="ct")
    assert changed == {"modality"} and load(store).modality == "ct" == current.modality
    before = dict(store.values)
    with pytest.raises(ValueError, match="unknown setting.*colour"):
        update(store, colour="red", device="cuda")
    with pytest.raises(ValueError, match="device must be text"):
        update(store, device=None)
    assert store.values == before  # nothing written


def test_backend_choice_enables_the_server_fields_and_test_only_when_remote(panel, tmp_path):
    p = panel()
    p.flow.backend_changed(False)
    assert p.saved.backend == "remote"
    assert p.views[-1].enabled["url"] and p.views[-1].enabled["testButton"]
    p.flow.backend_changed(True)
    v = p.views[-1]
    assert p.saved.backend == "local" and not v.enabled["url"] and not v.enabled["token"]
    assert not v.enabled["testButton"] and not v.enabled["cancelButton"]
    p.flow.save_remote("  https://medsam.example.org  ", "secret")
    assert (p.saved.server_url, p.saved.token) == ("https://medsam.example.org", "secret")
    p.flow.save_paths("/py", "/w.pt")
    assert (p.saved.python, p.saved.checkpoint) == ("/py", "/w.pt")
    p.flow.device_changed("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        p.flow.device_changed("gpu")
    assert p.saved.device == "cuda"


def test_switching_to_remote_during_a_task_keeps_test_connection_off(panel):
    """Defect: the old panel enabled Test connection on any switch to remote, even while an
    install ran; a click then took the Cancel button away from that install."""
    p = panel()
    gate = threading.Event()
    p.flow.submit("Slow", lambda task: gate.wait(30), lambda result: None, cancellable=True)
    p.flow.backend_changed(False)
    v = p.views[-1]
    assert v.busy and v.remote and v.enabled["url"]
    assert not v.enabled["testButton"] and v.enabled["cancelButton"]
    gate.set()
    assert p.wait().enabled["testButton"]


# ---- Check --------------------------------------------------------------------------------

def test_check_refuses_an_empty_python_and_reports_the_repo_python(panel):
    p = panel()
    assert p.flow.check("") is None
    assert (p.views[-1].message, p.views[-1].level) == (NO_PYTHON, "error")
    assert not p.runner.busy  # nothing submitted
    p.flow.check(PY)
    assert p.views[-1].busy and not p.views[-1].enabled["checkButton"]
    assert not p.views[-1].enabled["cancelButton"]  # a check cannot be cancelled
    v = p.wait()
    assert v.level == "info" and v.message.startswith("medsam-server ")
    assert idle_and_enabled(v)


def test_check_of_a_missing_interpreter_is_an_error(panel, tmp_path):
    p = panel()
    p.flow.check(str(tmp_path / "no-python"))
    v = p.wait()
    assert v.level == "error" and "cannot run the Python interpreter" in v.message
    assert idle_and_enabled(v)


# ---- Install ------------------------------------------------------------------------------

def test_install_needs_a_python_and_saves_nothing_without_one(panel):
    p = panel()
    assert p.flow.install("", "auto") is None
    assert (p.views[-1].message, p.views[-1].level) == (NO_PYTHON, "error")
    assert p.saved.python == "" and not p.runner.busy


def test_install_into_the_repo_python_skips_every_step_and_resets_the_backend(panel, tmp_path):
    # premise: the repo's Python has the bundled worker, so every step's check passes
    # (otherwise this would pip-install for real)
    assert inspect_python(PY, expected_version=bundled_server_version()).ok
    steps = plan_install(PY, work_dir=tmp_path / "logs" / "install")
    p = panel(default_python=PY)
    p.flow.install("", "  ")  # empty: Slicer's Python (here the repo's), torch "auto"
    assert p.saved.python == PY and p.views[-1].enabled["cancelButton"]
    v = p.wait(timeout=300)
    log = tmp_path / "logs" / "install.log"
    assert v.message == f"The local worker is installed in {PY}. Log: {log}"
    assert v.level == "info" and p.resets == 1 and idle_and_enabled(v)
    bars = [w.progress for w in p.views if w.progress[0]]
    assert [b[1] for b in bars] == sorted(b[1] for b in bars) and bars[-1][0] == len(steps)
    assert bars[-1][2] == f"step {len(steps)} of {len(steps)}: {steps[-1].title}"
    assert v.worker == "skipped: already installed (its check passes)"
    assert "light_the_torch" in log.read_text() or "light-the-torch" in log.read_text()
    assert (tmp_path / "logs" / "install" / "state.json").is_file()


def test_install_failure_names_the_log_and_frees_the_panel(panel, tmp_path):
    p = panel()
    p.flow.install(str(tmp_path / "no-python"), "auto")
    v = p.wait()
    log = tmp_path / "logs" / "install.log"
    assert v.level == "error" and "cannot run" in v.message
    assert v.message.endswith(f"(full log: {log})") and idle_and_enabled(v)
    assert p.resets == 0


def test_install_cancelled_while_it_runs(panel):
    p = panel()
    p.flow.install(PY, "auto")
    p.wait(until=lambda v: v.progress[0] > 0)  # a step began (checking the build tools)
    p.flow.cancel()
    v = p.wait()
    assert (v.message, v.level) == (INSTALL_CANCELLED, "info")
    assert idle_and_enabled(v) and not v.enabled["cancelButton"] and p.resets == 0


def test_install_cancelled_before_it_starts_frees_the_panel(panel):
    """Defect: the old install Task had no on_cancelled: a Cancel before the set-up thread
    took it left every button off for good."""
    p = panel()
    gate = threading.Event()
    p.runner.submit(Task("ahead", lambda task: gate.wait(30)))
    p.flow.install(PY, "auto")
    p.flow.cancel()
    gate.set()
    v = p.wait()
    assert p.flow.task.state == "cancelled"
    assert (v.message, v.level) == (INSTALL_CANCELLED, "info") and idle_and_enabled(v)


# ---- Download -----------------------------------------------------------------------------

def test_download_needs_the_worker_python(panel):
    p = panel()
    assert p.flow.download("") is None
    assert (p.views[-1].message, p.views[-1].level) == (NO_WORKER, "error")
    assert not p.runner.busy and not p.questions


def test_download_asks_the_licence_then_saves_the_verified_file(panel, hub, tmp_path):  # noqa: F811
    p = panel()
    p.flow.base_url = hub.base_url
    p.flow.download(PY)
    v = p.wait()
    path = tmp_path / "cache" / f"{RELEASE}.pt"
    (question, title), = p.questions
    assert title == "MedSAM2 licence" and "CC-BY-SA-4.0" in question and RELEASE in question
    assert path.read_bytes() == hub.data and p.saved.checkpoint == str(path)
    assert (v.message, v.level) == (f"Downloaded and verified {path}.", "info")
    shown = [w.checkpoint for w in p.views if w.checkpoint is not None]
    assert shown == [str(path)] and v.checkpoint is None  # set in the widget once
    assert [w.progress for w in p.views if w.progress[0] == 1000][-1][1] == 1000
    assert idle_and_enabled(v)


def test_download_declined_downloads_nothing(panel, hub, tmp_path):  # noqa: F811
    p = panel(confirm=False)
    p.flow.base_url = hub.base_url
    p.flow.download(PY)
    v = p.wait()
    assert len(p.questions) == 1 and hub.ranges == [] and p.saved.checkpoint == ""
    assert not (tmp_path / "cache" / f"{RELEASE}.pt").exists() and idle_and_enabled(v)


def test_download_failure_is_an_error_and_keeps_the_setting(panel, hub, tmp_path):  # noqa: F811
    p = panel(checkpoint="/old.pt")
    p.flow.base_url = hub.base_url + "/elsewhere"  # the hub answers 404
    p.flow.download(PY)
    v = p.wait()
    assert v.level == "error" and f"download of {RELEASE} failed" in v.message
    assert "404" in v.message and p.saved.checkpoint == "/old.pt" and idle_and_enabled(v)


def test_download_cancelled_is_said_plainly_and_resumes(panel, hub, tmp_path):  # noqa: F811
    hub.delay = 0.05  # 1 MB in 16 KB pieces: about 3 s
    p = panel()
    p.flow.base_url = hub.base_url
    p.flow.download(PY)
    v = p.wait(until=lambda v: v.progress[0] == 1000)  # bytes arrive
    assert v.enabled["cancelButton"]
    p.flow.cancel()
    v = p.wait()
    assert v.level == "info" and "the next download resumes it" in v.message
    assert p.saved.checkpoint == "" and idle_and_enabled(v)
    assert (tmp_path / "cache" / f"{RELEASE}.pt.part").is_file()


def test_release_licence_and_failure_texts():
    rows = [{"name": "MedSAM2_2411", "licence": "x"}, "junk",
            {"name": RELEASE, "licence": "CC-BY-SA-4.0"}]
    assert release_row(rows) == rows[2] and release_row(rows[:2]) is None
    assert "licensed CC-BY-SA-4.0" in licence_question(rows[2])
    assert RELEASE in unknown_release() and "Install / update" in unknown_release()
    assert RELEASE in DOWNLOAD_TEXT and "CC-BY-SA-4.0" in DOWNLOAD_TEXT
    assert failure(InstallCancelled("stopped")) == ("stopped", "info")
    assert failure(InstallCancelled("stopped"), cancelled="Install cancelled") == \
        ("Install cancelled", "info")
    assert failure(InstallError("broke"), log_path=Path("/l.log")) == \
        ("broke (full log: /l.log)", "error")


def test_an_unknown_release_is_refused_without_asking(panel):
    p = panel()
    assert p.flow.confirm_and_download(PY, [{"name": "MedSAM2_2411"}]) is None
    assert (p.views[-1].message, p.views[-1].level) == (unknown_release(), "error")
    assert not p.questions and not p.runner.busy


# ---- the worker and the server ------------------------------------------------------------

def test_test_connection_saves_the_fields_and_shows_the_backends_refusal(panel):
    p = panel(backend="remote")
    p.flow.test_connection(" medsam.example.org ", "secret")
    v = p.wait()
    assert p.saved.server_url == "medsam.example.org"
    assert v.level == "error" and "must start with http:// or https://" in v.message
    assert v.connection == ""


def test_start_worker_unset_says_what_is_missing_and_stop_says_stopped(panel):
    p = panel()
    p.flow.start_worker()
    v = p.wait()
    assert v.level == "error" and v.message.startswith("MedSAM2 is not set up: no Python")
    p.flow.stop_worker()
    assert p.views[-1].worker == STOPPED and p.resets == 1


def test_the_log_folder_is_made_to_be_opened(panel, tmp_path):
    assert panel().flow.log_folder() == tmp_path / "logs" and (tmp_path / "logs").is_dir()


# ---- help texts ---------------------------------------------------------------------------

def _control_texts() -> set[str]:
    """Texts of the buttons the options panel builds (string literals in OptionsPanel.py)."""
    tree = ast.parse((LIB / "OptionsPanel.py").read_text())
    texts = {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
             and ast.unparse(n.func) in ("qt.QPushButton", "qt.QCheckBox")
             and n.args and isinstance(n.args[0], ast.Constant)}
    for loop in (n for n in ast.walk(tree) if isinstance(n, ast.For)):  # the mode buttons
        if isinstance(loop.iter, ast.Tuple) and "QToolButton" in ast.unparse(loop):
            texts |= {ast.literal_eval(e)[1] for e in loop.iter.elts}
    return texts


def _effect_source() -> str:
    return (LIB / "SegmentEditorEffect.py").read_text()


def test_the_effect_help_names_only_real_controls_keys_and_gestures():
    controls = _control_texts()
    assert {"Propagate", "Apply", "+ Point", "Box"} <= controls  # the reader found them
    named = set(re.findall(r"<b>(.*?)</b>", effect_help()))
    keys = {"Enter"}  # VTK's keysym "Return"
    gestures = {"left-drag", "left-click"}
    assert named - controls == keys | gestures
    assert 'GetKeySym() == "Return"' in _effect_source()
    assert "LeftButtonPressEvent" in _effect_source() and "MouseMoveEvent" in _effect_source()


def test_the_effect_help_names_every_button_of_the_options_panel():
    buttons = {t for t in _control_texts() if t not in ("whole volume", "all frames")}
    missing = sorted(b for b in buttons if f"<b>{b}</b>" not in effect_help())
    assert not missing, f"the effect's help does not name {missing}"


def test_enter_and_modifier_clicks_are_as_the_help_says():
    help_text = effect_help()
    assert "<b>Apply</b> (or <b>Enter</b>)" in help_text
    pending = type("Obj", (), {"pending": {3: object()}})()
    assert enter_applies(pending, propagating=False)
    assert not enter_applies(pending, propagating=True) and not enter_applies(None, False)
    source = _effect_source()
    for word, call in (("Shift", "GetShiftKey"), ("Ctrl", "GetControlKey"), ("Alt", "GetAltKey")):
        assert word in help_text and call in source


def test_the_module_texts_and_the_python_check():
    assert "CC-BY-SA-4.0" in LICENCES and "Apache-2.0" in LICENCES
    assert python_too_old((3, 10, 0)) is None and python_too_old(sys.version_info) is None
    refused = python_too_old((3, 9, 18))
    assert refused is not None and "Python 3.9" in refused and "Python >= 3.10" in refused
