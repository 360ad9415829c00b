"""The module panel's decisions (pure): what its widgets show and how each set-up flow goes.

SettingsPanel (Qt glue) builds the widgets, hands their values to ``SetupFlow`` and shows
each ``SetupView`` the flow gives back. Install, Check, the licence and download of the
weights, Test connection, Start and Stop of the local worker: which message at which level,
which buttons are on, what a failure or a cancel leaves and which setting is saved are all
decided here. Everything slow runs as a Task on the set-up thread; results come back on
the thread that drains it (the GUI thread in Slicer, the test in pytest).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .install import (
    InstallCancelled,
    InstallError,
    InstallProgress,
    InstallRunner,
    bundled_server_version,
    default_worker_python,
    download_checkpoint,
    inspect_python,
    list_checkpoints,
    plan_install,
)
from .panel_view import download_progress, install_progress, settings_enabled
from .settings import BackendHolder, Settings
from .tasks import Task, TaskRunner

RELEASE = "MedSAM2_latest"
DOWNLOAD_TEXT = f"Download {RELEASE} (156 MB, CC-BY-SA-4.0)"
DEVICES = ("auto", "cuda", "mps", "cpu")
LICENCE_TITLE = "MedSAM2 licence"
STOPPED = "stopped (it starts again with the next box)"
NO_PYTHON = "Choose the Python interpreter for the worker first."
NO_WORKER = ("Install the local worker (or choose its Python) first: the download runs with "
             "medsam-server's checkpoint manager.")
INSTALL_CANCELLED = "Install cancelled; Install again continues where it stopped."
LINE_CHARS = 200  # the worker label shows the end of a long pip line
BUSY_BAR = (0, 0, "")  # a QProgressBar with range 0..0 is Qt's busy indicator


@dataclass(frozen=True)
class SettingsForm:
    """What the panel's widgets show when it opens, from the saved settings."""

    local: bool
    server_url: str
    token: str
    python: str
    checkpoint: str
    device: str


def settings_form(s: Settings, default_python: str | None) -> SettingsForm:
    """The panel's first values; an unset worker Python shows Slicer's own (``default_python``)
    without saving it: Install saves the interpreter it installs into."""
    return SettingsForm(local=s.backend != "remote", server_url=s.server_url, token=s.token,
                        python=s.python or (default_python or ""), checkpoint=s.checkpoint,
                        device=s.device)


@dataclass(frozen=True)
class SetupView:
    """Everything the panel shows that a flow changes (the glue assigns it all)."""

    message: str = ""
    level: str = "info"  # of the message: info or error (panel_view.message_style)
    busy: bool = False  # a set-up task runs: the progress bar shows
    cancellable: bool = False
    remote: bool = False  # the remote backend is chosen
    progress: tuple[int, int, str] = BUSY_BAR  # (maximum, value, format)
    worker: str = ""  # the local worker's line
    connection: str = ""  # Test connection's report
    checkpoint: str | None = None  # a file just downloaded, for the path widget (once)

    @property
    def enabled(self) -> dict[str, bool]:
        """Widget attribute -> enabled: one task at a time; the server's fields when remote."""
        return {**settings_enabled(self.busy, self.cancellable, self.remote),
                "url": self.remote, "token": self.remote}


def release_row(rows: list, name: str = RELEASE) -> dict | None:
    """The row ``medsam-server checkpoints --json`` gives for release ``name``, if any."""
    return next((r for r in rows if isinstance(r, dict) and r.get("name") == name), None)


def licence_question(row: dict) -> str:
    """What the user accepts before the weights are downloaded (the registry's licence)."""
    return (f"MedSAM2 weights ({row['name']}, from huggingface.co/wanglab/MedSAM2) are licensed "
            f"{row.get('licence')}. By downloading them you accept its terms. Download now?")


def unknown_release(name: str = RELEASE) -> str:
    return (f"This medsam-server does not know the release {name}; update the local worker "
            "(Install / update).")


def failure(exc: BaseException, *, cancelled: str | None = None,
            log_path: Path | None = None) -> tuple[str, str]:
    """(message, level) for a set-up task that raised ``exc``: a cancel is no error."""
    if isinstance(exc, InstallCancelled):
        return cancelled or str(exc), "info"
    text = str(getattr(exc, "message", exc))  # MedSAMError keeps its text in .message
    return (f"{text} (full log: {log_path})" if log_path is not None else text), "error"


