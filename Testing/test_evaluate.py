"""``medsam-server evaluate``: DSC and NSD against hand-worked values and real masks.

NSD is DeepMind's surfel-area weighted surface Dice. For an n-voxel cube its surface
elements sit on the voxel-corner lattice: (n-1)^2 flat ones per face (area = the face's
two spacings multiplied), n-1 per edge (a bevel: edge spacing x half the diagonal of the
other two) and one per corner (a triangle: 1/8 of the norm of the three spacing products).
A copy shifted by one voxel along x (1 mm) then matches the original exactly on the side
faces except where the shift moves them, which the tests below count element by element.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ERROR_PREFIX, cli, shared
from medsam_server.batch.evaluate import mask_metrics, read_metrics_csv
from medsam_server.io.volumes import read_volume, write_mask
from scipy import ndimage
from surface_distance import metrics as deepmind

CT_SEG = "totalseg_ct_abdomen_3mm/example_seg.nii.gz"
# surface-distance 0.1 (called directly below) imports deprecated scipy.ndimage names
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")


def write_labels(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0),
                 origin=(0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(arr.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def cube_pair(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Reference: an n³ cube of label 1; prediction: the same cube one voxel further in x."""
    ref = np.zeros((n + 4, n + 4, n + 5), np.uint8)  # (k, j, i): x is the last axis
    ref[2:2 + n, 2:2 + n, 2:2 + n] = 1
    pred = np.zeros_like(ref)
    pred[2:2 + n, 2:2 + n, 3:3 + n] = 1
    return ref, pred


def shifted_cube_nsd(n: int, sx: float, sy: float, sz: float) -> float:
    """NSD of ``cube_pair`` at a tolerance below sx (and below sy, sz), by hand.

    Lattice points x = 0..n. Within tolerance (distance 0 to the other cube's surface):
    the side-face and edge elements at x = 1..n-1 (each such x has 4 x-running edge
    elements and 2(n-1) face elements on y faces and on z faces), plus at x = n the
    ring of 4 corners and 2(n-1) edge elements along y and along z. The rest (face
    x = 0, all at x distance 1 mm; the inside of face x = n) is 1 mm away. By symmetry the
    prediction's share equals the reference's, so NSD = area within / total area.
    """
    edge_x = sx * math.hypot(sy, sz) / 2
    edge_y = sy * math.hypot(sx, sz) / 2
    edge_z = sz * math.hypot(sx, sy) / 2
    corner = math.sqrt((sy * sz) ** 2 + (sx * sz) ** 2 + (sx * sy) ** 2) / 8
    total = (2 * (n - 1) ** 2 * (sy * sz + sx * sz + sx * sy)
             + 4 * (n - 1) * (edge_x + edge_y + edge_z) + 8 * corner)
    within = ((n - 1) * (4 * edge_x + 2 * (n - 1) * sx * (sy + sz))
              + 4 * corner + 2 * (n - 1) * (edge_y + edge_z))
    return within / total


def test_two_voxel_cube_by_hand():
    # n = 2, 1 mm: 6 face elements (area 1), 12 edge ones (√2/2), 8 corners (√3/8):
    # total 6 + 6√2 + √3. Within tolerance: at x = 1, 4 edges + 4 faces (2√2 + 4); at
    # x = 2, 4 corners + 4 edges (√3/2 + 2√2).
    nsd = (4 + 4 * math.sqrt(2) + math.sqrt(3) / 2) / (6 + 6 * math.sqrt(2) + math.sqrt(3))
    assert shifted_cube_nsd(2, 1.0, 1.0, 1.0) == pytest.approx(nsd, rel=1e-12)
    ref, pred = cube_pair(2)
    dsc, got = mask_metrics(ref == 1, pred == 1, (1.0, 1.0, 1.0), 0.5)
    assert (dsc, got) == (pytest.approx(0.5, abs=1e-12), pytest.approx(nsd, abs=1e-12))


def test_shifted_cube_on_anisotropic_spacing(tmp_path):
    ref, pred = cube_pair(4)
    spacing = (1.0, 2.0, 3.0)  # x, y, z in mm
    r = write_labels(tmp_path / "ref.nii.gz", ref, spacing)
    p = write_labels(tmp_path / "pred.nii.gz", pred, spacing)
    out = tmp_path / "m.csv"
    rc, so, se = cli("evaluate", p, r, "--tolerance-mm", 0.5, "--csv", out)
    assert rc == 0, se
    [row] = read_metrics_csv(out)
    assert (row.case, row.label) == ("ref", 1)
    assert row.dsc == pytest.approx(3 / 4, abs=1e-12)  # overlap 4·4·3 of 64 + 64 voxels
    assert row.nsd == pytest.approx(shifted_cube_nsd(4, *spacing), abs=1e-9)
    assert row.nsd == pytest.approx(0.50595957, abs=1e-8)
    assert out.read_text().splitlines()[0] == "case,label,dsc,nsd"
    # at the default 2 mm every element is at most 1 mm from the other surface
    rc, so, se = cli("evaluate", p, r, "--csv", out)
    assert rc == 0, se
    [row] = read_metrics_csv(out)
    assert (row.dsc, row.nsd) == (pytest.approx(0.75, abs=1e-12), 1.0)
    # the summary: mean and median per label, on stdout
    assert "NSD tolerance 2 mm" in so
    assert so.splitlines()[-1].split() == ["1", "1", "0.7500", "0.7500", "1.0000", "1.0000"]


