"""End-to-end tests of ``python -m extract.preprocess_dicom`` on DICOMs written here with pydicom."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.dicom_data import (
    BREAST_HEADER,
    FINDING_HEADER,
    area_resize,
    make_phantom,
    stored_values,
    write_csv,
    write_dicom,
    write_jpeg_lossless_stub,
)
from extract.preprocess_dicom import main
from cache.vindr import FINDING_COLUMNS, VINDR_COLUMNS, load_annotations

OUT_H, OUT_W = 160, 96
BORDER = 5
H, W = 400, 300

# image id -> (study, side, photometric, bits, split, density)
IMAGES = {
    "imgA": ("S1", "left", "MONOCHROME1", 12, "training", "DENSITY C"),
    "imgB": ("S1", "right", "MONOCHROME2", 16, "training", "DENSITY B"),
    "imgC": ("S2", "left", "MONOCHROME2", 12, "test", "DENSITY A"),
    "imgD": ("S2", "right", "MONOCHROME1", 16, "test", "DENSITY D"),  # breast-level file only
}
BROKEN = {"imgE": "garbage", "imgF": "jpeg-lossless", "imgG": "missing", "imgH": "truncated"}


def _meta(image_id: str, study: str, split: str, density: str, laterality: str) -> dict:
    return {
        "study_id": study, "series_id": f"ser-{study}", "image_id": image_id,
        "laterality": laterality, "view_position": "CC", "height": H, "width": W,
        "breast_birads": "BI-RADS 2", "breast_density": density, "split": split,
    }


def _box(b: tuple[int, int, int, int]) -> dict:
    return dict(zip(("xmin", "ymin", "xmax", "ymax"), b))


def build_dataset(root: Path) -> dict:
    """DICOM folder + VinDr source CSVs; returns the phantoms and file paths."""
    dicoms = root / "images"
    phantoms = {}
    findings, breast = [], []
    for image_id, (study, side, photometric, bits, split, density) in IMAGES.items():
        ph = make_phantom(H, W, side=side)
        phantoms[image_id] = ph
        values = stored_values(ph.brightness_HW, bits_stored=bits, monochrome1=photometric == "MONOCHROME1")
        write_dicom(dicoms / study / f"{image_id}.dicom", values, photometric=photometric, bits_stored=bits)
        meta = _meta(image_id, study, split, density, "L" if side == "left" else "R")
        breast.append(meta)
        if image_id == "imgA":
            findings.append({**meta, "finding_categories": "['Mass', 'Suspicious Calcification']",
                             "finding_birads": "BI-RADS 4", **_box(ph.blob)})
        elif image_id == "imgB":
            findings.append({**meta, "finding_categories": "['Mass']", "finding_birads": "BI-RADS 3",
                             **_box(ph.blob)})
            # runs past the image's right edge: must be clipped to the PNG
            findings.append({**meta, "finding_categories": "['Architectural Distortion']",
                             "finding_birads": "BI-RADS 4", **_box((200, 100, W + 20, 140))})
        elif image_id == "imgC":
            findings.append({**meta, "finding_categories": "['No Finding']"})
    for image_id, kind in BROKEN.items():
        path = dicoms / "S3" / f"{image_id}.dicom"
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "garbage":
            path.write_bytes(b"definitely not a dicom file" * 20)
        elif kind == "jpeg-lossless":
            write_jpeg_lossless_stub(path)
        elif kind == "truncated":
            ok = stored_values(make_phantom(H, W).brightness_HW, bits_stored=12, monochrome1=False)
            write_dicom(path, ok, photometric="MONOCHROME2", bits_stored=12)
            path.write_bytes(path.read_bytes()[:-5000])
        meta = _meta(image_id, "S3", "training", "DENSITY B", "L")
        breast.append(meta)
        findings.append({**meta, "finding_categories": "['Mass']", "finding_birads": "BI-RADS 4", **_box((10, 10, 20, 20))})
    annotations = write_csv(root / "finding_annotations.csv", FINDING_HEADER, findings)
    breast_level = write_csv(root / "breast-level_annotations.csv", BREAST_HEADER, breast)
    return {"dicoms": dicoms, "annotations": annotations, "breast_level": breast_level, "phantoms": phantoms}


def cli(data: dict, out: Path, *extra: str) -> int:
    return main([
        "--dicoms", str(data["dicoms"]), "--annotations", str(data["annotations"]),
        "--breast-level", str(data["breast_level"]), "--out", str(out),
        "--size", f"{OUT_H}x{OUT_W}", "--quiet", *extra,
    ])


def expected_crop(mask_HW: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of the breast inside the border-cropped frame, original coords."""
    inner = mask_HW[BORDER:-BORDER, BORDER:-BORDER]
    rows, cols = np.flatnonzero(inner.any(axis=1)), np.flatnonzero(inner.any(axis=0))
    return cols[0] + BORDER, rows[0] + BORDER, cols[-1] + 1 + BORDER, rows[-1] + 1 + BORDER