class SetupFlow:
    """The panel's actions. ``on_change`` gets the new SetupView after every change.

    ``update_settings(**changes)`` saves settings (SlicerRuntime's: QSettings, backend reset);
    ``holder()`` the shared BackendHolder; ``log_dir()`` the log folder; ``confirm(text,
    title)`` asks the user OK/Cancel; ``cache_dir`` / ``base_url``: where the weights go and
    come from (None: the worker's own cache and Hugging Face).
    """

    def __init__(self, runner: TaskRunner, *, on_change: Callable[[SetupView], None],
                 update_settings: Callable[..., Settings], holder: Callable[[], BackendHolder],
                 log_dir: Callable[[], Path], confirm: Callable[[str, str], bool],
                 remote: bool = False,
                 default_python: Callable[[], str | None] = default_worker_python,
                 cache_dir: Path | None = None, base_url: str | None = None) -> None:
        self.runner = runner
        self.on_change = on_change
        self.update_settings = update_settings
        self.holder = holder
        self.log_dir = log_dir
        self.confirm = confirm
        self.default_python = default_python
        self.cache_dir = cache_dir
        self.base_url = base_url
        self.view = SetupView(remote=remote)
        self.task: Task | None = None  # the set-up task running or last run

    # ---- the view ------------------------------------------------------------------------
    def show(self, **changes: object) -> None:
        self.view = replace(self.view, **changes)
        self.on_change(self.view)
        if self.view.checkpoint is not None:  # shown once: the widget is the user's again
            self.view = replace(self.view, checkpoint=None)

    def say(self, text: str, error: bool = False) -> None:
        self.show(message=text, level="error" if error else "info")

    def submit(self, title: str, work: Callable[[Task], object],
               done: Callable[[object], None], *, cancellable: bool = False,
               cancelled: str | None = None, log_path: Path | None = None) -> Task:
        """Run ``work`` on the set-up thread; the panel is busy until it ends, however."""
        self.show(busy=True, cancellable=cancellable, progress=BUSY_BAR)

        def finished(result: object) -> None:
            self.show(busy=False, cancellable=False)
            done(result)

        def failed(exc: BaseException) -> None:
            message, level = failure(exc, cancelled=cancelled, log_path=log_path)
            self.show(busy=False, cancellable=False, message=message, level=level)

        def stopped() -> None:  # cancelled before it started
            self.show(busy=False, cancellable=False, level="info",
                      message=cancelled or f"{title}: cancelled.")

        self.task = Task(title, work, on_done=finished, on_error=failed, on_cancelled=stopped)
        return self.runner.submit(self.task)

    # ---- settings ------------------------------------------------------------------------
    def backend_changed(self, local: bool) -> None:
        self.update_settings(backend="local" if local else "remote")
        self.show(remote=not local)

    def save_remote(self, url: str, token: str) -> None:
        self.update_settings(server_url=url.strip(), token=token)

    def save_paths(self, python: str, checkpoint: str) -> None:
        self.update_settings(python=python, checkpoint=checkpoint)

    def device_changed(self, device: str) -> None:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; one of {', '.join(DEVICES)}")
        self.update_settings(device=device)

    # ---- actions -------------------------------------------------------------------------
    def cancel(self) -> None:
        if self.task is not None and self.view.cancellable:
            self.task.cancel()

    def check(self, python: str) -> Task | None:
        if not python:
            self.say(NO_PYTHON, error=True)
            return None
        try:
            version = bundled_server_version()
        except InstallError as exc:
            self.say(str(exc), error=True)
            return None
        return self.submit("Check", lambda task: inspect_python(python, expected_version=version),
                           lambda info: self.say(info.message, error=not info.ok))

    def install(self, python: str, torch: str) -> Task | None:
        """Install the worker into ``python`` (empty: Slicer's PythonSlicer), resumably."""
        python = python or self.default_python() or ""
        if not python:
            self.say(NO_PYTHON, error=True)
            return None
        self.update_settings(python=python)
        work_dir = self.log_dir() / "install"
        try:
            steps = plan_install(python, torch=torch.strip() or "auto", work_dir=work_dir)
        except InstallError as exc:
            self.say(str(exc), error=True)
            return None
        log_path = self.log_dir() / "install.log"

        def work(task: Task) -> None:
            InstallRunner(steps, log_path=log_path, state_path=work_dir / "state.json",
                          on_progress=lambda p: task.post(self.install_progress, p),
                          cancel=task.cancel_event).run()

        def done(_: object) -> None:
            self.say(f"The local worker is installed in {python}. Log: {log_path}")
            self.holder().reset()  # the next box starts the new worker

        return self.submit("Install", work, done, cancellable=True, cancelled=INSTALL_CANCELLED,
                           log_path=log_path)

    def install_progress(self, p: InstallProgress) -> None:
        self.show(progress=install_progress(p.step_index, p.step_count, p.title),
                  worker=p.line[-LINE_CHARS:])

    def download(self, python: str) -> Task | None:
        """Ask the worker's registry for the licence, then download after the user's OK."""
        if not python:
            self.say(NO_WORKER, error=True)
            return None
        return self.submit("Licence",
                           lambda task: list_checkpoints(python, cache_dir=self.cache_dir),
                           lambda rows: self.confirm_and_download(python, rows))

    def confirm_and_download(self, python: str, rows: list) -> Task | None:
        row = release_row(rows)
        if row is None:
            self.say(unknown_release(), error=True)
            return None
        if not self.confirm(licence_question(row), LICENCE_TITLE):
            return None
        log_path = self.log_dir() / "download.log"

        def work(task: Task) -> Path:
            return download_checkpoint(
                python, RELEASE, cancel=task.cancel_event, log_path=log_path,
                cache_dir=self.cache_dir, base_url=self.base_url,
                on_progress=lambda done, total: task.post(self.download_progress, done, total))

        def done(path: Path) -> None:
            self.update_settings(checkpoint=str(path))
            self.show(checkpoint=str(path), message=f"Downloaded and verified {path}.",
                      level="info")

        return self.submit("Download", work, done, cancellable=True)

    def download_progress(self, done: int, total: int | None) -> None:
        bar = download_progress(done, total)
        if bar is not None:  # size unknown: the busy indicator stays
            self.show(progress=bar)

    def test_connection(self, url: str, token: str) -> Task:
        self.save_remote(url, token)
        holder = self.holder()  # on this thread: it snapshots the settings
        return self.submit("Test connection", lambda task: holder().test_connection(),
                           lambda report: self.show(connection=report.summary()))

    def start_worker(self) -> Task:
        holder = self.holder()

        def work(task: Task) -> str:
            report = holder().test_connection()  # starts the worker, then asks it /info
            return f"{report.summary()}\n{holder().describe()}"

        return self.submit("Start worker", work, lambda text: self.show(worker=text))

    def stop_worker(self) -> None:
        self.holder().reset()
        self.show(worker=STOPPED)

    def log_folder(self) -> Path:
        """The log folder, made if missing (to open it in the file manager)."""
        folder = self.log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        return folder