def test_spacing_is_taken_from_the_files(tmp_path):
    # the same voxels at 1 mm isotropic: the hand value changes, and so must the result
    ref, pred = cube_pair(4)
    r = write_labels(tmp_path / "ref.nii.gz", ref)
    p = write_labels(tmp_path / "pred.nii.gz", pred)
    out = tmp_path / "m.csv"
    rc, _, se = cli("evaluate", p, r, "--tolerance-mm", 0.5, "--csv", out)
    assert rc == 0, se
    [row] = read_metrics_csv(out)
    assert row.nsd == pytest.approx(shifted_cube_nsd(4, 1.0, 1.0, 1.0), abs=1e-9)
    assert row.nsd != pytest.approx(shifted_cube_nsd(4, 1.0, 2.0, 3.0), abs=1e-3)


def test_empty_label_conventions(tmp_path):
    ref, pred = cube_pair(4)
    ref[0, 0, 0] = 4  # label 4 only in the reference: the prediction misses it
    pred[0, 0, 1] = 3  # label 3 only in the prediction: a false positive
    r = write_labels(tmp_path / "ref.nii.gz", ref)
    p = write_labels(tmp_path / "pred.nii.gz", pred)
    out = tmp_path / "m.csv"
    rc, _, se = cli("evaluate", p, r, "--labels", 1, 2, 3, 4, "--csv", out)
    assert rc == 0, se
    got = {m.label: (m.dsc, m.nsd) for m in read_metrics_csv(out)}
    assert got[2] == (1.0, 1.0)  # absent from both
    assert got[3] == (0.0, 0.0)  # reference empty, prediction not
    assert got[4] == (0.0, 0.0)  # prediction empty: no overlap, no surface within tolerance
    assert got[1][0] == pytest.approx(0.75)
    # without --labels: every label in either volume (so 2 is not listed)
    rc, _, se = cli("evaluate", p, r, "--csv", out)
    assert rc == 0, se
    assert [m.label for m in read_metrics_csv(out)] == [1, 3, 4]


def test_numbers_equal_deepmind_surface_distance_on_random_blobs():
    # our per-label cropping must not change a digit of what the package computes
    rng = np.random.default_rng(3)
    ref = ndimage.binary_dilation(rng.random((12, 14, 16)) > 0.93, iterations=1)
    pred = ndimage.binary_dilation(rng.random((12, 14, 16)) > 0.93, iterations=1)
    spacing = (2.5, 0.8, 1.1)
    whole = deepmind.compute_surface_distances(ref, pred, spacing)
    expected_nsd = deepmind.compute_surface_dice_at_tolerance(whole, 1.5)
    expected_dsc = deepmind.compute_dice_coefficient(ref, pred)
    assert mask_metrics(ref, pred, spacing, 1.5) == (expected_dsc, expected_nsd)


@pytest.fixture(scope="module")
def eroded_case(tmp_path_factory):
    """The real CT reference (41 labels) and a prediction: liver eroded, spleen deleted.

    The prediction is a Slicer .seg.nrrd in one folder, the reference a NIfTI in another:
    folders are matched by case name.
    """
    root = tmp_path_factory.mktemp("eroded")
    reference = read_volume(shared(CT_SEG))
    pred = reference.array.copy()
    liver = reference.array == 5
    eroded = ndimage.binary_erosion(liver)  # 6-connected, one voxel (3 mm)
    pred[liver & ~eroded] = 0
    pred[pred == 1] = 0  # spleen missed
    (root / "pred").mkdir()
    (root / "ref").mkdir()
    labels = sorted(set(np.unique(pred).tolist()) - {0})
    write_mask(root / "pred" / "abdomen.seg.nrrd", pred, reference,
               segments=[(v, f"label_{v}", (0.5, 0.5, 0.5)) for v in labels])
    sitk.WriteImage(sitk.ReadImage(str(shared(CT_SEG))), str(root / "ref" / "abdomen.nii.gz"))
    (root / "pred" / "results.csv").write_text("not an image\n")  # ignored
    return root, reference.array, pred, liver, eroded


