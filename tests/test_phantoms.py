"""Phantom generator: VinDr layout, label/box consistency, determinism, lesions in the pixels, CLI."""
from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from extract.phantom_png import encode_png_gray8
from extract.phantom_render import render
from extract.phantoms import (
    CSV_NAME, PhantomConfig, assign_test_patients, generate, main, patient_density, plan_breast, plan_view,
)
from cache.vindr import (
    BOX_COLUMNS, DENSITY_NAMES, FINDING_COLUMNS, RESIZED_BOX_COLUMNS, VINDR_COLUMNS, images_from_rows,
    load_annotations, png_path,
)

H, W = 512, 304  # the demo's reduced size
CONFIG = PhantomConfig(n_images=32, seed=7, height=H, width=W, mass_prevalence=0.5, calc_prevalence=0.5,
                       test_fraction=0.25)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("phantoms")
    generate(CONFIG, out, progress=False)
    return out, load_annotations(out / CSV_NAME)


def _pixels(out: Path, row) -> np.ndarray:
    return np.asarray(Image.open(png_path(out / "images_png", row)))


def test_png_writer_round_trip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 23), dtype=np.uint8)
    img[5:20, 3:9] = 200  # a run, exercising the Up filter
    from io import BytesIO
    decoded = Image.open(BytesIO(encode_png_gray8(img)))
    assert decoded.mode == "L" and decoded.size == (23, 37)
    np.testing.assert_array_equal(np.asarray(decoded), img)


