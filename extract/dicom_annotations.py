"""VinDr-Mammo's original annotation files -> the 33-column ``vindr_detection_v1_folds.csv``.

Inputs (PhysioNet release): ``finding_annotations.csv`` (one row per finding; a normal image has
one ``['No Finding']`` row) and ``breast-level_annotations.csv`` (one row per image). Every image
of either file is kept; an image that only the breast-level file lists gets a ``No Finding``
row. Mapping: ``patient_id`` = ``study_id``, ``view`` = ``view_position``, ``image_id`` gains
``.png``, one-hot finding columns from ``finding_categories`` (spaces -> underscores),
``density`` 0..3 from ``DENSITY A..D``, ``fold`` from a hash of the patient (stable whatever
other patients are present), ``resized_*`` = the boxes mapped through the image's crop and
resize (:func:`extract.dicom_geometry.map_boxes`), clipped to the PNG; NaN where there is no box.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from extract.dicom_geometry import map_boxes
from cache.vindr import (
    BOX_COLUMNS,
    DENSITY_NAMES,
    FINDING_COLUMNS,
    FINDING_NAMES,
    NO_FINDING,
    RESIZED_BOX_COLUMNS,
    VINDR_COLUMNS,
    parse_finding_categories,
)

FINDING_SOURCE_COLUMNS: tuple[str, ...] = (
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "finding_categories", "finding_birads",
    "xmin", "ymin", "xmax", "ymax", "split",
)
"""Required columns of VinDr's ``finding_annotations.csv``."""

BREAST_SOURCE_COLUMNS: tuple[str, ...] = (
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "split",
)
"""Required columns of VinDr's ``breast-level_annotations.csv``."""

CROP_COLUMNS: tuple[str, ...] = (
    "crop_x0", "crop_y0", "crop_x1", "crop_y1", "scale_x", "scale_y", "out_width", "out_height",
)
"""Columns of the crop table that box mapping needs (indexed by the bare ``image_id``)."""

SPLITS = ("training", "test")
WHERE = "_where"  # added column: "<file>: line <n>", for error messages
_CATEGORY_TO_COLUMN = {name: col for col, name in FINDING_NAMES.items()}


class AnnotationError(ValueError):
    """An annotation file that cannot be converted; the message names the file and line."""


