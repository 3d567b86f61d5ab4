"""VinDr-Mammo annotation table: the Mammo-CLIP ``vindr_detection_v1_folds.csv`` format.

One row per finding (an image with two findings has two rows; a normal image has one
``No Finding`` row with empty boxes). ``load_annotations`` reads the real file and the phantom
file alike, checks it and gives every column a definite dtype; ``images_from_rows`` collapses
rows to unique images with image-level labels (max over the image's rows).
"""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

import numpy as np

if TYPE_CHECKING:  # pandas is imported by the functions that build tables (not a cache dependency)
    import pandas as pd

VINDR_COLUMNS: tuple[str, ...] = (
    "patient_id", "series_id", "image_id", "laterality", "view", "height", "width",
    "breast_birads", "breast_density", "finding_categories", "finding_birads",
    "xmin", "ymin", "xmax", "ymax", "split",
    "resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax", "fold",
    "Architectural_Distortion", "Asymmetry", "Focal_Asymmetry", "Global_Asymmetry", "Mass",
    "Nipple_Retraction", "No_Finding", "Skin_Retraction", "Skin_Thickening",
    "Suspicious_Calcification", "Suspicious_Lymph_Node", "density",
)
"""The 33 columns of the VinDr CSV, in the real order (SPEC §2)."""

FINDING_COLUMNS: tuple[str, ...] = VINDR_COLUMNS[21:32]
"""The 11 one-hot finding columns (0/1), Architectural_Distortion ... Suspicious_Lymph_Node."""

LABEL_COLUMNS: tuple[str, ...] = FINDING_COLUMNS + ("density",)
"""Every label column: the 11 binary findings and ``density`` (0..3 = BI-RADS A..D)."""

CONCEPT_LABELS: tuple[str, ...] = ("Mass", "Suspicious_Calcification", "density")
"""The concepts the project studies. Binary labels are 0/1, ``density`` is 0..3."""

BOX_COLUMNS: tuple[str, ...] = ("xmin", "ymin", "xmax", "ymax")
"""Finding box in original (DICOM) pixels; empty for ``No Finding`` rows."""

RESIZED_BOX_COLUMNS: tuple[str, ...] = ("resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax")
"""Finding box in the PNG frame (912 wide x 1520 high for the public conversion)."""

IMAGE_COLUMNS: tuple[str, ...] = ("patient_id", "image_id", "split", "laterality", "view", "height", "width")
"""Per-image metadata kept by ``images_from_rows``."""

STRING_COLUMNS: tuple[str, ...] = (
    "patient_id", "series_id", "image_id", "laterality", "view",
    "breast_birads", "breast_density", "finding_birads", "split",
)
INT_COLUMNS: tuple[str, ...] = ("height", "width", "fold") + LABEL_COLUMNS
FLOAT_COLUMNS: tuple[str, ...] = BOX_COLUMNS + RESIZED_BOX_COLUMNS

DENSITY_NAMES: tuple[str, ...] = ("DENSITY A", "DENSITY B", "DENSITY C", "DENSITY D")
"""``breast_density`` text for ``density`` = 0, 1, 2, 3."""

NO_FINDING = "No Finding"
"""The ``finding_categories`` entry of a normal row."""

FINDING_NAMES: dict[str, str] = {col: col.replace("_", " ") for col in FINDING_COLUMNS}
"""One-hot column -> its name inside ``finding_categories`` (e.g. ``Suspicious Calcification``)."""


class ImageIndex(NamedTuple):
    """Unique images of a row table, and which image each row belongs to."""

    images: pd.DataFrame
    """One row per unique image, first-appearance order: ``IMAGE_COLUMNS`` + ``LABEL_COLUMNS``."""
    row_to_image: np.ndarray
    """(n_rows,) int64: index into ``images`` for every input row."""


def parse_finding_categories(text: Any) -> list[str]:
    """Parse one ``finding_categories`` cell (``"['Mass', 'Suspicious Calcification']"``).

    Uses ``ast.literal_eval``, which evaluates Python literals only (never code). An empty cell
    gives ``[]``; anything that is not a list of strings raises ``ValueError``.
    """
    if isinstance(text, list):
        value: Any = text
    elif text is None or (isinstance(text, float) and np.isnan(text)) or str(text).strip() == "":
        return []
    else:
        try:
            value = ast.literal_eval(str(text).strip())
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"finding_categories is not a Python list literal: {text!r}") from exc
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"finding_categories is not a list of strings: {text!r}")
    return [v.strip() for v in value]


