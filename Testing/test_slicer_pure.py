"""The Slicer side's pure logic: annotation state, review order, log format, the worker
thread, settings. No slicer, no Qt needed."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import numpy as np
import pytest
from MedSAMSegmentLib.annotation import AnnotationError, AnnotationState
from MedSAMSegmentLib.annotation_log import AnnotationLog, read_log
from MedSAMSegmentLib.settings import BackendHolder, DictStore, Settings, load, save
from MedSAMSegmentLib.tasks import Task, TaskRunner


# ---------------------------------------------------------------- annotation state
def test_objects_follow_segments_and_keep_their_axis():
    st = AnnotationState((5, 8, 9))
    a = st.object_for("Liver", "k")
    b = st.object_for("Spleen", "k")
    assert (a.object_id, b.object_id) == (1, 2)
    assert st.object_for("Liver", "k") is a
    with pytest.raises(AnnotationError, match="Discard"):
        st.object_for("Liver", "j")
    st.remove("Liver")
    assert st.object_for("Liver", "j").object_id == 3  # ids are never reused in a session
    assert st.by_object_id(2) is b


def test_slice_results_pending_and_apply():
    st = AnnotationState((4, 3, 3))
    obj = st.object_for("S", "j")
    m = np.zeros((4, 3), bool)
    m[1:3, 0:2] = True  # axis j slice: rows k, columns i
    assert st.apply_slice(obj, "j", 1, m, 0.9, 0.8)
    assert not st.apply_slice(obj, "j", 1, m, 0.9, 0.8)  # same mask: unchanged
    assert obj.mask[:, 1, :].sum() == 4 and obj.mask.sum() == 4
    assert obj.pending == {1} and st.has_pending()
    assert np.array_equal(obj.pending_mask(), obj.mask)
    assert st.mark_applied(obj) == {1}
    assert not st.has_pending() and obj.pending_mask().sum() == 0
    assert obj.mask.sum() == 4  # results stay for review and replay checks
    with pytest.raises(AnnotationError):
        st.apply_slice(obj, "j", 0, np.zeros((3, 3), bool), 0.5, 0.5)  # wrong slice shape


def test_review_queue_lists_least_confident_non_empty_slices_first():
    st = AnnotationState((6, 4, 4))
    obj = st.object_for("S", "k")
    full = np.ones((4, 4), bool)
    for index, iou, score, mask in ((0, 0.2, -3.0, np.zeros((4, 4), bool)),  # empty: skipped
                                    (1, 0.95, 5.0, full), (2, 0.61, 2.0, full),
                                    (3, 0.61, 1.0, full), (4, 0.8, 3.0, full)):
        st.apply_slice(obj, "k", index, mask, iou, score)
    queue = st.review_queue("S")
    assert [it.index for it in queue] == [3, 2, 4, 1]
    assert queue[0].voxels == 16
    assert st.review_queue("S", limit=2)[-1].index == 2
    assert st.review_queue("nope") == []


def test_differing_slices_counts_slices_not_voxels():
    st = AnnotationState((5, 4, 4))
    obj = st.object_for("S", "j")
    st.apply_slice(obj, "j", 1, np.ones((5, 4), bool), 0.9, 1.0)
    server = obj.mask.copy()
    assert st.differing_slices({1: server}) == 0
    server[0, 1, 0] = False
    server[:, 3, :] = True
    assert st.differing_slices({1: server}) == 2  # slices j=1 and j=3 along the object's axis
    assert st.differing_slices({9: server}) == 0  # an object we do not have


# ---------------------------------------------------------------- annotation log
def test_log_lines_are_complete_json_records_without_image_data(tmp_path):
    log = AnnotationLog(tmp_path / "sub" / "log.jsonl")
    log.write("box", volume="CT 1", segment="Liver", object_id=np.int64(1), axis="k",
              slice=np.int64(14), box=(45.0, 27.0, 104.0, 85.0))
    log.write("apply", volume="CT 1", segment="Liver", object_id=1, mode="replace", slices=30,
              voxels=1234, seconds_since_first_prompt=74.31234)
    with pytest.raises(TypeError, match="no image data"):
        log.write("mask", volume="CT 1", segment="Liver", object_id=1, mask=np.ones((3, 3)))
    with pytest.raises(ValueError, match="unknown annotation event"):
        log.write("paint", volume="CT 1", segment="Liver", object_id=1)
    with open(log.path, "a") as f:
        f.write('{"time": "torn')  # a crash mid-line
    records = read_log(log.path)
    assert [r["event"] for r in records] == ["box", "apply"]
    assert records[0]["box"] == [45.0, 27.0, 104.0, 85.0] and records[0]["slice"] == 14
    assert records[1]["seconds_since_first_prompt"] == 74.312
    for r in records:
        assert {"time", "event", "volume", "segment", "object"} <= set(r)
        json.dumps(r)


# ---------------------------------------------------------------- worker thread
def _drain_until(runner: TaskRunner, cond, timeout=10.0):
    t0 = time.monotonic()
    while not cond() and time.monotonic() - t0 < timeout:
        runner.drain()
        time.sleep(0.01)
    runner.drain()
    assert cond()


def test_tasks_run_in_order_off_the_main_thread_and_report_on_drain():
    runner = TaskRunner()
    main = threading.get_ident()
    seen, done = [], []

    def work(task):
        assert threading.get_ident() != main
        task.post(seen.append, "progress")
        return 42

    runner.submit(Task("a", work, on_done=lambda r: done.append((threading.get_ident(), r))))
    runner.submit(Task("b", lambda t: 7, on_done=lambda r: done.append((threading.get_ident(), r))))
    time.sleep(0.2)
    assert seen == [] and done == []  # posted callbacks run only when the main thread drains
    _drain_until(runner, lambda: len(done) == 2)
    assert seen == ["progress"]
    assert done == [(main, 42), (main, 7)]
    assert not runner.busy
    assert runner.shutdown()


def test_errors_and_cancel_are_reported_never_swallowed():
    runner = TaskRunner()
    errors, cancelled = [], []
    started = threading.Event()

    def slow(task):
        started.set()
        while True:
            task.check_cancelled()
            time.sleep(0.01)

    runner.submit(Task("boom", lambda t: 1 / 0, on_error=errors.append))
    long = runner.submit(Task("slow", slow, on_cancelled=lambda: cancelled.append("slow")))
    queued = runner.submit(Task("queued", lambda t: 1, on_cancelled=lambda: cancelled.append("q")))
    assert started.wait(5)
    t0 = time.monotonic()
    runner.cancel_all()
    _drain_until(runner, lambda: len(cancelled) == 2)
    assert time.monotonic() - t0 < 2
    assert isinstance(errors[0], ZeroDivisionError)
    assert long.state == "cancelled" and queued.state == "cancelled"
    assert runner.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        runner.submit(Task("late", lambda t: 1))


def test_a_failing_callback_does_not_stop_the_others():
    runner = TaskRunner()
    out = []
    runner.post(lambda: 1 / 0)
    runner.post(out.append, "still runs")
    runner.drain()
    assert out == ["still runs"]
    runner.shutdown()


# ---------------------------------------------------------------- settings
def test_settings_round_trip_and_validation(tmp_path, monkeypatch):
    store = DictStore()
    assert load(store) == Settings()
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"x")
    s = Settings(python="/usr/bin/python3", checkpoint=str(ckpt), device="cpu")
    save(store, s)
    assert store.values["MedSAMSegment/device"] == "cpu"
    assert load(store) == s
    assert s.validate() == []
    assert any("Install" in p for p in Settings().validate())
    monkeypatch.delenv("MEDSAM_TOKEN", raising=False)
    remote = Settings(backend="remote", server_url="https://gpu.example.org")
    assert any("token" in p for p in remote.validate())
    monkeypatch.setenv("MEDSAM_TOKEN", "x" * 20)
    assert remote.validate() == []
    assert "unknown device 'tpu'" in Settings(device="tpu").validate()


def test_backend_holder_builds_from_settings_and_refuses_an_unset_one(tmp_path):
    from medsam_client.client import MedSAMError
    from MedSAMSegmentLib.backend import RemoteBackend

    current = {"s": Settings()}
    holder = BackendHolder(lambda: current["s"], lambda: tmp_path)
    with pytest.raises(MedSAMError, match="not set up"):
        holder()
    current["s"] = Settings(backend="remote", server_url="http://127.0.0.1:9", token="t" * 20)
    backend = holder()
    assert isinstance(backend, RemoteBackend) and holder() is backend
    holder.reset()
    assert holder.peek() is None and holder() is not backend
    with pytest.raises(MedSAMError, match="http"):
        RemoteBackend("ftp://x", "t")


# Every settings key, as QSettings/PythonQt can hand it back: saved text, a hand-edited INI
# value with unquoted commas (a QStringList, i.e. a list), a number, a flag, bytes, nothing.
@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Settings)])
@pytest.mark.parametrize("stored, text", [
    ("cpu", "cpu"), (["/data/a", "b/python3"], "/data/a, b/python3"), (8765, "8765"),
    (True, "true"), (b"/opt/w.pt", "/opt/w.pt"), (None, None),
])
def test_every_setting_reads_back_as_the_text_saved(field, stored, text):
    from MedSAMSegmentLib.settings import stored_text

    store = DictStore()
    store.values[f"MedSAMSegment/{field}"] = stored
    loaded = getattr(load(store), field)
    assert stored_text(stored) == text
    assert loaded == (getattr(Settings(), field) if text is None else text)
    assert isinstance(loaded, str)


# ---------------------------------------------------------------- provenance (pure)
def test_provenance_tags_say_semiautomatic_medsam2_and_what_ran():
    from medsam_client.protocol import Info
    from MedSAMSegmentLib.provenance import provenance_tags

    bare = provenance_tags(None, 3)
    assert bare == {"DICOM.SegmentAlgorithmType": "SEMIAUTOMATIC",
                    "DICOM.SegmentAlgorithmName": "MedSAM2", "MedSAM2.Prompts": "3"}
    info = Info("0.1.0", 1, "MedSAM2_latest.pt", "ab" * 32, "cpu", 1, 0, {}, {}, [],
                precision="bf16")
    tags = provenance_tags(info, 1)
    assert tags["MedSAM2.Checkpoint"] == "MedSAM2_latest.pt"
    assert tags["MedSAM2.CheckpointSha256"] == "ab" * 32
    assert tags["MedSAM2.Precision"] == "bf16" and tags["MedSAM2.ServerVersion"] == "0.1.0"


def test_terminology_codes_and_the_export_note():
    from MedSAMSegmentLib.provenance import export_note, terminology_codes

    # a new vtkSegment's entry, as slicer-core serialises it
    tissue = ("Segmentation category and type - 3D Slicer General Anatomy list~"
              "SCT^85756007^Tissue~SCT^85756007^Tissue~^^~Anatomic codes - DICOM master list"
              "~^^~^^")
    assert terminology_codes(tissue) == (("SCT", "85756007", "Tissue"),
                                         ("SCT", "85756007", "Tissue"))
    assert export_note(tissue) == ""
    for missing in ("", "ctx~^^~^^~^^~~^^~^^", "garbage"):
        assert terminology_codes(missing) is None
        assert "DICOM export will refuse it" in export_note(missing)


def test_a_new_segment_has_the_terminology_the_note_reads():
    slicer = pytest.importorskip("slicer")
    from MedSAMSegmentLib.provenance import export_note

    segment = slicer.vtkSegment()
    assert export_note(segment.GetTerminology()) == ""
    segment.SetTerminology("")
    assert export_note(segment.GetTerminology())