def read_source_csv(path: str | os.PathLike[str], required: tuple[str, ...]) -> pd.DataFrame:
    """Read one VinDr source CSV as strings (empty cells stay ``""``) and check its columns."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not a readable CSV ({err})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise AnnotationError(f"{path}: missing required column(s): {', '.join(missing)}")
    df = df[list(required)].apply(lambda s: s.str.strip())
    df[WHERE] = [f"{path}: line {i + 2}" for i in range(len(df))]
    bad_split = ~df["split"].isin(SPLITS)
    if bad_split.any():
        i = int(np.flatnonzero(bad_split.to_numpy())[0])
        raise AnnotationError(f"{df[WHERE].iloc[i]}: split must be 'training' or 'test', got {df['split'].iloc[i]!r}")
    empty_id = (df["study_id"] == "") | (df["image_id"] == "")
    if empty_id.any():
        raise AnnotationError(f"{df[WHERE].iloc[int(np.flatnonzero(empty_id.to_numpy())[0])]}: empty study_id or image_id")
    return df


def merge_sources(findings: pd.DataFrame, breast: pd.DataFrame) -> pd.DataFrame:
    """Finding rows, plus one ``No Finding`` row for each image only the breast-level file has.

    Rows keep the findings file's order; added rows follow in breast-level order.
    """
    extra = breast[~breast["image_id"].isin(set(findings["image_id"]))].copy()
    for col in ("finding_birads", "xmin", "ymin", "xmax", "ymax"):
        extra[col] = ""
    extra["finding_categories"] = repr([NO_FINDING])
    merged = pd.concat([findings, extra[[*FINDING_SOURCE_COLUMNS, WHERE]]], ignore_index=True)
    study_of_image = merged.groupby("image_id", sort=False)["study_id"].nunique()
    if (study_of_image > 1).any():
        raise AnnotationError(f"image {study_of_image[study_of_image > 1].index[0]!r} belongs to several studies")
    return merged


def fold_of(patient_id: str, n_folds: int) -> int:
    """Deterministic fold of a patient: SHA-256 of its id modulo ``n_folds``."""
    digest = hashlib.sha256(patient_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_folds


def _density(text: str, where: str) -> int:
    key = " ".join(text.upper().split())
    if key not in DENSITY_NAMES:
        raise AnnotationError(f"{where}: breast_density must be DENSITY A-D, got {text!r}")
    return DENSITY_NAMES.index(key)


def _one_hot(text: str, where: str) -> np.ndarray:
    try:
        names = parse_finding_categories(text)
    except ValueError as err:
        raise AnnotationError(f"{where}: {err}") from None
    if not names:
        raise AnnotationError(f"{where}: finding_categories is empty")
    hot = np.zeros(len(FINDING_COLUMNS), dtype=np.int64)
    for name in names:
        column = _CATEGORY_TO_COLUMN.get(" ".join(name.split()))
        if column is None:
            raise AnnotationError(f"{where}: unknown finding category {name!r}")
        hot[FINDING_COLUMNS.index(column)] = 1
    return hot


def _numbers(rows: pd.DataFrame, column: str, *, integer: bool) -> np.ndarray:
    text = rows[column]
    values = pd.to_numeric(text.replace("", np.nan), errors="coerce")
    if integer:
        bad = values.isna() | (values != np.round(values)) | (values <= 0)
    else:
        bad = values.isna() & (text != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        kind = "a positive integer" if integer else "a number or empty"
        raise AnnotationError(f"{rows[WHERE].iloc[i]}: {column} must be {kind}, got {text.iloc[i]!r}")
    return values.to_numpy(dtype=np.float64)


def vindr_table(rows: pd.DataFrame, *, n_folds: int = 5) -> pd.DataFrame:
    """Source-format rows (from :func:`merge_sources`) -> the 33 ``VINDR_COLUMNS``.

    The ``resized_*`` boxes are NaN here (see :func:`with_resized_boxes`). Every cell is
    checked; an :class:`AnnotationError` names the source file and line of the first bad one.
    """
    n = len(rows)
    out = pd.DataFrame(index=range(n))
    out["patient_id"] = rows["study_id"].to_numpy()
    out["series_id"] = rows["series_id"].to_numpy()
    out["image_id"] = (rows["image_id"] + ".png").to_numpy()
    out["laterality"] = rows["laterality"].to_numpy()
    out["view"] = rows["view_position"].to_numpy()
    out["height"] = _numbers(rows, "height", integer=True).astype(np.int64)
    out["width"] = _numbers(rows, "width", integer=True).astype(np.int64)
    for col in ("breast_birads", "breast_density", "finding_categories", "finding_birads"):
        out[col] = rows[col].to_numpy()
    for col in BOX_COLUMNS:
        out[col] = _numbers(rows, col, integer=False)
    out["split"] = rows["split"].to_numpy()
    for col in RESIZED_BOX_COLUMNS:
        out[col] = np.nan
    out["fold"] = np.array([fold_of(p, n_folds) for p in rows["study_id"]], dtype=np.int64)
    where = rows[WHERE].to_numpy()
    hot_NF = np.stack([_one_hot(c, w) for c, w in zip(rows["finding_categories"], where)]) if n else (
        np.zeros((0, len(FINDING_COLUMNS)), dtype=np.int64)
    )
    for j, col in enumerate(FINDING_COLUMNS):
        out[col] = hot_NF[:, j]
    out["density"] = np.array([_density(d, w) for d, w in zip(rows["breast_density"], where)], dtype=np.int64)
    return out[list(VINDR_COLUMNS)]


def with_resized_boxes(table: pd.DataFrame, crops: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``table`` whose image is in ``crops``, with ``resized_*`` mapped through its crop.

    ``crops`` is indexed by the bare image id (no ``.png``) and has the ``CROP_COLUMNS``.
    """
    bare = table["image_id"].str.removesuffix(".png")
    kept = table[bare.isin(crops.index).to_numpy()].reset_index(drop=True)
    crop_N = crops.loc[kept["image_id"].str.removesuffix(".png")]
    resized_N4 = map_boxes(
        kept[list(BOX_COLUMNS)].to_numpy(dtype=np.float64),
        origin_N2=crop_N[["crop_x0", "crop_y0"]].to_numpy(dtype=np.float64),
        scale_N2=crop_N[["scale_x", "scale_y"]].to_numpy(dtype=np.float64),
        size_N2=crop_N[["out_width", "out_height"]].to_numpy(dtype=np.float64),
    )
    for j, col in enumerate(RESIZED_BOX_COLUMNS):
        kept[col] = resized_N4[:, j]
    return kept
