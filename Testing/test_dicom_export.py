"""DICOM SEG and RTSTRUCT of structures on the real CT series, checked by the field's own
readers: dcmqi (Slicer's SEG import), highdicom, Plastimatch (SlicerRT's RTSTRUCT engine)
and dciodvfy. The structures are TotalSegmentator's reference labels resampled onto the
series (a liver with a hole and two islands on some slices, a vertebra with its canal and
many islands); the model is not needed for what these check, so one CLI run covers the
command line."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import ERROR_PREFIX, cli, shared
from medsam_server.io.dicom_seg import ExportObject, write_seg
from medsam_server.io.dicom_series import source_series
from medsam_server.io.rtstruct import decimal_string, slice_contours, write_rtstruct
from medsam_server.io.structure_codes import code_for, rt_type_for
from medsam_server.io.volumes import VolumeError, read_volume, write_mask
from scipy import ndimage

STRUCTURES = {1: "Spleen", 5: "Liver", 6: "Stomach", 20: "Colon", 32: "Vertebrae_T12",
              52: "Aorta"}
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/run and make setup install it)")
    return path


@pytest.fixture(scope="module")
def series():  # noqa: ANN201
    folder = shared("totalseg_ct_dicom_2mm/dicom")
    return source_series(folder, read_volume(folder))


@pytest.fixture(scope="module")
def few_slices(series, tmp_path_factory) -> Path:
    """Slices 8-11 of the series as a series of their own (the same files): the tests that
    run the model propagate through 4 slices, not 20."""
    folder = tmp_path_factory.mktemp("few")
    for k in range(8, 12):
        shutil.copy(series.instances[k].filename, folder / f"{k}.dcm")
    return folder


@pytest.fixture(scope="module")
def labels(series) -> np.ndarray:
    """The reference labels on the series' grid (the file is y-flipped: matched in space)."""
    ref = sitk.ReadImage(str(shared("totalseg_ct_dicom_2mm/example_seg_dicom.nii.gz")))
    resampled = sitk.Resample(ref, series.volume.image_like(), sitk.Transform(),
                              sitk.sitkNearestNeighbor, 0)
    arr = sitk.GetArrayFromImage(resampled)
    out = np.zeros(arr.shape, np.uint8)
    for label in STRUCTURES:
        out[arr == label] = label
    # the premise: a structure with a hole and ones with two or more islands on some slice
    liver = out == 5
    assert any((ndimage.binary_fill_holes(s) & ~s).any() for s in liver)
    assert max(ndimage.label(s)[1] for s in out == 20) >= 2
    return out


@pytest.fixture(scope="module")
def objects() -> list[ExportObject]:
    colours = [(0.8, 0.3, 0.3), (0.6, 0.4, 0.2), (0.9, 0.7, 0.5), (0.5, 0.5, 0.9),
               (0.9, 0.9, 0.8), (0.8, 0.1, 0.1)]
    return [ExportObject(label, name, colours[n], code_for(name))
            for n, (label, name) in enumerate(STRUCTURES.items())]


@pytest.fixture(scope="module")
def seg_file(series, labels, objects, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    notes = write_seg(path, labels, series, objects, version="0.1.0", checkpoint="random.pt")
    assert any("study instance UID" in n for n in notes)  # this anonymised series has none
    return path


@pytest.fixture(scope="module")
def rt_file(series, labels, objects, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rt") / "rt.dcm"
    write_rtstruct(path, labels, series, objects, version="0.1.0", checkpoint="random.pt")
    return path


def test_dcmqi_reads_the_seg_back_voxel_for_voxel(seg_file, series, labels, tmp_path):
    out = tmp_path / "dcmqi"
    out.mkdir()
    run = subprocess.run([tool("segimage2itkimage"), "--inputDICOM", str(seg_file),
                          "--outputDirectory", str(out), "-t", "nii"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    meta = json.loads((out / "meta.json").read_text())
    names = {a["labelID"]: a["SegmentLabel"] for seg in meta["segmentAttributes"] for a in seg}
    assert sorted(names.values()) == sorted(STRUCTURES.values())
    # the NIfTI output of the same labels, read back
    nifti = tmp_path / "labels.nii.gz"
    write_mask(nifti, labels, series.volume)
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti)))
    grid = series.volume.image_like()
    for label_id, name in names.items():
        image = sitk.ReadImage(str(out / f"{label_id}.nii.gz"))
        back = sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(),
                                                    sitk.sitkNearestNeighbor, 0)) > 0
        label = next(k for k, v in STRUCTURES.items() if v == name)
        np.testing.assert_array_equal(back, ours == label, err_msg=name)