def _int_column(df: pd.DataFrame, col: str, csv_path: Path) -> pd.Series:
    import pandas as pd

    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() | (values != np.round(values))
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # +1 header, +1 one-based
        raise ValueError(f"{csv_path}: column {col!r} must hold integers; line {line} has {df[col].iloc[line - 2]!r}")
    return values.astype(np.int64)


def _check_range(df: pd.DataFrame, col: str, allowed: set[int], csv_path: Path) -> None:
    bad = ~df[col].isin(sorted(allowed))
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise ValueError(
            f"{csv_path}: column {col!r} must be in {sorted(allowed)}; line {line} has {df[col].iloc[line - 2]}"
        )


def load_annotations(csv_path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a VinDr detection CSV (real or phantom) into a checked DataFrame.

    Returns all 33 ``VINDR_COLUMNS`` in the real order (any extra columns follow, unchanged):
    identifier and text columns as ``str`` (an empty cell, e.g. ``finding_birads`` of a normal
    row, becomes ``""``); ``height``, ``width``, ``fold`` and the label columns as int64 (binary
    findings 0/1, ``density`` 0..3); boxes as float64 with NaN where empty (slightly negative
    coordinates are kept as they are); ``finding_categories`` as ``list[str]``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the missing
    columns or the first bad cell.
    """
    import pandas as pd

    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"VinDr annotation CSV not found: {path}")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    missing = [c for c in VINDR_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing required column(s): {', '.join(missing)}")

    df = pd.DataFrame(index=raw.index)
    for col in VINDR_COLUMNS:
        if col in STRING_COLUMNS:
            df[col] = raw[col].str.strip()
        elif col in INT_COLUMNS:
            df[col] = _int_column(raw, col, path)
        elif col in FLOAT_COLUMNS:
            values = pd.to_numeric(raw[col].str.strip().replace("", np.nan), errors="coerce")
            bad = values.isna() & (raw[col].str.strip() != "")
            if bad.any():
                line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
                raise ValueError(f"{path}: column {col!r} must hold numbers; line {line} has {raw[col].iloc[line - 2]!r}")
            df[col] = values.astype(np.float64)
        else:  # finding_categories
            parsed = []
            for i, cell in enumerate(raw[col]):
                try:
                    parsed.append(parse_finding_categories(cell))
                except ValueError as exc:
                    raise ValueError(f"{path}: line {i + 2}: {exc}") from None
            df[col] = pd.Series(parsed, index=raw.index, dtype=object)
    for col in FINDING_COLUMNS:
        _check_range(df, col, {0, 1}, path)
    _check_range(df, "density", {0, 1, 2, 3}, path)
    extra = [c for c in raw.columns if c not in VINDR_COLUMNS]
    for col in extra:
        df[col] = raw[col]
    return df.reset_index(drop=True)


def images_from_rows(rows: pd.DataFrame) -> ImageIndex:
    """Collapse a row table (one row per finding) to unique images.

    Images keep first-appearance order. Metadata (``IMAGE_COLUMNS``) comes from each image's
    first row (a ``ValueError`` if an image's rows disagree on ``patient_id`` or ``split``);
    every label column present in ``rows`` becomes the max over the image's rows.
    """
    import pandas as pd

    missing = [c for c in ("patient_id", "image_id") if c not in rows.columns]
    if missing:
        raise ValueError(f"row table is missing column(s): {', '.join(missing)}")
    codes, uniques = pd.factorize(rows["image_id"].to_numpy(), sort=False)
    if (codes < 0).any():
        raise ValueError("row table has an empty image_id")
    row_to_image = codes.astype(np.int64)
    _, first_row = np.unique(row_to_image, return_index=True)  # codes are 0..n-1 in order

    meta_cols = [c for c in IMAGE_COLUMNS if c in rows.columns]
    images = rows.iloc[first_row][meta_cols].reset_index(drop=True)
    for col in ("patient_id", "split"):
        if col in rows.columns:
            disagree = rows[col].to_numpy() != images[col].to_numpy()[row_to_image]
            if disagree.any():
                bad = rows["image_id"].iloc[int(np.flatnonzero(disagree)[0])]
                raise ValueError(f"image {bad!r} has rows with different {col} values")
    for col in LABEL_COLUMNS:
        if col in rows.columns:
            values = rows[col].to_numpy().astype(np.int64)
            label = np.full(len(uniques), np.iinfo(np.int64).min, dtype=np.int64)
            np.maximum.at(label, row_to_image, values)
            images[col] = label
    return ImageIndex(images, row_to_image)


def png_path(images_dir: str | os.PathLike[str], row: Mapping[str, Any]) -> Path:
    """PNG of a row: ``<images_dir>/<patient_id>/<image_id>`` (``image_id`` ends in ``.png``)."""
    return Path(images_dir) / str(row["patient_id"]) / str(row["image_id"])