def expected_png(stored_HW: np.ndarray, monochrome1: bool, crop: tuple[int, int, int, int]) -> np.ndarray:
    """Independent re-computation of the conversion (float area resize, no PIL)."""
    x = stored_HW[BORDER:-BORDER, BORDER:-BORDER].astype(np.float64)
    if monochrome1:
        x = x.max() - x
    u8 = np.floor((x - x.min()) / (x.max() - x.min()) * 255.0)
    x0, y0, x1, y1 = crop
    return area_resize(u8[y0 - BORDER : y1 - BORDER, x0 - BORDER : x1 - BORDER], OUT_H, OUT_W)


def read_png(out: Path, study: str, image_id: str) -> np.ndarray:
    return np.asarray(Image.open(out / "images_png" / study / f"{image_id}.png"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("vindr")
    data = build_dataset(root)
    out = root / "out"
    assert cli(data, out, "--margin", "0") == 0
    return data, out


def test_png_size_polarity_and_pixels_match_an_independent_computation(converted):
    data, out = converted
    crops = pd.read_csv(out / "crop_boxes.csv", dtype={"image_id": str}).set_index("image_id")
    for image_id, (study, side, photometric, bits, _, _) in IMAGES.items():
        ph = data["phantoms"][image_id]
        png = read_png(out, study, image_id)
        assert png.shape == (OUT_H, OUT_W) and png.dtype == np.uint8
        crop = expected_crop(ph.breast_mask_HW)
        row = crops.loc[image_id]
        assert (row.crop_x0, row.crop_y0, row.crop_x1, row.crop_y1) == crop  # marker left out
        assert (row.orig_height, row.orig_width, row.border) == (H, W, BORDER)
        assert row.scale_x == pytest.approx(OUT_W / (crop[2] - crop[0]))
        assert row.scale_y == pytest.approx(OUT_H / (crop[3] - crop[1]))
        monochrome1 = photometric == "MONOCHROME1"
        stored = stored_values(ph.brightness_HW, bits_stored=bits, monochrome1=monochrome1)
        reference = expected_png(stored, monochrome1, crop)
        assert np.abs(png.astype(np.float64) - reference).max() <= 1.0
        # polarity: the finding is white, the background corner beyond the ellipse is black
        bx0, by0, bx1, by1 = ph.blob
        cy, cx = int((((by0 + by1) / 2) - crop[1]) * row.scale_y), int((((bx0 + bx1) / 2) - crop[0]) * row.scale_x)
        assert png[cy, cx] == 255
        far_col = OUT_W - 1 if side == "left" else 0
        assert png[0, far_col] < 10 and png[-1, far_col] < 10
        # the breast fills the frame: bright pixels touch all four sides
        bright = png > 60
        assert bright[0].any() and bright[-1].any() and bright[:, 0].any() and bright[:, -1].any()
        assert bright.mean() > 0.7  # a half-ellipse covers pi/4 of its box
    # MONOCHROME1 and MONOCHROME2 files of the same 12-bit phantom give the same PNG
    np.testing.assert_array_equal(read_png(out, "S1", "imgA"), read_png(out, "S2", "imgC"))


def test_resized_boxes_land_on_the_finding(converted):
    data, out = converted
    rows = load_annotations(out / "vindr_detection_v1_folds.csv")
    crops = pd.read_csv(out / "crop_boxes.csv", dtype={"image_id": str}).set_index("image_id")
    for image_id in ("imgA", "imgB"):
        ph = data["phantoms"][image_id]
        x0, y0, x1, y1 = expected_crop(ph.breast_mask_HW)
        sx, sy = OUT_W / (x1 - x0), OUT_H / (y1 - y0)
        want = np.array([(ph.blob[0] - x0) * sx, (ph.blob[1] - y0) * sy, (ph.blob[2] - x0) * sx, (ph.blob[3] - y0) * sy])
        row = rows[(rows.image_id == f"{image_id}.png") & (rows.Mass == 1)].iloc[0]
        got = row[["resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax"]].to_numpy(dtype=float)
        np.testing.assert_allclose(got, want, atol=1e-9)
        png = read_png(out, crops.loc[image_id, "study_id"], image_id)
        blob = png > 200  # the finding is 255, tissue at most ~150; edge pixels are mixed
        ys, xs = np.flatnonzero(blob.any(axis=1)), np.flatnonzero(blob.any(axis=0))
        np.testing.assert_allclose([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], got, atol=1.0)
    # the box running past the right edge is clipped to the PNG frame
    clipped = rows[rows.Architectural_Distortion == 1].iloc[0]
    x0, y0, x1, y1 = expected_crop(data["phantoms"]["imgB"].breast_mask_HW)
    assert clipped.resized_xmax == OUT_W
    assert clipped.resized_xmin == pytest.approx((200 - x0) * OUT_W / (x1 - x0))
    assert clipped.xmax == W + 20  # the original box is kept as annotated


def test_csv_has_the_33_columns_and_the_mapped_labels(converted):
    _, out = converted
    raw = pd.read_csv(out / "vindr_detection_v1_folds.csv")
    assert tuple(raw.columns) == VINDR_COLUMNS
    rows = load_annotations(out / "vindr_detection_v1_folds.csv")
    assert rows.image_id.tolist() == ["imgA.png", "imgB.png", "imgB.png", "imgC.png", "imgD.png"]
    assert rows.patient_id.tolist() == ["S1", "S1", "S1", "S2", "S2"]
    assert rows.view.tolist() == ["CC"] * 5
    assert rows.split.tolist() == ["training", "training", "training", "test", "test"]
    assert rows.density.tolist() == [2, 1, 1, 0, 3]
    hot = rows[list(FINDING_COLUMNS)]
    expected_hot = {
        0: {"Mass", "Suspicious_Calcification"}, 1: {"Mass"}, 2: {"Architectural_Distortion"},
        3: {"No_Finding"}, 4: {"No_Finding"},
    }
    for i, names in expected_hot.items():
        assert {c for c in FINDING_COLUMNS if hot.loc[i, c] == 1} == names
    assert rows.finding_categories[0] == ["Mass", "Suspicious Calcification"]
    assert rows.finding_categories[4] == ["No Finding"]  # added from the breast-level file
    no_box = rows[rows.No_Finding == 1]
    assert no_box[["xmin", "resized_xmin", "resized_ymax"]].isna().all().all()
    assert rows.groupby("patient_id").fold.nunique().eq(1).all()
    assert rows.fold.between(0, 4).all()


def test_broken_and_missing_dicoms_are_reported_and_skipped(converted):
    _, out = converted
    report = json.loads((out / "preprocess_report.json").read_text())
    reasons = {f["image_id"]: f["reason"] for f in report["failed"]}
    assert set(reasons) == {"imgE", "imgF", "imgH"}
    assert reasons["imgE"].startswith("not a DICOM file")
    assert "no pixel-data handler installed" in reasons["imgF"]
    assert "pylibjpeg" in reasons["imgF"] and "gdcm" in reasons["imgF"]
    assert reasons["imgH"].startswith("cannot decode pixel data")
    assert [m["image_id"] for m in report["missing"]] == ["imgG"]
    assert report["converted"] == 4 and report["rows_written"] == 5 and report["rows_dropped"] == 4
    assert report["no_breast_found"] == [] and report["size_mismatch"] == []
    assert not (out / "images_png" / "S3").exists() or not any((out / "images_png" / "S3").iterdir())
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_summary_goes_to_stderr(tmp_path, capsys):
    data = build_dataset(tmp_path)
    shutil.rmtree(data["dicoms"] / "S3")
    assert cli(data, tmp_path / "out") == 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("4 converted, 0 already done, 0 unreadable or unsupported, 4 missing DICOMs")


def _subset(data: dict, root: Path, keep: set[str]) -> dict:
    """The same DICOMs with annotation files restricted to ``keep``."""
    sub = dict(data)
    for key in ("annotations", "breast_level"):
        df = pd.read_csv(data[key], dtype=str, keep_default_na=False)
        sub[key] = root / Path(data[key]).name
        df[df.image_id.isin(keep)].to_csv(sub[key], index=False)
    return sub


def test_resume_parallel_overwrite_and_settings_check(converted, tmp_path, capsys):
    data, first = converted
    sub = _subset(data, tmp_path, {"imgA", "imgC"})
    out = tmp_path / "out"
    png_a, png_c = out / "images_png/S1/imgA.png", out / "images_png/S2/imgC.png"

    assert cli(sub, out, "--margin", "0", "--workers", "2") == 0
    # two worker processes give the same pixels as the serial run
    np.testing.assert_array_equal(np.asarray(Image.open(png_a)), read_png(first, "S1", "imgA"))
    csv_first = (out / "vindr_detection_v1_folds.csv").read_text()

    Image.fromarray(np.zeros((OUT_H, OUT_W), np.uint8)).save(png_a)  # sentinel: must survive a resume
    png_c.unlink()
    assert cli(sub, out, "--margin", "0") == 0
    report = json.loads((out / "preprocess_report.json").read_text())
    assert (report["converted"], report["skipped_existing"]) == (1, 1)
    assert np.asarray(Image.open(png_a)).max() == 0
    np.testing.assert_array_equal(np.asarray(Image.open(png_c)), read_png(first, "S2", "imgC"))
    assert (out / "vindr_detection_v1_folds.csv").read_text() == csv_first  # crop records recovered

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli(sub, out, "--margin", "0", "--size", "80x48")
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {out} holds images made with out_height={OUT_H}, not 80; pass --overwrite or choose another --out"
    )

    assert cli(sub, out, "--margin", "0", "--overwrite") == 0
    np.testing.assert_array_equal(np.asarray(Image.open(png_a)), read_png(first, "S1", "imgA"))


def test_voi_lut_option_applies_the_window(tmp_path):
    ph = make_phantom(H, W)
    top = 4095
    center, width = 0.225 * top, 0.45 * top  # saturates everything brighter than 0.45
    stored = stored_values(ph.brightness_HW, bits_stored=12, monochrome1=False)
    data = {"dicoms": tmp_path / "images", "phantoms": {"imgW": ph}}
    write_dicom(data["dicoms"] / "S9" / "imgW.dicom", stored, photometric="MONOCHROME2", bits_stored=12,
                window=(center, width))
    meta = _meta("imgW", "S9", "test", "DENSITY B", "L")
    data["annotations"] = write_csv(tmp_path / "f.csv", FINDING_HEADER, [{**meta, "finding_categories": "['No Finding']"}])
    data["breast_level"] = write_csv(tmp_path / "b.csv", BREAST_HEADER, [meta])

    assert cli(data, tmp_path / "plain", "--margin", "0") == 0
    assert cli(data, tmp_path / "voi", "--margin", "0", "--voi-lut") == 0
    # DICOM PS3.3 C.11.2.1.2.1 linear window, written out here independently of pydicom
    windowed = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    crop = expected_crop(ph.breast_mask_HW)
    voi = read_png(tmp_path / "voi", "S9", "imgW").astype(np.float64)
    assert np.abs(voi - expected_png(windowed, False, crop)).max() <= 1.0
    plain = read_png(tmp_path / "plain", "S9", "imgW").astype(np.float64)
    assert np.abs(plain - expected_png(stored, False, crop)).max() <= 1.0
    centre = (slice(OUT_H // 2 - 10, OUT_H // 2 + 10), slice(5, 30))
    assert np.median(voi[centre]) == 255 and 110 < np.median(plain[centre]) < 145


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "1520by912"], "error: --size must be HEIGHTxWIDTH with positive integers, e.g. 1520x912; got '1520by912'"),
        (["--workers", "0"], "error: --workers must be at least 1, got 0"),
    ],
)
def test_bad_options_give_one_error_line(converted, tmp_path, capsys, args, message):
    data, _ = converted
    with pytest.raises(SystemExit) as exc:
        cli(data, tmp_path / "out", *args)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == message


