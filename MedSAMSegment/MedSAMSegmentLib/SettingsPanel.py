"""The MedSAMSegment module panel: where MedSAM2 runs, its install and its weights (Qt glue).

Everything slow (install, download, connection test, worker start) runs on the set-up
worker thread (SlicerRuntime.settings_runner) with progress shown here; the GUI thread
only reads and writes widgets. The logic is in install.py / worker_tasks.py /
settings.py / backend.py, tested under pytest.
"""

from pathlib import Path

import ctk
import qt
import slicer

from MedSAMSegmentLib import SlicerRuntime
from MedSAMSegmentLib.connections import Connections
from MedSAMSegmentLib.install import (
    InstallCancelled,
    InstallError,
    InstallRunner,
    bundled_server_version,
    default_worker_python,
    download_checkpoint,
    inspect_python,
    list_checkpoints,
    plan_install,
)
from MedSAMSegmentLib.panel_view import (
    download_progress,
    install_progress,
    message_style,
    settings_enabled,
)
from MedSAMSegmentLib.tasks import Task

RELEASE = "MedSAM2_latest"


class SettingsPanel:
    def __init__(self, layout: qt.QLayout) -> None:
        self.runner = SlicerRuntime.settings_runner()
        self.connections = Connections()  # undone by cleanup()
        link = self.connections.connect
        self.cancel_event = None
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        link(self.timer, "timeout()", self.onTimer)
        self.timer.start()
        s = SlicerRuntime.settings()

        where = ctk.ctkCollapsibleButton()
        where.text = "Where MedSAM2 runs"
        form = qt.QFormLayout(where)
        self.local = qt.QRadioButton("Local worker on this computer (started with the first box)")
        self.remote = qt.QRadioButton("Remote server (a team's GPU server)")
        self.local.checked = s.backend != "remote"
        self.remote.checked = s.backend == "remote"
        link(self.local, "toggled(bool)", self.onBackendChanged)
        form.addRow(self.local)
        form.addRow(self.remote)
        self.url = qt.QLineEdit(s.server_url)
        self.url.placeholderText = "https://medsam.example.org"
        self.token = qt.QLineEdit(s.token)
        self.token.setEchoMode(qt.QLineEdit.Password)
        self.token.placeholderText = "access token from the server's admin (or $MEDSAM_TOKEN)"
        link(self.url, "editingFinished()", self.saveRemote)
        link(self.token, "editingFinished()", self.saveRemote)
        form.addRow("Server URL:", self.url)
        form.addRow("Token:", self.token)
        self.testButton = qt.QPushButton("Test connection")
        link(self.testButton, "clicked()", self.onTestConnection)
        form.addRow(self.testButton)
        self.connectionLabel = qt.QLabel()
        self.connectionLabel.wordWrap = True
        form.addRow(self.connectionLabel)
        layout.addWidget(where)

        worker = ctk.ctkCollapsibleButton()
        worker.text = "Local worker"
        wform = qt.QFormLayout(worker)
        self.python = ctk.ctkPathLineEdit()
        self.python.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Executable
        self.python.currentPath = s.python or (default_worker_python() or "")
        self.python.toolTip = ("Python interpreter the worker runs in: Slicer's own PythonSlicer "
                               "(default), or an existing environment that has medsam-server")
        # currentPathChanged fires on every keystroke: save once typing pauses
        self.pathTimer = qt.QTimer()
        self.pathTimer.setSingleShot(True)
        self.pathTimer.setInterval(1000)
        link(self.pathTimer, "timeout()", self.savePaths)
        link(self.python, "currentPathChanged(QString)", lambda path: self.pathTimer.start())
        wform.addRow("Python:", self.python)
        self.torch = qt.QLineEdit("auto")
        self.torch.toolTip = ("auto: light-the-torch picks the CUDA or CPU build of PyTorch that "
                              "fits this computer (as Slicer's PyTorch extension does); or a pip "
                              "requirement such as torch==2.5.1")
        wform.addRow("PyTorch:", self.torch)
        buttons = qt.QHBoxLayout()
        self.installButton = qt.QPushButton("Install / update worker")
        link(self.installButton, "clicked()", self.onInstall)
        self.checkButton = qt.QPushButton("Check")
        link(self.checkButton, "clicked()", self.onCheck)
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.enabled = False
        link(self.cancelButton, "clicked()", self.onCancel)
        for b in (self.installButton, self.checkButton, self.cancelButton):
            buttons.addWidget(b)
        wform.addRow(buttons)
        self.progress = qt.QProgressBar()
        self.progress.visible = False
        wform.addRow(self.progress)
        self.device = qt.QComboBox()
        for value in ("auto", "cuda", "mps", "cpu"):
            self.device.addItem(value)
        self.device.currentText = s.device
        link(self.device, "currentIndexChanged(int)", self.onDeviceChanged)
        wform.addRow("Device:", self.device)
        run = qt.QHBoxLayout()
        self.startButton = qt.QPushButton("Start worker")
        link(self.startButton, "clicked()", self.onStart)
        self.stopButton = qt.QPushButton("Stop worker")
        link(self.stopButton, "clicked()", self.onStop)
        self.logButton = qt.QPushButton("Open log folder")
        link(self.logButton, "clicked()", self.onOpenLogs)
        for b in (self.startButton, self.stopButton, self.logButton):
            run.addWidget(b)
        wform.addRow(run)
        self.workerLabel = qt.QLabel()
        self.workerLabel.wordWrap = True
        self.workerLabel.setTextInteractionFlags(qt.Qt.TextSelectableByMouse)
        wform.addRow(self.workerLabel)
        layout.addWidget(worker)

        weights = ctk.ctkCollapsibleButton()
        weights.text = "MedSAM2 weights"
        cform = qt.QFormLayout(weights)
        self.checkpoint = ctk.ctkPathLineEdit()
        self.checkpoint.filters = ctk.ctkPathLineEdit.Files
        self.checkpoint.nameFilters = ["PyTorch checkpoint (*.pt *.pth)"]
        self.checkpoint.currentPath = s.checkpoint
        link(self.checkpoint, "currentPathChanged(QString)",
                                lambda path: self.pathTimer.start())
        cform.addRow("Checkpoint:", self.checkpoint)
        self.downloadButton = qt.QPushButton(f"Download {RELEASE} (156 MB, CC-BY-SA-4.0)")
        link(self.downloadButton, "clicked()", self.onDownload)
        cform.addRow(self.downloadButton)
        layout.addWidget(weights)

        self.status = qt.QLabel()
        self.status.wordWrap = True
        self.status.setTextInteractionFlags(qt.Qt.TextSelectableByMouse)
        layout.addWidget(self.status)
        self.onBackendChanged(self.local.checked)

    # ---- helpers -------------------------------------------------------------------
    def cleanup(self) -> None:
        if self.pathTimer.isActive():
            self.pathTimer.stop()
            self.savePaths()
        self.timer.stop()
        self.connections.disconnect_all()  # every widget's, the timers' included

    def onTimer(self) -> None:
        self.runner.drain()

    def say(self, text: str, error: bool = False) -> None:
        self.status.setStyleSheet(message_style("error" if error else "info"))
        self.status.text = text

    def busy(self, on: bool, cancellable: bool = False) -> None:
        for name, enabled in settings_enabled(on, cancellable, self.remote.checked).items():
            getattr(self, name).enabled = enabled
        self.progress.visible = on

    def submit(self, title: str, work, done, cancellable: bool = False) -> None:  # noqa: ANN001
        """Run ``work`` on the set-up thread; ``done``/errors come back on this thread."""
        self.busy(True, cancellable)
        self.progress.setRange(0, 0)  # busy indicator until real progress arrives

        def finished(result: object) -> None:
            self.busy(False)
            done(result)

        def failed(exc: BaseException) -> None:
            self.busy(False)
            self.say(str(getattr(exc, "message", exc)), error=True)

        task = Task(title, work, on_done=finished, on_error=failed,
                    on_cancelled=lambda: (self.busy(False), self.say(f"{title}: cancelled.")))
        self.cancel_event = task.cancel_event
        self.runner.submit(task)

    def workDir(self) -> Path:
        return SlicerRuntime.log_dir() / "install"

    # ---- settings ------------------------------------------------------------------
    def onBackendChanged(self, local: bool) -> None:
        SlicerRuntime.update_settings(backend="local" if local else "remote")
        for w in (self.url, self.token, self.testButton):
            w.enabled = not local

    def saveRemote(self) -> None:
        SlicerRuntime.update_settings(server_url=self.url.text.strip(), token=self.token.text)

    def savePaths(self) -> None:
        SlicerRuntime.update_settings(python=self.python.currentPath,
                                      checkpoint=self.checkpoint.currentPath)

    def onDeviceChanged(self, index: int) -> None:
        SlicerRuntime.update_settings(device=self.device.itemText(index))

    # ---- actions -------------------------------------------------------------------
    def onCheck(self) -> None:
        python = self.python.currentPath
        try:
            version = bundled_server_version()
        except InstallError as exc:
            self.say(str(exc), error=True)
            return
        self.submit("Check", lambda task: inspect_python(python, expected_version=version),
                    lambda info: self.say(info.message, error=not info.ok))

    def onInstall(self) -> None:
        python = self.python.currentPath or default_worker_python()
        if not python:
            self.say("Choose the Python interpreter for the worker first.", error=True)
            return
        SlicerRuntime.update_settings(python=python)
        work_dir = self.workDir()
        try:
            steps = plan_install(python, torch=self.torch.text.strip() or "auto",
                                 work_dir=work_dir)
        except InstallError as exc:
            self.say(str(exc), error=True)
            return
        log_path = SlicerRuntime.log_dir() / "install.log"
        state_path = work_dir / "state.json"

        def work(task: Task) -> None:
            def progress(p: object) -> None:
                task.post(self.onInstallProgress, p.step_index, p.step_count, p.title, p.line)
            InstallRunner(steps, log_path=log_path, state_path=state_path,
                          on_progress=progress, cancel=task.cancel_event).run()

        def done(_: object) -> None:
            self.say(f"The local worker is installed in {python}. Log: {log_path}")
            SlicerRuntime.backend_holder().reset()

        def failed(exc: BaseException) -> None:
            self.busy(False)
            if isinstance(exc, InstallCancelled):
                self.say("Install cancelled; Install again continues where it stopped.")
            else:
                self.say(f"{exc} (full log: {log_path})", error=True)

        self.busy(True, cancellable=True)
        task = Task("Install", work, on_done=lambda r: (self.busy(False), done(r)),
                    on_error=failed)
        self.cancel_event = task.cancel_event
        self.runner.submit(task)

    def onInstallProgress(self, index: int, count: int, title: str, line: str) -> None:
        self.showProgress(install_progress(index, count, title))
        self.workerLabel.text = line[-200:]

    def onCancel(self) -> None:
        if self.cancel_event is not None:
            self.cancel_event.set()

    def onDownload(self) -> None:
        python = self.python.currentPath
        if not python:
            self.say("Install the local worker (or choose its Python) first: the download "
                     "runs with medsam-server's checkpoint manager.", error=True)
            return
        # the licence comes from the server's release registry (read off the GUI thread)
        self.submit("Licence", lambda task: list_checkpoints(python),
                    lambda rows: self.confirmAndDownload(python, rows))

    def confirmAndDownload(self, python: str, rows: list) -> None:
        row = next((r for r in rows if r.get("name") == RELEASE), None)
        if row is None:
            self.say(f"This medsam-server does not know the release {RELEASE}; update the "
                     "local worker (Install / update).", error=True)
            return
        if not slicer.util.confirmOkCancelDisplay(
                f"MedSAM2 weights ({RELEASE}, from huggingface.co/wanglab/MedSAM2) are licensed "
                f"{row.get('licence')}. By downloading them you accept its terms. Download now?",
                windowTitle="MedSAM2 licence"):
            return
        log_path = SlicerRuntime.log_dir() / "download.log"

        def work(task: Task) -> Path:
            return download_checkpoint(
                python, RELEASE, cancel=task.cancel_event, log_path=log_path,
                on_progress=lambda done, total: task.post(self.onDownloadProgress, done, total))

        def done(path: Path) -> None:
            self.checkpoint.currentPath = str(path)
            SlicerRuntime.update_settings(checkpoint=str(path))
            self.say(f"Downloaded and verified {path}.")

        self.submit("Download", work, done, cancellable=True)

    def onDownloadProgress(self, done: int, total: int | None) -> None:
        bar = download_progress(done, total)
        if bar is not None:
            self.showProgress(bar)

    def showProgress(self, bar: tuple[int, int, str]) -> None:
        self.progress.setRange(0, bar[0])
        self.progress.value = bar[1]
        self.progress.format = bar[2]

    def onTestConnection(self) -> None:
        self.saveRemote()
        holder = SlicerRuntime.backend_holder()
        self.submit("Test connection", lambda task: holder().test_connection(),
                    lambda report: self.connectionLabel.setText(report.summary()))

    def onStart(self) -> None:
        holder = SlicerRuntime.backend_holder()

        def work(task: Task) -> str:
            report = holder().test_connection()  # starts the worker, then asks it /info
            return f"{report.summary()}\n{holder().describe()}"

        self.submit("Start worker", work, lambda text: self.workerLabel.setText(text))

    def onStop(self) -> None:
        SlicerRuntime.backend_holder().reset()
        self.workerLabel.text = "stopped (it starts again with the next box)"

    def onOpenLogs(self) -> None:
        folder = SlicerRuntime.log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))
