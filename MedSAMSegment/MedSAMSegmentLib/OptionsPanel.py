"""The MedSAM2 effect's options frame (Qt glue): widgets only, no logic.

The effect builds it in ``setupOptionsFrame`` and calls ``refresh`` with a plain
``PanelState``; button presses call the effect's handlers given in ``actions``.
"""

from __future__ import annotations

from collections.abc import Callable

import ctk
import qt

from .connections import Connections
from .panel_state import PanelState
from .panel_view import (
    TimePanelState,
    message_style,
    panel_view,
    propagate_options,
    review_row,
    time_range,
    time_view,
)
from .source_volume import CT_PRESETS

DIRECTIONS = (("Both directions", "both"), ("Increasing slice numbers", "forward"),
              ("Decreasing slice numbers", "backward"))


class OptionsPanel:
    def __init__(self, scriptedEffect: object, actions: dict[str, Callable],
                 modality: str = "auto") -> None:
        self.actions = actions
        self.connections = Connections()  # undone by close(), from the effect's cleanup
        link = self.connections.connect
        self.mode = "box"
        effect = scriptedEffect

        self.status = qt.QLabel()
        self.status.wordWrap = True
        effect.addOptionsWidget(self.status)
        self.message = qt.QLabel()
        self.message.wordWrap = True
        self.message.setTextInteractionFlags(qt.Qt.TextSelectableByMouse)
        effect.addOptionsWidget(self.message)

        # prompt modes
        modes = qt.QHBoxLayout()
        self.mode_group = qt.QButtonGroup()
        self.mode_buttons = {}
        for key, text, tip in (
                ("box", "Box", "Left-drag a box around the structure on any slice"),
                ("positive", "+ Point", "Left-click inside the structure to add it"),
                ("negative", "− Point", "Left-click outside the structure to remove it")):
            button = qt.QToolButton()
            button.text = text
            button.toolTip = tip
            button.checkable = True
            button.setSizePolicy(qt.QSizePolicy.Expanding, qt.QSizePolicy.Fixed)
            self.mode_group.addButton(button)
            modes.addWidget(button)
            link(button, "clicked()", lambda k=key: self._set_mode(k))
            self.mode_buttons[key] = button
        self.mode_buttons["box"].checked = True
        effect.addLabeledOptionsWidget("Prompt:", modes)
        self.from_segment = qt.QPushButton("Use this slice of the segment as the prompt")
        self.from_segment.toolTip = ("After correcting the segment with Paint/Erase on a slice, "
                                     "make that slice the prompt and propagate again")
        link(self.from_segment, "clicked()", actions["from_segment"])
        effect.addOptionsWidget(self.from_segment)

        # propagation
        prop = ctk.ctkCollapsibleButton()
        prop.text = "Propagate"
        form = qt.QFormLayout(prop)
        self.direction = qt.QComboBox()
        for text, value in DIRECTIONS:
            self.direction.addItem(text, value)
        form.addRow("Direction:", self.direction)
        rng = qt.QHBoxLayout()
        self.whole = qt.QCheckBox("whole volume")
        self.whole.checked = True
        self.first = qt.QSpinBox()
        self.last = qt.QSpinBox()
        for spin in (self.first, self.last):
            spin.enabled = False
        link(self.whole, "toggled(bool)", lambda on: self._range_enabled(not on))
        rng.addWidget(self.whole)
        rng.addWidget(qt.QLabel("or slices"))
        rng.addWidget(self.first)
        rng.addWidget(qt.QLabel("to"))
        rng.addWidget(self.last)
        form.addRow("Range:", rng)
        self.stop_empty = qt.QSpinBox()
        self.stop_empty.setRange(0, 100)
        self.stop_empty.toolTip = ("Stop a direction after this many slices the model finds "
                                   "empty (0 = go to the end of the range)")
        form.addRow("Stop after empty slices:", self.stop_empty)
        buttons = qt.QHBoxLayout()
        self.propagate = qt.QPushButton("Propagate")
        link(self.propagate, "clicked()", lambda: actions["propagate"](False))
        self.propagate_all = qt.QPushButton("Propagate all segments")
        link(self.propagate_all, "clicked()", lambda: actions["propagate"](True))
        self.cancel = qt.QPushButton("Cancel")
        self.cancel.toolTip = "Stop the propagation within a slice; slices done stay in the preview"
        link(self.cancel, "clicked()", actions["cancel"])
        for b in (self.propagate, self.propagate_all, self.cancel):
            buttons.addWidget(b)
        form.addRow(buttons)
        self.progress = qt.QProgressBar()
        self.progress.visible = False
        form.addRow(self.progress)
        effect.addOptionsWidget(prop)

        # through time: shown only when the source volume is a sequence browser's proxy
        self.time_group = ctk.ctkCollapsibleButton()
        self.time_group.text = "Through time"
        self.time_group.visible = False
        tform = qt.QFormLayout(self.time_group)
        self.time_note = qt.QLabel()
        self.time_note.wordWrap = True
        tform.addRow(self.time_note)
        trange = qt.QHBoxLayout()
        self.time_whole = qt.QCheckBox("all frames")
        self.time_whole.checked = True
        self.time_first = qt.QSpinBox()
        self.time_last = qt.QSpinBox()
        for spin in (self.time_first, self.time_last):
            spin.enabled = False
        link(self.time_whole, "toggled(bool)", lambda on: self._time_range_enabled(not on))
        for w in (self.time_whole, qt.QLabel("or frames"), self.time_first, qt.QLabel("to"),
                  self.time_last):
            trange.addWidget(w)
        tform.addRow("Range:", trange)
        tbuttons = qt.QHBoxLayout()
        self.propagate_time = qt.QPushButton("Propagate through time")
        self.propagate_time.toolTip = ("Segment the other frames from the frames with prompts; "
                                       "scrub the browser to see each frame meanwhile")
        link(self.propagate_time, "clicked()", actions["propagate_time"])
        self.undo_time = qt.QPushButton("Undo apply through time")
        self.undo_time.toolTip = "Take the last Apply back on every frame it wrote"
        link(self.undo_time, "clicked()", actions["undo_time"])
        tbuttons.addWidget(self.propagate_time)
        tbuttons.addWidget(self.undo_time)
        tform.addRow(tbuttons)
        effect.addOptionsWidget(self.time_group)

        # review
        review = ctk.ctkCollapsibleButton()
        review.text = "Review (least confident slices first)"
        rform = qt.QVBoxLayout(review)
        self.review = qt.QListWidget()
        self.review.setMaximumHeight(110)
        link(self.review, "itemDoubleClicked(QListWidgetItem*)", lambda item: self._jump())
        rform.addWidget(self.review)
        nav = qt.QHBoxLayout()
        self.prev = qt.QPushButton("Previous")
        self.next = qt.QPushButton("Next")
        link(self.prev, "clicked()", lambda: self._step(-1))
        link(self.next, "clicked()", lambda: self._step(1))
        nav.addWidget(self.prev)
        nav.addWidget(self.next)
        rform.addLayout(nav)
        effect.addOptionsWidget(review)

        # intensity
        intensity = ctk.ctkCollapsibleButton()
        intensity.text = "Intensity"
        intensity.collapsed = True
        iform = qt.QFormLayout(intensity)
        self.modality = qt.QComboBox()
        for text, value in (("Automatic (CT if air is present)", "auto"),
                            ("CT: the view's window/level", "ct"), ("MR: normalised", "mr")):
            self.modality.addItem(text, value)
        self.modality.setCurrentIndex(max(self.modality.findData(modality), 0))  # saved choice
        link(self.modality, "currentIndexChanged(int)",
                              lambda i: actions["modality"](self.modality.itemData(i)))
        iform.addRow("Model input:", self.modality)
        presets = qt.QHBoxLayout()
        for name, (level, width) in CT_PRESETS.items():
            b = qt.QPushButton(name)
            b.toolTip = f"Show the volume with level {level:g} / width {width:g} HU"
            link(b, "clicked()", lambda lv=level, w=width: actions["preset"](lv, w))
            presets.addWidget(b)
        iform.addRow("CT presets:", presets)
        self.model_window = qt.QLabel()
        self.use_window = qt.QPushButton("Use view window")
        self.use_window.toolTip = "Send the volume again with the window the view shows now"
        link(self.use_window, "clicked()", actions["use_window"])
        row = qt.QHBoxLayout()
        row.addWidget(self.model_window)
        row.addWidget(self.use_window)
        iform.addRow("MedSAM2 sees:", row)
        effect.addOptionsWidget(intensity)

        # apply
        self.apply_mode = qt.QComboBox()
        self.apply_mode.addItem("Replace the segment on the result's slices", "replace")
        self.apply_mode.addItem("Add to the segment", "add")
        effect.addLabeledOptionsWidget("Apply:", self.apply_mode)
        self.opacity = ctk.ctkSliderWidget()
        self.opacity.minimum, self.opacity.maximum = 0.0, 1.0
        self.opacity.singleStep = 0.05
        self.opacity.value = 0.6
        link(self.opacity, "valueChanged(double)", actions["opacity"])
        effect.addLabeledOptionsWidget("Preview opacity:", self.opacity)
        finish = qt.QHBoxLayout()
        self.discard = qt.QPushButton("Discard")
        self.discard.toolTip = "Forget this segment's MedSAM2 preview and prompts (the segment stays)"
        link(self.discard, "clicked()", actions["discard"])
        self.apply = qt.QPushButton("Apply")
        self.apply.toolTip = "Write the preview into the segment (Undo restores it; Enter)"
        link(self.apply, "clicked()", lambda: actions["apply"](False))
        self.apply_all = qt.QPushButton("Apply all")
        link(self.apply_all, "clicked()", lambda: actions["apply"](True))
        for b in (self.discard, self.apply, self.apply_all):
            finish.addWidget(b)
        effect.addOptionsWidget(finish)
        self.settings = qt.QPushButton("Server and model settings…")
        link(self.settings, "clicked()", actions["settings"])
        effect.addOptionsWidget(self.settings)

    def close(self) -> None:
        """Disconnect every widget (the effect's cleanup): the lambdas hold the effect."""
        self.connections.disconnect_all()

    # ---- values --------------------------------------------------------------------
    def propagate_options(self) -> dict:
        return propagate_options(self.direction.currentData, self.whole.checked,
                                 self.first.value, self.last.value, self.stop_empty.value)

    def time_options(self) -> dict:
        return time_range(self.time_whole.checked, self.time_first.value, self.time_last.value)

    def replace(self) -> bool:
        return self.apply_mode.currentData == "replace"

    def show_message(self, text: str, level: str) -> None:
        self.message.setStyleSheet(message_style(level))
        self.message.text = text

    def refresh(self, s: PanelState, t: TimePanelState | None = None) -> None:
        v = time_view(panel_view(s, whole_volume=self.whole.checked), t or TimePanelState(),
                      whole_clip=self.time_whole.checked)
        self.status.text = v.status
        for name, on in v.enabled.items():
            getattr(self, name).enabled = on
        self.progress.visible = v.progress_visible
        if v.progress is not None:
            self.progress.setRange(0, v.progress[0])
            self.progress.value = v.progress[1]
            self.progress.format = v.progress[2]
        for spin in (self.first, self.last):
            spin.setRange(0, v.range_max)
        if v.last_slice is not None:
            self.last.value = v.last_slice
        self.model_window.text = v.model_window
        self.time_group.visible = v.time_visible
        self.time_note.text = v.time_note
        self.time_note.visible = bool(v.time_note)
        for spin in (self.time_first, self.time_last):
            spin.setRange(0, v.time_range_max)
        if v.time_last is not None:
            self.time_last.value = v.time_last
        was = self.review.blockSignals(True)
        self.review.clear()
        for text in v.review:
            self.review.addItem(text)
        self.review.blockSignals(was)
        self._review_slices = v.review_slices

    # ---- internals -----------------------------------------------------------------
    def _set_mode(self, mode: str) -> None:
        self.mode = mode

    def _range_enabled(self, on: bool) -> None:
        self.first.enabled = on
        self.last.enabled = on

    def _time_range_enabled(self, on: bool) -> None:
        self.time_first.enabled = on
        self.time_last.enabled = on

    def _step(self, delta: int) -> None:
        row = review_row(self.review.currentRow, self.review.count, delta)
        if row is not None:
            self.review.setCurrentRow(row)
            self._jump()

    def _jump(self) -> None:
        row = self.review.currentRow
        slices = getattr(self, "_review_slices", [])
        if 0 <= row < len(slices):
            self.actions["jump"](slices[row])