def test_real_reference_against_an_eroded_copy(eroded_case):
    root, ref, pred, liver, eroded = eroded_case
    out = root / "metrics.csv"
    rc, so, se = cli("evaluate", root / "pred", root / "ref", "--csv", out)
    assert rc == 0, se
    rows = {m.label: m for m in read_metrics_csv(out)}
    assert {m.case for m in rows.values()} == {"abdomen"}
    assert len(rows) == 41
    assert (rows[1].dsc, rows[1].nsd) == (0.0, 0.0)
    unchanged = [v for v in rows if v not in (1, 5)]
    assert all((rows[v].dsc, rows[v].nsd) == (1.0, 1.0) for v in unchanged)
    # eroded ⊂ liver: DSC = 2|E| / (|L| + |E|), by counting
    n_liver, n_eroded = int(liver.sum()), int(eroded.sum())
    assert rows[5].dsc == pytest.approx(2 * n_eroded / (n_liver + n_eroded), abs=1e-12)
    # 3 mm voxels: the eroded surface lies 3 mm inside, beyond the 2 mm tolerance mostly
    assert 0.0 < rows[5].nsd < 0.5
    whole = deepmind.compute_surface_distances(liver, eroded, (3.0, 3.0, 3.0))
    assert rows[5].nsd == deepmind.compute_surface_dice_at_tolerance(whole, 2.0)
    # wider tolerance: more of the surface counts
    rc, _, se = cli("evaluate", root / "pred", root / "ref", "--labels", 5,
                    "--tolerance-mm", 3.0, "--csv", out)
    assert rc == 0, se
    [row] = read_metrics_csv(out)
    assert row.nsd == deepmind.compute_surface_dice_at_tolerance(whole, 3.0) > rows[5].nsd
    assert "all" in so and "     5      1" in so


def assert_user_error(rc: int, so: str, se: str, *needles: str) -> None:
    assert rc == 2, se
    lines = se.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), se
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert so == ""


def test_grid_mismatch_is_refused_naming_both_grids(tmp_path):
    ref, pred = cube_pair(4)
    r = write_labels(tmp_path / "ref.nii.gz", ref, (1.0, 2.0, 3.0))
    p = write_labels(tmp_path / "pred.nii.gz", pred, (1.0, 2.0, 3.0), origin=(0.0, 0.0, 1.5))
    out = tmp_path / "m.csv"
    rc, so, se = cli("evaluate", p, r, "--csv", out)
    assert_user_error(rc, so, se, str(p), str(r), "origin (0, 0, 1.5)", "origin (0, 0, 0)",
                      "spacing (1, 2, 3)", "size 9x8x8", "nothing is resampled")
    assert not out.exists()
    # another size
    p2 = write_labels(tmp_path / "small.nii.gz", pred[:, :, :-1], (1.0, 2.0, 3.0))
    rc, so, se = cli("evaluate", p2, r)
    assert_user_error(rc, so, se, "size 8x8x8", "size 9x8x8")


def test_folder_problems_are_refused(tmp_path):
    ref, pred = cube_pair(4)
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    write_labels(tmp_path / "r" / "a.nii.gz", ref)
    write_labels(tmp_path / "r" / "b.nii.gz", ref)
    write_labels(tmp_path / "p" / "a.nrrd", pred)
    rc, so, se = cli("evaluate", tmp_path / "p", tmp_path / "r")
    assert_user_error(rc, so, se, "1 case(s)", "no prediction", ": b")
    rc, so, se = cli("evaluate", tmp_path / "p", tmp_path / "r" / "a.nii.gz")
    assert_user_error(rc, so, se, "two label files or two folders")
    rc, so, se = cli("evaluate", tmp_path / "p" / "a.nrrd", tmp_path / "r" / "a.nii.gz",
                     "--tolerance-mm", -1)
    assert_user_error(rc, so, se, "--tolerance-mm")
    rc, so, se = cli("evaluate", tmp_path / "p" / "a.nrrd", tmp_path / "r" / "a.nii.gz",
                     "--csv", tmp_path / "no" / "m.csv")
    assert_user_error(rc, so, se, "does not exist")


def test_non_integer_labels_are_refused(tmp_path):
    ref, _ = cube_pair(4)
    r = write_labels(tmp_path / "ref.nii.gz", ref)
    soft = sitk.GetImageFromArray(ref.astype(np.float32) * 0.5)
    sitk.WriteImage(soft, str(tmp_path / "prob.nii.gz"))
    rc, so, se = cli("evaluate", tmp_path / "prob.nii.gz", r)
    assert_user_error(rc, so, se, "non-integer")