def test_highdicom_reads_names_codes_and_provenance(seg_file, objects):
    import highdicom as hd

    seg = hd.seg.segread(seg_file)
    assert seg.Modality == "SEG" and seg.number_of_segments == len(objects)
    for item, obj in zip(seg.SegmentSequence, objects, strict=True):
        assert item.SegmentLabel == obj.name
        assert item.SegmentAlgorithmType == "SEMIAUTOMATIC"
        assert item.SegmentAlgorithmName == "MedSAM2"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == obj.code.type[0]
        assert "checkpoint random.pt" in \
            item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion
        rgb = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        assert np.allclose(rgb, [round(c * 255) for c in obj.color], atol=2)
    assert seg.StudyInstanceUID and seg.FrameOfReferenceUID


@pytest.mark.parametrize("rule", ["or", "xor"])
def test_plastimatch_converts_the_rtstruct_back(rt_file, series, labels, rule, tmp_path):
    ct = tmp_path / "ct.nrrd"
    sitk.WriteImage(series.volume.image_like(), str(ct))
    cmd = [tool("plastimatch"), "convert", "--input", str(rt_file), "--fixed", str(ct),
           "--output-prefix", str(tmp_path / "out"), "--prefix-format", "nii.gz"]
    run = subprocess.run(cmd + (["--xor-contours"] if rule == "xor" else []),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    for label, name in STRUCTURES.items():
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{name}.nii.gz")))
        back, ours = back > 0, labels == label
        assert 2 * (back & ours).sum() / (back.sum() + ours.sum()) >= 0.97, name
        for k in np.flatnonzero(ours.sum(axis=(1, 2)) >= 50):
            dice = 2 * (back[k] & ours[k]).sum() / (back[k].sum() + ours[k].sum())
            assert dice >= 0.90, f"{name} slice {k}: {dice:.3f}"


def test_rtstruct_fields_that_planning_systems_check(rt_file, objects):
    ds = pydicom.dcmread(rt_file)
    assert ds.Modality == "RTSTRUCT" and ds.file_meta.TransferSyntaxUID.is_implicit_VR
    assert [r.ROIName for r in ds.StructureSetROISequence] == [o.name for o in objects]
    assert {r.ROIGenerationAlgorithm for r in ds.StructureSetROISequence} == {"SEMIAUTOMATIC"}
    assert {o.RTROIInterpretedType for o in ds.RTROIObservationsSequence} == {"ORGAN"}
    # Contour Data as written: each decimal string at most 16 characters (rt-utils' flaw)
    lengths = [len(str(v)) for roi in ds.ROIContourSequence for c in roi.ContourSequence
               for v in c.ContourData]
    assert lengths and max(lengths) <= 16
    images = {i.ReferencedSOPInstanceUID for i in ds.ReferencedFrameOfReferenceSequence[0]
              .RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].ContourImageSequence}
    assert len(images) == 20  # every CT instance is listed


@pytest.mark.parametrize("which", ["seg", "rt"])
def test_dciodvfy_finds_no_errors(which, seg_file, rt_file):
    path = seg_file if which == "seg" else rt_file
    run = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True,
                         timeout=120)
    report = run.stdout + run.stderr
    assert report.strip(), "dciodvfy said nothing"
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report


def test_contours_of_a_hole_and_two_islands_keep_the_same_pixels():
    mask = np.zeros((30, 40), bool)
    mask[2:20, 2:20] = True
    mask[6:12, 6:12] = False  # a hole
    mask[24:28, 30:38] = True  # a second island
    polygons = slice_contours(mask)
    assert len(polygons) == 2  # the hole is joined to its island by a keyhole cut
    from skimage.measure import points_in_poly

    rows, cols = np.mgrid[0:30, 0:40]
    centres = np.column_stack([cols.ravel(), rows.ravel()]).astype(float)
    filled = np.zeros(mask.size, bool)
    for poly in polygons:
        filled ^= points_in_poly(centres, poly)  # even-odd, like an XOR reader
    np.testing.assert_array_equal(filled.reshape(mask.shape), mask)