def test_csv_schema_and_layout(dataset):
    out, df = dataset
    header = (out / CSV_NAME).read_text().splitlines()[0].split(",")
    assert tuple(header) == VINDR_COLUMNS
    images, row_to_image = images_from_rows(df)
    assert len(images) == 32 and images["patient_id"].nunique() == 8
    for _, group in images.groupby("patient_id"):
        assert sorted(zip(group["laterality"], group["view"])) == [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
        assert group["split"].nunique() == 1  # split by patient
    assert (images["split"] == "test").sum() == 8  # 2 of 8 patients
    for _, row in images.iterrows():
        pixels = _pixels(out, row)
        assert pixels.shape == (H, W) and pixels.dtype == np.uint8
    assert (df["height"] == 3518).all() and (df["width"] == 2800).all()
    assert set(df["fold"]) <= set(range(5))
    # Density text and class agree, and a patient has one density.
    assert (df["breast_density"] == df["density"].map(dict(enumerate(DENSITY_NAMES)))).all()
    assert (df.groupby("patient_id")["density"].nunique() == 1).all()


def test_labels_boxes_and_birads_are_consistent(dataset):
    _, df = dataset
    findings = df[list(FINDING_COLUMNS)].to_numpy()
    assert (findings.sum(axis=1) == 1).all()  # one finding (or No_Finding) per row
    normal = df["No_Finding"] == 1
    assert df.loc[normal, list(BOX_COLUMNS + RESIZED_BOX_COLUMNS)].isna().all().all()
    assert (df.loc[normal, "finding_categories"].map(tuple) == ("No Finding",)).all()
    assert (df.loc[normal, "finding_birads"] == "").all()
    pos = df[~normal]
    assert set(pos.columns[pos.any()].intersection(FINDING_COLUMNS)) == {"Mass", "Suspicious_Calcification"}
    names = pos["finding_categories"].map(lambda c: c[0].replace(" ", "_"))
    assert (pos.apply(lambda r: r[names[r.name]], axis=1) == 1).all()
    box = pos[list(RESIZED_BOX_COLUMNS)].to_numpy()
    assert (box[:, 0] >= 0).all() and (box[:, 1] >= 0).all() and (box[:, 2] <= W).all() and (box[:, 3] <= H).all()
    assert (box[:, 2] - box[:, 0] >= 2).all() and (box[:, 3] - box[:, 1] >= 2).all()
    # Original-frame boxes = PNG boxes scaled by width/W and height/H (2-decimal rounding).
    orig = pos[list(BOX_COLUMNS)].to_numpy()
    np.testing.assert_allclose(orig, box * np.array([2800 / W, 3518 / H, 2800 / W, 3518 / H]), atol=0.01)
    # BI-RADS: a finding's category never exceeds its breast's; normal breasts are 1 or 2.
    finding_br = pos["finding_birads"].str.removeprefix("BI-RADS ").astype(int)
    assert (finding_br <= pos["breast_birads"].str.removeprefix("BI-RADS ").astype(int)).all()
    assert set(finding_br) <= {3, 4, 5}
    assert set(df.loc[normal, "breast_birads"]) <= {"BI-RADS 1", "BI-RADS 2"}


def test_row_multiplicity_and_breast_level_lesions(dataset):
    _, df = dataset
    images, row_to_image = images_from_rows(df)
    counts = np.bincount(row_to_image, minlength=len(images))
    expected = np.maximum(images["Mass"] + images["Suspicious_Calcification"], 1).to_numpy()
    np.testing.assert_array_equal(counts, expected)
    assert ((images["Mass"] == 1) & (images["Suspicious_Calcification"] == 1)).any()  # some have two rows
    # A lesion belongs to a breast: both views of a breast carry the same labels.
    per_breast = images.groupby(["patient_id", "laterality"])[["Mass", "Suspicious_Calcification"]].nunique()
    assert (per_breast == 1).all().all()
    assert 0 < images["Mass"].sum() < 32 and 0 < images["Suspicious_Calcification"].sum() < 32


def test_laterality_is_mirrored(dataset):
    out, df = dataset
    images, _ = images_from_rows(df)
    for _, row in images.iterrows():
        col_mass = (_pixels(out, row) > 0).sum(axis=0)
        left, right = col_mass[: W // 2].sum(), col_mass[W // 2:].sum()
        assert (left > right) if row["laterality"] == "L" else (right > left)
        # The chest wall touches its image edge; the other edge is background.
        chest, far = (0, W - 1) if row["laterality"] == "L" else (W - 1, 0)
        assert col_mass[chest] > H // 3 and col_mass[far] == 0


def _spec_for_row(config: PhantomConfig, patient: int, side: int, view_index: int):
    breast = plan_breast(config, patient, side)
    return plan_view(config, patient, side, view_index, patient_density(config, patient), breast)


def test_cluster_scale_spreads_the_same_cluster_wider_with_more_specks():
    patient, side = next((p, side) for p in range(CONFIG.n_patients) for side in (0, 1)
                         if plan_breast(CONFIG, p, side).cluster is not None)
    plain = plan_breast(CONFIG, patient, side).cluster
    wide = plan_breast(dataclasses.replace(CONFIG, cluster_scale=2.0), patient, side).cluster
    n = len(plain.offsets_ref)
    assert len(wide.offsets_ref) == 2 * n
    np.testing.assert_allclose(np.asarray(wide.offsets_ref[:n]), 2.0 * np.asarray(plain.offsets_ref), rtol=1e-12)


def _positives(column: str):
    """(patient, side, view_index) of every image of CONFIG with a finding in ``column``."""
    found = []
    for patient in range(CONFIG.n_patients):
        for side in (0, 1):
            breast = plan_breast(CONFIG, patient, side)
            if (breast.mass if column == "Mass" else breast.cluster) is not None:
                found += [(patient, side, 0), (patient, side, 1)]
    assert found
    return found


def _box_mask(box, shape, margin=0.0):
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    return (xx >= x0 - margin) & (xx <= x1 + margin) & (yy >= y0 - margin) & (yy <= y1 + margin)


@pytest.mark.parametrize("column", ["Mass", "Suspicious_Calcification"])
def test_lesion_pixels_lie_inside_their_box(column):
    """Counterfactual: drawing the same image without the lesion changes pixels only in its box."""
    field = "masses" if column == "Mass" else "clusters"
    kinds = set()
    for patient, side, view_index in _positives(column):
        spec = _spec_for_row(CONFIG, patient, side, view_index)
        kinds.add(plan_breast(CONFIG, patient, side).mass.kind if column == "Mass" else "cluster")
        with_lesion = render(spec, H, W)
        without = render(dataclasses.replace(spec, **{field: ()}), H, W)
        diff = with_lesion.pixels.astype(int) - without.pixels.astype(int)
        boxes = with_lesion.mass_boxes if column == "Mass" else with_lesion.calc_boxes
        assert len(boxes) == 1
        inside = _box_mask(boxes[0], (H, W), margin=1.0)
        assert np.abs(diff[~inside]).max() == 0
        assert diff[inside].max() >= (30 if column == "Mass" else 60)
    if column == "Mass":
        assert len(kinds) >= 3  # several shapes covered


def test_mass_box_brighter_than_surrounding_ring(dataset):
    out, df = dataset
    masses = df[df["Mass"] == 1]
    assert len(masses) >= 4
    for _, row in masses.iterrows():
        pixels = _pixels(out, row).astype(float)
        x0, y0, x1, y1 = row[list(RESIZED_BOX_COLUMNS)]
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        core = _box_mask((cx - hw / 2, cy - hh / 2, cx + hw / 2, cy + hh / 2), (H, W))
        ring = _box_mask((x0, y0, x1, y1), (H, W), margin=max(hw, hh)) & ~_box_mask((x0, y0, x1, y1), (H, W))
        ring &= pixels > 0
        assert pixels[core].mean() > pixels[ring].mean() + 10


def test_calcification_boxes_hold_isolated_bright_specks(tmp_path):
    """Specks are small local maxima (white top-hat >= 60 grey levels) that the rest of the breast lacks
    (two ordinary vessels overlapping reach about 50)."""
    config = dataclasses.replace(CONFIG, n_images=16, calc_prevalence=1.0, mass_prevalence=0.0,
                                 coarse_calc_rate=0.0, crossing_rate=0.0)
    generate(config, tmp_path, progress=False)
    df = load_annotations(tmp_path / CSV_NAME)
    assert (df["Suspicious_Calcification"] == 1).all()
    for _, row in df.iterrows():
        pixels = _pixels(tmp_path, row).astype(np.int16)
        tophat = pixels - ndimage.grey_opening(pixels, size=(5, 5))
        box = _box_mask(tuple(row[list(RESIZED_BOX_COLUMNS)]), (H, W))
        breast = ndimage.binary_erosion(pixels > 0, iterations=4)
        peaks = (tophat >= 60) & (tophat == ndimage.maximum_filter(tophat, size=3))
        assert peaks[box].sum() >= 3, row["image_id"]
        assert peaks[breast & ~box].sum() == 0, row["image_id"]


def test_look_alikes_are_bright_but_not_clustered():
    """Coarse calcifications and vessel crossings add bright spots outside any box."""
    config = dataclasses.replace(CONFIG, coarse_calc_rate=1.0, crossing_rate=1.0, mass_prevalence=0.0,
                                 calc_prevalence=0.0)
    spec = _spec_for_row(config, 0, 0, 0)
    assert 1 <= len(spec.coarse_calcs) <= 3 and len(spec.clusters) == 0
    full = render(spec, H, W).pixels.astype(int)
    bare = render(dataclasses.replace(spec, coarse_calcs=()), H, W).pixels.astype(int)
    assert (full - bare).max() >= 60  # as bright as suspicious specks
    crossings = [v for v in spec.vessels if v.amp >= 0.1]
    assert len(crossings) >= 2
    no_cross = render(dataclasses.replace(spec, coarse_calcs=(), vessels=tuple(v for v in spec.vessels if v.amp < 0.1)), H, W)
    assert (bare - no_cross.pixels.astype(int)).max() >= 40


def test_split_assignment():
    cfg = PhantomConfig(n_images=40, test_fraction=0.2, seed=3)
    is_test = assign_test_patients(cfg)
    assert is_test.sum() == 2 and is_test.shape == (10,)
    assert assign_test_patients(dataclasses.replace(cfg, test_fraction=0.01)).sum() == 1  # at least one
    assert assign_test_patients(dataclasses.replace(cfg, test_fraction=0.0)).sum() == 0


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_deterministic_and_independent_of_workers(tmp_path):
    config = PhantomConfig(n_images=8, seed=11, height=160, width=96, mass_prevalence=0.5, calc_prevalence=0.5)
    generate(config, tmp_path / "a", progress=False)
    generate(config, tmp_path / "b", progress=False, workers=2)
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert len(a) == 8 + 2 and a == b
    generate(dataclasses.replace(config, seed=12), tmp_path / "c", progress=False)
    assert _digests(tmp_path / "c")[CSV_NAME] != a[CSV_NAME]


def test_smaller_run_is_a_prefix_of_a_larger_one(tmp_path):
    small = PhantomConfig(n_images=4, seed=5, height=96, width=64, test_fraction=0.0)
    generate(small, tmp_path / "s", progress=False)
    generate(dataclasses.replace(small, n_images=12), tmp_path / "l", progress=False)
    s, l = _digests(tmp_path / "s"), _digests(tmp_path / "l")
    pngs = {k: v for k, v in s.items() if k.endswith(".png")}
    assert len(pngs) == 4 and all(l[k] == v for k, v in pngs.items())
    small_csv = (tmp_path / "s" / CSV_NAME).read_text().splitlines()
    assert (tmp_path / "l" / CSV_NAME).read_text().splitlines()[: len(small_csv)] == small_csv


def test_cli_help():
    proc = subprocess.run([sys.executable, "-m", "extract.phantoms", "--help"], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=60)
    assert proc.returncode == 0
    for flag in ("--out", "--n-images", "--seed", "--height", "--width", "--mass-prevalence", "--calc-prevalence",
                 "--test-fraction"):
        assert flag in proc.stdout


def test_cli_tiny_run_rounds_up(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--n-images", "5", "--height", "64", "--width", "48", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "wrote 8 images (5 requested, rounded up to a multiple of 4)" in text
    df = load_annotations(tmp_path / CSV_NAME)
    assert df["image_id"].nunique() == 8
    assert len(list((tmp_path / "images_png").rglob("*.png"))) == 8
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-images", "0"], "error: --n-images must be >= 1, got 0"),
        (["--mass-prevalence", "1.5"], "error: --mass-prevalence must be in [0, 1], got 1.5"),
        (["--height", "8"], "error: image size must be at least 32 x 32, got 8 x 912"),
    ],
)
def test_cli_bad_input_gives_one_error_line(tmp_path, capsys, argv, message):
    assert main(["--out", str(tmp_path / "o"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.strip() == message
    assert not (tmp_path / "o" / CSV_NAME).exists()


def test_cli_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["--out", str(target), "--n-images", "4", "--height", "64", "--width", "48", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out exists and is not a folder: {target}"
