"""The MedSAMSegment module panel: where MedSAM2 runs, its install and its weights (Qt glue).

Widgets only: their values go to settings_flow.SetupFlow, which decides every message,
enablement and saved setting and runs the slow work (install, download, connection test,
worker start) on the set-up thread (SlicerRuntime.settings_runner); ``render`` shows each
SetupView it hands back. Tested under pytest: settings_flow.py, install.py, settings.py.
"""

import ctk
import qt
import slicer

from MedSAMSegmentLib import SlicerRuntime, settings_flow
from MedSAMSegmentLib.connections import Connections
from MedSAMSegmentLib.install import default_worker_python
from MedSAMSegmentLib.panel_view import message_style
from MedSAMSegmentLib.settings_flow import DEVICES, DOWNLOAD_TEXT, SetupFlow, SetupView


class SettingsPanel:
    def __init__(self, layout: qt.QLayout) -> None:
        runner = SlicerRuntime.settings_runner()
        s = settings_flow.settings_form(SlicerRuntime.settings(), default_worker_python())
        self.flow = SetupFlow(
            runner, on_change=self.render, update_settings=SlicerRuntime.update_settings,
            holder=SlicerRuntime.backend_holder, log_dir=SlicerRuntime.log_dir,
            confirm=lambda text, title: slicer.util.confirmOkCancelDisplay(text, windowTitle=title))
        self.connections = Connections()  # undone by cleanup()
        link = self.connections.connect
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        link(self.timer, "timeout()", lambda: runner.drain())
        self.timer.start()

        where = ctk.ctkCollapsibleButton()
        where.text = "Where MedSAM2 runs"
        form = qt.QFormLayout(where)
        self.local = qt.QRadioButton("Local worker on this computer (started with the first box)")
        self.remote = qt.QRadioButton("Remote server (a team's GPU server)")
        self.local.checked = s.local
        self.remote.checked = not s.local
        link(self.local, "toggled(bool)", self.flow.backend_changed)
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
        link(self.testButton, "clicked()",
             lambda: self.flow.test_connection(self.url.text, self.token.text))
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
        self.python.currentPath = s.python
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
        link(self.installButton, "clicked()",
             lambda: self.flow.install(self.python.currentPath, self.torch.text))
        self.checkButton = qt.QPushButton("Check")
        link(self.checkButton, "clicked()", lambda: self.flow.check(self.python.currentPath))
        self.cancelButton = qt.QPushButton("Cancel")
        link(self.cancelButton, "clicked()", self.flow.cancel)
        for b in (self.installButton, self.checkButton, self.cancelButton):
            buttons.addWidget(b)
        wform.addRow(buttons)
        self.progress = qt.QProgressBar()
        self.progress.visible = False
        wform.addRow(self.progress)
        self.device = qt.QComboBox()
        for value in DEVICES:
            self.device.addItem(value)
        self.device.currentText = s.device
        link(self.device, "currentIndexChanged(int)",
             lambda index: self.flow.device_changed(self.device.itemText(index)))
        wform.addRow("Device:", self.device)
        run = qt.QHBoxLayout()
        self.startButton = qt.QPushButton("Start worker")
        link(self.startButton, "clicked()", self.flow.start_worker)
        self.stopButton = qt.QPushButton("Stop worker")
        link(self.stopButton, "clicked()", self.flow.stop_worker)
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
        link(self.checkpoint, "currentPathChanged(QString)", lambda path: self.pathTimer.start())
        cform.addRow("Checkpoint:", self.checkpoint)
        self.downloadButton = qt.QPushButton(DOWNLOAD_TEXT)
        link(self.downloadButton, "clicked()", lambda: self.flow.download(self.python.currentPath))
        cform.addRow(self.downloadButton)
        layout.addWidget(weights)

        self.status = qt.QLabel()
        self.status.wordWrap = True
        self.status.setTextInteractionFlags(qt.Qt.TextSelectableByMouse)
        layout.addWidget(self.status)
        self.flow.backend_changed(self.local.checked)  # saves the choice, renders the panel

    # ---- helpers -------------------------------------------------------------------
    def cleanup(self) -> None:
        if self.pathTimer.isActive():
            self.pathTimer.stop()
            self.savePaths()
        self.timer.stop()
        self.connections.disconnect_all()  # every widget's, the timers' included

    def render(self, v: SetupView) -> None:
        self.status.setStyleSheet(message_style(v.level))
        self.status.text = v.message
        for name, enabled in v.enabled.items():
            getattr(self, name).enabled = enabled
        self.progress.visible = v.busy
        self.progress.setRange(0, v.progress[0])
        self.progress.value = v.progress[1]
        self.progress.format = v.progress[2]
        self.workerLabel.text = v.worker
        self.connectionLabel.text = v.connection
        if v.checkpoint is not None:
            self.checkpoint.currentPath = v.checkpoint

    def savePaths(self) -> None:
        self.flow.save_paths(self.python.currentPath, self.checkpoint.currentPath)

    def saveRemote(self) -> None:
        self.flow.save_remote(self.url.text, self.token.text)

    def onOpenLogs(self) -> None:
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(self.flow.log_folder())))