def test_decimal_strings_fit_dicom():
    for v in (-804.5, 0.0, -0.00001, 123456.789012, -249.51171875, 1e-9, 99999999.5):
        assert len(decimal_string(v)) <= 16
        assert float(decimal_string(v)) == pytest.approx(v, abs=1e-4, rel=1e-9)


def test_codes_names_and_types():
    assert code_for("Kidney_L").type == ("18639004", "SCT", "Left kidney")
    assert code_for("kidney_left").type == code_for("Kidney_L").type  # TotalSegmentator
    assert code_for("Lung_R").type[2] == "Right lung"
    unknown = code_for("Vertebrae_T12")
    assert not unknown.known and unknown.type == ("85756007", "SCT", "Tissue")
    given = code_for("Tumour", {"category": ["49755003", "SCT", "Morphologically Altered "
                                             "Structure"], "type": ["108369006", "SCT",
                                                                    "Neoplasm"]})
    assert given.known and given.type[0] == "108369006"
    with pytest.raises(ValueError, match="category"):
        code_for("x", {"type": ["1", "SCT", "y"]})
    assert rt_type_for(None) == "ORGAN" and rt_type_for("ptv") == "PTV"
    with pytest.raises(ValueError, match="rt_type"):
        rt_type_for("TUMOUR")


def test_an_object_empty_everywhere_is_left_out_and_all_empty_refused(series, labels,
                                                                       objects, tmp_path):
    extra = [*objects, ExportObject(99, "Nothing", (1, 1, 1), code_for("Nothing"))]
    notes = write_seg(tmp_path / "a.dcm", labels, series, extra, version="x", checkpoint="y")
    assert any(n.startswith("Nothing: empty everywhere") for n in notes)
    with pytest.raises(VolumeError, match="nothing to write"):
        write_rtstruct(tmp_path / "b.dcm", np.zeros_like(labels), series, objects,
                       version="x", checkpoint="y")
    assert not (tmp_path / "b.dcm").exists() and len(list(tmp_path.iterdir())) == 1


def test_cli_writes_an_rtstruct_with_names_codes_and_types(few_slices, random_checkpoint,
                                                           tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"objects": [
        {"label": 1, "name": "Liver", "slice": 2, "box": [150, 200, 330, 360]},
        {"label": 2, "name": "Lesion", "slice": 2, "box": [300, 180, 420, 300],
         "rt_type": "GTV", "code": {"category": ["49755003", "SCT", "Morphologically Altered "
                                                 "Structure"],
                                    "type": ["108369006", "SCT", "Neoplasm"]}}]}))
    out = tmp_path / "rt.dcm"
    rc, _, err = cli("segment", few_slices, "--prompts", prompts,
                     "--checkpoint", random_checkpoint, "--format", "rtstruct", "-o", out,
                     "--device", "cpu")
    assert rc == 0, err
    ds = pydicom.dcmread(out)
    rois = {r.ROINumber: r.ROIName for r in ds.StructureSetROISequence}
    types = {o.ReferencedROINumber: (o.RTROIInterpretedType,
                                     o.RTROIIdentificationCodeSequence[0].CodeValue)
             for o in ds.RTROIObservationsSequence}
    by_name = {rois[n]: types[n] for n in rois}
    assert by_name.get("Liver", ("ORGAN", "10200004")) == ("ORGAN", "10200004")
    assert by_name.get("Lesion", ("GTV", "108369006")) == ("GTV", "108369006")
    assert by_name  # random weights: at least one object has voxels


