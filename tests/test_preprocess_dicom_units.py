"""Unit tests of the DICOM preprocessing pieces: pixels, breast crop, resize, boxes, annotations."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLossless
from skimage.filters import threshold_otsu

from helpers.dicom_data import (
    BREAST_HEADER,
    FINDING_HEADER,
    area_resize as reference_area_resize,
    make_phantom,
    stored_values,
    write_csv,
    write_dicom,
    write_j2k_dicom,
    write_jpeg_lossless_stub,
)
from extract import preprocess_dicom
from extract.dicom_annotations import (
    BREAST_SOURCE_COLUMNS,
    FINDING_SOURCE_COLUMNS,
    AnnotationError,
    fold_of,
    merge_sources,
    read_source_csv,
    vindr_table,
    with_resized_boxes,
)
from extract.dicom_geometry import CropConfig, area_resize, find_breast, map_boxes, otsu_threshold, to_uint8
from extract.dicom_io import DicomReadError, read_dicom_pixels


# ---------------------------------------------------------------- pixels


def test_to_uint8_inverts_monochrome1_and_floors():
    x = np.array([[0, 4095], [1024, 2048]], dtype=np.uint16)
    np.testing.assert_array_equal(to_uint8(x, monochrome1=False), [[0, 255], [63, 127]])  # 63.76, 127.53
    np.testing.assert_array_equal(to_uint8(x, monochrome1=True), [[255, 0], [191, 127]])  # 191.24, 127.47
    np.testing.assert_array_equal(to_uint8(np.full((3, 4), 7), monochrome1=False), np.zeros((3, 4)))
    # float input (VOI LUT output) takes the float path and gives the same numbers
    np.testing.assert_array_equal(to_uint8(x.astype(np.float64), monochrome1=True), [[255, 0], [191, 127]])
    signed = np.array([[-1000, 3000, 0]], dtype=np.int16)
    np.testing.assert_array_equal(to_uint8(signed, monochrome1=False), [[0, 255, 63]])  # 63.75
    wide = np.array([[0, 2**30, 2**29, 5]], dtype=np.int64)  # too wide for a lookup table
    np.testing.assert_array_equal(to_uint8(wide, monochrome1=True), [[255, 0, 127, 254]])


def test_area_resize_equals_the_area_average():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(173, 131), dtype=np.uint8)
    for out_hw in [(40, 30), (97, 64), (173, 131), (200, 150)]:
        want = reference_area_resize(img, *out_hw)
        got = area_resize(img, *out_hw)
        assert got.shape == out_hw and got.dtype == np.uint8
        np.testing.assert_array_equal(got, np.clip(np.rint(want), 0, 255))
    # an integer factor is a plain block mean
    blocks = rng.integers(0, 256, size=(40, 30)).astype(np.uint8)
    block_mean = blocks.reshape(10, 4, 10, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(area_resize(blocks, 10, 10), np.rint(block_mean))


def test_otsu_matches_skimage_and_takes_the_middle_of_a_flat_optimum():
    rng = np.random.default_rng(2)
    img = np.concatenate([rng.normal(30, 10, 4000), rng.normal(150, 30, 6000)]).clip(0, 255).astype(np.uint8)
    assert otsu_threshold(img) == threshold_otsu(img)
    gapped = np.array([0, 0, 1, 2, 100, 120, 255], dtype=np.uint8)
    assert threshold_otsu(gapped) == 2  # just above the background
    assert otsu_threshold(gapped) == (2 + 99) / 2


# ---------------------------------------------------------------- breast crop


def test_find_breast_on_a_reduced_copy_contains_the_breast_within_the_stated_pad():
    height, width = 2600, 1300  # reduced by 3 to 867 x 434
    img = np.zeros((height, width), dtype=np.uint8)
    x0, y0, x1, y1 = 0, 301, 703, 2102
    img[y0:y1, x0:x1] = 120
    img[50:60, 1200:1250] = 250  # a label, not connected
    config = CropConfig(margin=4)
    region = find_breast(img, config)
    factor = 3
    assert region.found and region.threshold == 40.0
    box = region.box
    assert box.x0 == 0  # clipped at the image edge
    slack = config.margin + 2 * (factor - 1)
    assert y0 - slack <= box.y0 <= y0 - config.margin
    assert x1 + config.margin <= box.x1 <= x1 + slack
    assert y1 + config.margin <= box.y1 <= y1 + slack


def test_find_breast_reports_no_breast_and_keeps_the_whole_image():
    config = CropConfig()
    flat = find_breast(np.full((50, 40), 9, dtype=np.uint8), config)
    assert not flat.found and tuple(flat.box) == (0, 0, 40, 50)
    speck = np.zeros((100, 100), dtype=np.uint8)
    speck[10:19, 10:11] = 200  # 9 px < 1 % of the image
    region = find_breast(speck, config)
    assert not region.found and tuple(region.box) == (0, 0, 100, 100)


def test_default_margin_pads_the_breast_box():
    ph = make_phantom(200, 150, semi_x=80, semi_y=70, blob=(20, 90, 30, 100))
    img = to_uint8(ph.brightness_HW, monochrome1=False)
    rows = np.flatnonzero(ph.breast_mask_HW.any(axis=1))
    cols = np.flatnonzero(ph.breast_mask_HW.any(axis=0))
    region = find_breast(img, CropConfig(margin=4))
    assert tuple(region.box) == (0, rows[0] - 4, cols[-1] + 1 + 4, rows[-1] + 1 + 4)


# ---------------------------------------------------------------- boxes


def test_map_boxes_shifts_scales_clips_and_keeps_nan():
    boxes = np.array([[10.0, 20.0, 30.0, 40.0], [-3.0, 5.0, 500.0, 15.0], [np.nan] * 4])
    got = map_boxes(boxes, origin_N2=(5, 10), scale_N2=(2.0, 0.5), size_N2=(100, 60))
    np.testing.assert_array_equal(got[0], [10.0, 5.0, 50.0, 15.0])
    np.testing.assert_array_equal(got[1], [0.0, 0.0, 100.0, 2.5])
    assert np.isnan(got[2]).all()
    per_box = map_boxes(boxes[:2], origin_N2=[(5, 10), (0, 0)], scale_N2=[(2.0, 0.5), (1.0, 1.0)], size_N2=(100, 60))
    np.testing.assert_array_equal(per_box[1], [0.0, 5.0, 100.0, 15.0])


# ---------------------------------------------------------------- DICOM reading


def test_read_dicom_pixels_returns_stored_values_and_polarity(tmp_path):
    values = (np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 7) % 4096
    write_dicom(tmp_path / "a.dicom", values, photometric="MONOCHROME1", bits_stored=12)
    got = read_dicom_pixels(tmp_path / "a.dicom")
    np.testing.assert_array_equal(got.pixels_HW, values)
    assert got.monochrome1 and got.transfer_syntax == "Explicit VR Little Endian"


def test_read_dicom_pixels_rejects_colour_and_multiframe(tmp_path):
    rgb = np.zeros((8, 6, 3), dtype=np.uint8)
    write_dicom(tmp_path / "rgb.dicom", rgb, photometric="RGB", bits_stored=8)
    with pytest.raises(DicomReadError, match=r"^PhotometricInterpretation 'RGB' is not MONOCHROME1/MONOCHROME2$"):
        read_dicom_pixels(tmp_path / "rgb.dicom")
    frames = np.zeros((2, 8, 6), dtype=np.uint16)
    write_dicom(tmp_path / "multi.dicom", frames, photometric="MONOCHROME2", bits_stored=12)
    with pytest.raises(DicomReadError, match=r"^multi-frame image \(2 frames\); expected a single frame$"):
        read_dicom_pixels(tmp_path / "multi.dicom")


@pytest.mark.skipif(not get_decoder(JPEG2000Lossless).is_available, reason="no JPEG 2000 handler (Pillow without OpenJPEG)")
@pytest.mark.parametrize("bits", [12, 16])
def test_jpeg2000_lossless_decodes_exactly(tmp_path, bits):
    ph = make_phantom(90, 70, semi_x=40, semi_y=30, blob=(5, 40, 12, 50))
    values = stored_values(ph.brightness_HW, bits_stored=bits, monochrome1=True)
    write_j2k_dicom(tmp_path / "j.dicom", values, photometric="MONOCHROME1", bits_stored=bits)
    got = read_dicom_pixels(tmp_path / "j.dicom")
    np.testing.assert_array_equal(got.pixels_HW, values)
    assert got.monochrome1 and got.transfer_syntax == "JPEG 2000 Image Compression (Lossless Only)"


@pytest.mark.skipif(get_decoder(JPEGLossless).is_available, reason="a JPEG Lossless handler is installed")
def test_undecodable_transfer_syntax_names_the_missing_handlers(tmp_path):
    write_jpeg_lossless_stub(tmp_path / "j.dicom")
    with pytest.raises(DicomReadError) as err:
        read_dicom_pixels(tmp_path / "j.dicom")
    assert str(err.value) == (
        "cannot decode 'JPEG Lossless, Non-Hierarchical (Process 14)' pixel data: no pixel-data handler "
        "installed (install one of: gdcm - requires gdcm>=3.0.10; "
        "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1)"
    )


# ---------------------------------------------------------------- annotations


def _sources(tmp_path: Path, finding_rows: list[dict], breast_rows: list[dict]):
    f = write_csv(tmp_path / "finding_annotations.csv", FINDING_HEADER, finding_rows)
    b = write_csv(tmp_path / "breast-level_annotations.csv", BREAST_HEADER, breast_rows)
    return read_source_csv(f, FINDING_SOURCE_COLUMNS), read_source_csv(b, BREAST_SOURCE_COLUMNS)


def _row(image_id: str, **kw) -> dict:
    base = {"study_id": "st1", "series_id": "se1", "image_id": image_id, "laterality": "L",
            "view_position": "MLO", "height": 100, "width": 80, "breast_birads": "BI-RADS 1",
            "breast_density": "DENSITY B", "split": "training"}
    return {**base, **kw}


def test_vindr_table_maps_columns_and_adds_no_finding_rows(tmp_path):
    findings, breast = _sources(
        tmp_path,
        [_row("i1", finding_categories="['Global Asymmetry', 'Suspicious Lymph Node']", finding_birads="BI-RADS 3",
              xmin=-2.5, ymin=10, xmax=40, ymax=50)],
        [_row("i1"), _row("i2", breast_density="density  d", split="test")],
    )
    table = vindr_table(merge_sources(findings, breast), n_folds=5)
    assert table.image_id.tolist() == ["i1.png", "i2.png"]
    assert table.loc[0, "Global_Asymmetry"] == 1 and table.loc[0, "Suspicious_Lymph_Node"] == 1
    assert table.loc[0, ["Mass", "No_Finding"]].tolist() == [0, 0]
    assert table.loc[1, "No_Finding"] == 1 and table.loc[1, "finding_categories"] == "['No Finding']"
    assert table.density.tolist() == [1, 3]
    assert table.loc[0, "xmin"] == -2.5 and np.isnan(table.loc[1, "xmin"])
    assert table.fold.tolist() == [fold_of("st1", 5)] * 2
    crops = pd.DataFrame(
        {"crop_x0": [4], "crop_y0": [10], "crop_x1": [44], "crop_y1": [90], "scale_x": [0.5], "scale_y": [2.0],
         "out_width": [20], "out_height": [160]},
        index=pd.Index(["i1"]),
    )
    kept = with_resized_boxes(table, crops)
    assert kept.image_id.tolist() == ["i1.png"]  # i2 has no crop (no PNG): dropped
    np.testing.assert_array_equal(
        kept.loc[0, ["resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax"]].to_numpy(dtype=float),
        [0.0, 0.0, 18.0, 80.0],
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"finding_categories": "['Mass', 'Tumour']"}, "unknown finding category 'Tumour'"),
        ({"finding_categories": "Mass"}, "finding_categories is not a Python list literal: 'Mass'"),
        ({"breast_density": ""}, "breast_density must be DENSITY A-D, got ''"),
        ({"height": "12.5"}, "height must be a positive integer, got '12.5'"),
        ({"xmin": "left"}, "xmin must be a number or empty, got 'left'"),
    ],
)
def test_bad_cells_are_reported_with_file_and_line(tmp_path, override, message):
    good = _row("i1", finding_categories="['Mass']", xmin=1, ymin=2, xmax=3, ymax=4)
    findings, breast = _sources(tmp_path, [good, {**good, "image_id": "i2", **override}], [])
    with pytest.raises(AnnotationError) as err:
        vindr_table(merge_sources(findings, breast))
    assert str(err.value) == f"{tmp_path / 'finding_annotations.csv'}: line 3: {message}"


def test_read_source_csv_checks_split_and_columns(tmp_path):
    path = write_csv(tmp_path / "b.csv", BREAST_HEADER, [_row("i1", split="validation")])
    with pytest.raises(AnnotationError, match=r"b\.csv: line 2: split must be 'training' or 'test', got 'validation'$"):
        read_source_csv(path, BREAST_SOURCE_COLUMNS)
    with pytest.raises(AnnotationError, match=r"missing required column\(s\): finding_categories, finding_birads, "):
        read_source_csv(path, FINDING_SOURCE_COLUMNS)


def test_fold_of_is_stable_and_uses_every_fold():
    assert fold_of("abc", 5) == int.from_bytes(__import__("hashlib").sha256(b"abc").digest()[:8], "big") % 5
    folds = [fold_of(f"patient-{i}", 5) for i in range(500)]
    counts = np.bincount(folds, minlength=5)
    assert counts.min() > 70  # ~100 each
    assert [fold_of(f"patient-{i}", 5) for i in range(500)] == folds


# ---------------------------------------------------------------- atomic writes


def test_png_write_leaves_nothing_behind_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "s" / "x.png"

    def explode(self, fp, format=None, **params):  # noqa: A002 - PIL's signature
        Path(fp).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", explode)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dicom.write_png(np.zeros((4, 3), np.uint8), target)
    assert os.listdir(target.parent) == []


def test_phantom_round_trip_through_a_dicom(tmp_path):
    """The test phantom survives writing and reading (guards the other tests' inputs)."""
    ph = make_phantom(120, 90, semi_x=50, semi_y=40, blob=(10, 50, 20, 60))
    values = stored_values(ph.brightness_HW, bits_stored=16, monochrome1=True)
    write_dicom(tmp_path / "p.dicom", values, photometric="MONOCHROME1", bits_stored=16)
    got = read_dicom_pixels(tmp_path / "p.dicom")
    np.testing.assert_array_equal(got.pixels_HW, values)
    assert got.pixels_HW[55, 15] == 0  # the blob is brightest, i.e. lowest in MONOCHROME1
