"""VinDr annotation loader: column contract, awkward real-format cells, errors, image collapse."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cache.vindr import (
    CONCEPT_LABELS, FINDING_COLUMNS, LABEL_COLUMNS, VINDR_COLUMNS, images_from_rows, load_annotations,
    parse_finding_categories, png_path,
)

SAMPLE = Path(__file__).parent / "data" / "vindr_sample.csv"


def test_column_contract():
    assert len(VINDR_COLUMNS) == 33 and len(set(VINDR_COLUMNS)) == 33
    assert VINDR_COLUMNS[:3] == ("patient_id", "series_id", "image_id")
    assert VINDR_COLUMNS[9:11] == ("finding_categories", "finding_birads")
    assert VINDR_COLUMNS[15] == "split" and VINDR_COLUMNS[20] == "fold" and VINDR_COLUMNS[-1] == "density"
    assert FINDING_COLUMNS == (
        "Architectural_Distortion", "Asymmetry", "Focal_Asymmetry", "Global_Asymmetry", "Mass",
        "Nipple_Retraction", "No_Finding", "Skin_Retraction", "Skin_Thickening",
        "Suspicious_Calcification", "Suspicious_Lymph_Node",
    )
    assert CONCEPT_LABELS == ("Mass", "Suspicious_Calcification", "density")
    # The fixture header is the real file's header, in order.
    assert tuple(SAMPLE.read_text().splitlines()[0].split(",")) == VINDR_COLUMNS


def test_load_sample_awkward_cells():
    df = load_annotations(SAMPLE)
    assert tuple(df.columns) == VINDR_COLUMNS and len(df) == 6
    assert df["finding_categories"].tolist() == [
        ["No Finding"], ["No Finding"], ["Mass"], ["Suspicious Calcification", "Mass"],
        ["Suspicious Calcification"], ["Focal Asymmetry"],
    ]
    # Empty finding_birads (normal rows and a finding without one) become "".
    assert df["finding_birads"].tolist() == ["", "", "BI-RADS 4", "BI-RADS 4", "BI-RADS 4", ""]
    # Slightly negative coordinates are kept exactly; empty boxes are NaN.
    assert df.loc[3, ["xmin", "ymin", "resized_xmin", "resized_ymin"]].tolist() == [-3.2, -0.75, -1.04, -0.32]
    assert df.loc[:1, ["xmin", "ymax", "resized_xmin", "resized_ymax"]].isna().all().all()
    assert df.loc[2, ["xmin", "ymin", "xmax", "ymax"]].tolist() == [1520.5, 1801.25, 1799.0, 2100.75]
    for col in ("height", "width", "fold", *LABEL_COLUMNS):
        assert df[col].dtype == np.int64, col
    assert df["density"].tolist() == [2, 2, 3, 3, 3, 0]
    assert df["Mass"].tolist() == [0, 0, 1, 1, 0, 0]
    assert df["Suspicious_Calcification"].tolist() == [0, 0, 0, 1, 1, 0]
    assert df["width"].tolist() == [2800] * 5 + [2012]
    assert df["image_id"].str.endswith(".png").all()
    # The repeated image keeps both rows, in file order.
    assert (df["image_id"] == "8a1c6f53d2e4b7a9c0f1e2d3c4b5a697.png").sum() == 2


def test_extra_columns_are_kept(tmp_path):
    df = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    df.insert(3, "note", [f"n{i}" for i in range(len(df))])
    path = tmp_path / "extra.csv"
    df.to_csv(path, index=False)
    out = load_annotations(path)
    assert tuple(out.columns) == VINDR_COLUMNS + ("note",)
    assert out["note"].tolist() == [f"n{i}" for i in range(6)]


def test_missing_columns_are_named(tmp_path):
    df = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False).drop(columns=["fold", "Mass"])
    path = tmp_path / "cut.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError) as err:
        load_annotations(path)
    assert str(err.value) == f"{path}: missing required column(s): fold, Mass"


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "vindr.csv"
    with pytest.raises(FileNotFoundError) as err:
        load_annotations(path)
    assert str(err.value) == f"VinDr annotation CSV not found: {path}"


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("finding_categories", "__import__('os').system('true')", "line 3: finding_categories is not a Python list literal"),
        ("finding_categories", "['Mass', 3]", "line 3: finding_categories is not a list of strings"),
        ("Mass", "2", "column 'Mass' must be in [0, 1]; line 3 has 2"),
        ("density", "4", "column 'density' must be in [0, 1, 2, 3]; line 3 has 4"),
        ("fold", "x", "column 'fold' must hold integers; line 3 has 'x'"),
        ("xmin", "abc", "column 'xmin' must hold numbers; line 3 has 'abc'"),
    ],
)
def test_bad_cells_are_reported_with_their_line(tmp_path, column, value, message):
    df = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    df.loc[1, column] = value
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError) as err:
        load_annotations(path)
    assert message in str(err.value)


def test_parse_finding_categories():
    assert parse_finding_categories("['Suspicious Calcification', 'Mass']") == ["Suspicious Calcification", "Mass"]
    assert parse_finding_categories(' ["Mass"] ') == ["Mass"]
    assert parse_finding_categories("") == [] and parse_finding_categories(math.nan) == []
    with pytest.raises(ValueError):
        parse_finding_categories("Mass")
    with pytest.raises(ValueError):
        parse_finding_categories("{'Mass': 1}")


def test_images_from_rows_matches_groupby_reference():
    rows = load_annotations(SAMPLE)
    images, row_to_image = images_from_rows(rows)
    assert row_to_image.dtype == np.int64
    assert row_to_image.tolist() == [0, 1, 2, 2, 3, 4]
    assert images["image_id"].tolist() == list(dict.fromkeys(rows["image_id"]))
    assert tuple(images.columns) == (
        "patient_id", "image_id", "split", "laterality", "view", "height", "width", *LABEL_COLUMNS,
    )
    # Independent reference: pandas groupby in first-appearance order.
    ref = rows.groupby("image_id", sort=False)[list(LABEL_COLUMNS)].max().reset_index(drop=True)
    pd.testing.assert_frame_equal(images[list(LABEL_COLUMNS)], ref.astype(np.int64))
    assert images.loc[2, ["Mass", "Suspicious_Calcification", "No_Finding"]].tolist() == [1, 1, 0]
    # Every row points at an image with the same patient.
    assert (images["patient_id"].to_numpy()[row_to_image] == rows["patient_id"].to_numpy()).all()


def test_images_from_rows_rejects_inconsistent_rows():
    rows = load_annotations(SAMPLE)
    rows.loc[3, "split"] = "training"
    with pytest.raises(ValueError, match="8a1c6f53d2e4b7a9c0f1e2d3c4b5a697.png' has rows with different split"):
        images_from_rows(rows)


def test_png_path():
    row = load_annotations(SAMPLE).iloc[2]
    assert png_path("/data/images_png", row) == Path(
        "/data/images_png/1b6b8c4e5a3f2d1c0b9a8f7e6d5c4b3a/8a1c6f53d2e4b7a9c0f1e2d3c4b5a697.png"
    )