@pytest.mark.parametrize("case, says", [
    ("nifti_input", "must reference the images"),
    ("dcm_without_format", "needs --format"),
    ("format_without_dcm", "name it .dcm"),
    ("long_name", "at most 64"),
])
def test_bad_dicom_export_input_exits_2_and_writes_nothing(case, says, tmp_path):
    args = [shared("totalseg_ct_dicom_2mm/dicom"), "--slice", 10, "--box", 150, 200, 330, 360,
            "--checkpoint", "never-read.pt", "--format", "rtstruct", "-o", tmp_path / "o.dcm"]
    if case == "nifti_input":
        args[0] = shared("totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz")
    elif case == "dcm_without_format":
        args = args[:10] + args[12:]
    elif case == "format_without_dcm":
        args[-1] = tmp_path / "o.nii.gz"
    elif case == "long_name":
        args += ["--name", "x" * 65]
    rc, _, err = cli("segment", *args)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), err
    assert says in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_evaluate_reads_a_dicom_seg_as_pred_or_ref(seg_file, rt_file, series, labels,
                                                   tmp_path):
    """Segment N of the SEG is label N: renumber our labels 1..6 in the export's order."""
    renumbered = np.zeros_like(labels)
    for n, label in enumerate(STRUCTURES, start=1):
        renumbered[labels == label] = n
    nifti = tmp_path / "ref.nii.gz"
    write_mask(nifti, renumbered, series.volume)
    for pred, ref in ((seg_file, nifti), (nifti, seg_file)):
        csv = tmp_path / "m.csv"
        rc, out, err = cli("evaluate", pred, ref, "--csv", csv)
        assert rc == 0, err
        rows = csv.read_text().splitlines()[1:]
        assert len(rows) == len(STRUCTURES)
        assert all(float(r.split(",")[2]) == 1.0 and float(r.split(",")[3]) == 1.0
                   for r in rows), rows
    rc, _, err = cli("evaluate", seg_file, seg_file)
    assert rc == 2 and "both DICOM SEG" in err
    rc, _, err = cli("evaluate", rt_file, nifti)  # an RTSTRUCT is not a SEG
    assert rc == 2 and "not a readable DICOM SEG" in err, err


def test_batch_writes_dicom_seg_named_from_a_label_table(few_slices, labels, random_checkpoint,
                                                         tmp_path):
    """batch --format dicom-seg on the series, boxes from its reference, names from
    TotalSegmentator's labels_total.tsv; a NIfTI image case is recorded as failed."""
    reference = tmp_path / "ref.nii.gz"
    two = np.where(np.isin(labels[8:12], (1, 5)), labels[8:12], 0).astype(np.uint8)
    write_mask(reference, two, read_volume(few_slices))
    manifest = tmp_path / "m.csv"
    manifest.write_text("case,image,reference\n"
                        f"ct,{few_slices},{reference}\n"
                        f"nifti,{shared('totalseg_ct_abdomen_3mm/example_ct_sm.nii.gz')},"
                        f"{shared('totalseg_ct_abdomen_3mm/example_seg.nii.gz')}\n")
    out = tmp_path / "out"
    args = ("batch", manifest, "-o", out, "--checkpoint", random_checkpoint,
            "--boxes-from-reference", "--label-table",
            shared("totalseg_ct_dicom_2mm/labels_total.tsv"), "--format", "dicom-seg",
            "--device", "cpu", "--quiet")
    rc, _, err = cli(*args)
    assert rc == 1, err  # one case failed, recorded
    with open(out / "results.csv") as f:
        results = {r["case"]: r for r in csv.DictReader(f)}
    assert results["ct"]["status"] == "ok"
    assert results["nifti"]["status"] == "failed"
    assert "must reference the images" in results["nifti"]["message"]
    import highdicom as hd

    seg = hd.seg.segread(out / "ct.seg.dcm")
    kept = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0].CodeValue
            for s in seg.SegmentSequence}
    assert set(kept) <= {"spleen", "liver"} and kept  # empty objects are left out
    assert all(code in ("78961009", "10200004") for code in kept.values())
    metrics = (out / "metrics.csv").read_text()
    assert "ct," in metrics
    # a re-run skips the finished case and keeps its metrics
    rc2, _, _ = cli(*args)
    assert rc2 == 1  # the failed case is tried again and fails again
    assert (out / "metrics.csv").read_text().count("ct,") == metrics.count("ct,")