def test_bad_annotation_file_gives_one_error_line(converted, tmp_path, capsys):
    data, _ = converted
    df = pd.read_csv(data["annotations"], dtype=str, keep_default_na=False)
    df.loc[1, "breast_density"] = "DENSITY E"
    bad = dict(data, annotations=tmp_path / "finding_annotations.csv")
    df.to_csv(bad["annotations"], index=False)
    with pytest.raises(SystemExit) as exc:
        cli(bad, tmp_path / "out")
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {bad['annotations']}: line 3: breast_density must be DENSITY A-D, got 'DENSITY E'"
    )
    no_column = dict(data, breast_level=tmp_path / "breast.csv")
    pd.read_csv(data["breast_level"], dtype=str).drop(columns=["split"]).to_csv(no_column["breast_level"], index=False)
    with pytest.raises(SystemExit):
        cli(no_column, tmp_path / "out")
    assert capsys.readouterr().err.strip() == f"error: {no_column['breast_level']}: missing required column(s): split"
    assert not (tmp_path / "out").exists()  # nothing written before the input is checked


def test_an_interrupted_run_keeps_finished_images_and_resumes(converted, tmp_path, monkeypatch):
    from extract import preprocess_dicom
    from extract.dicom_geometry import CropConfig

    data, first = converted
    sub = _subset(data, tmp_path, {"imgA", "imgB", "imgC"})
    config = preprocess_dicom.PreprocessConfig(
        dicoms=sub["dicoms"], annotations=sub["annotations"], breast_level=sub["breast_level"],
        out=tmp_path / "out", crop=CropConfig(out_height=OUT_H, out_width=OUT_W, margin=0),
    )
    real = preprocess_dicom.convert_one
    calls = []

    def interrupt_second(job, crop, voi_lut):
        calls.append(job.image_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job, crop, voi_lut)

    monkeypatch.setattr(preprocess_dicom, "convert_one", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dicom.run(config, progress=False)
    saved = pd.read_csv(tmp_path / "out" / "crop_boxes.csv", dtype={"image_id": str})
    assert saved.image_id.tolist() == ["imgA"]
    assert not (tmp_path / "out" / "vindr_detection_v1_folds.csv").exists()
    assert not [p for p in (tmp_path / "out").rglob(".*")]

    monkeypatch.setattr(preprocess_dicom, "convert_one", real)
    summary = preprocess_dicom.run(config, progress=False)
    assert (summary.converted, summary.skipped_existing, summary.rows_written) == (2, 1, 4)
    resumed = pd.read_csv(tmp_path / "out" / "vindr_detection_v1_folds.csv")
    full = pd.read_csv(first / "vindr_detection_v1_folds.csv")
    pd.testing.assert_frame_equal(resumed, full[full.image_id.isin(["imgA.png", "imgB.png", "imgC.png"])].reset_index(drop=True))
