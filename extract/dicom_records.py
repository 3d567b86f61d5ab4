"""The records of a DICOM conversion run: the crop table (read back to resume) and the report.

`extract.preprocess_dicom` runs the conversion; this module only reads and summarises its records.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DICOM_SUFFIXES = (".dicom", ".dcm")

CROP_TABLE_COLUMNS: tuple[str, ...] = (
    "study_id", "image_id", "border", "margin", "voi_lut",
    "crop_x0", "crop_y0", "crop_x1", "crop_y1", "orig_height", "orig_width",
    "out_height", "out_width", "scale_x", "scale_y", "breast_found", "threshold", "transfer_syntax",
)
"""``crop_boxes.csv``: crop in original DICOM pixels (half-open, border included)."""


class UsageError(Exception):
    """Bad command-line input or an output folder made with other settings."""


def find_dicom(dicoms: Path, study_id: str, image_id: str) -> Path | None:
    """``<dicoms>/<study_id>/<image_id>.dicom`` or ``.dcm``, whichever exists."""
    for suffix in DICOM_SUFFIXES:
        path = dicoms / study_id / f"{image_id}{suffix}"
        if path.is_file():
            return path
    return None


def empty_crop_table() -> pd.DataFrame:
    """A crop table without records, indexed by ``image_id``."""
    return pd.DataFrame(columns=list(CROP_TABLE_COLUMNS)).set_index("image_id", drop=False)


def load_crop_table(path: Path) -> pd.DataFrame:
    """The saved crop records (empty if none), indexed by ``image_id``."""
    if not path.is_file():
        return empty_crop_table()
    try:
        table = pd.read_csv(path, dtype={"study_id": str, "image_id": str, "transfer_syntax": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is unreadable ({err}); remove it or pass --overwrite") from None
    missing = [c for c in CROP_TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise UsageError(f"{path} lacks column(s) {', '.join(missing)}; remove it or pass --overwrite")
    table = table[list(CROP_TABLE_COLUMNS)].drop_duplicates("image_id", keep="last")
    return table.set_index("image_id", drop=False)


def run_report(
    config: Any,
    table: pd.DataFrame,
    crops: pd.DataFrame,
    written: pd.DataFrame,
    converted: int,
    skipped: int,
    failed: list[dict],
    missing: list[dict],
) -> dict:
    """The content of preprocess_report.json (`config`: the run's PreprocessConfig)."""
    sizes = table.drop_duplicates("image_id").assign(bare=lambda d: d["image_id"].str.removesuffix(".png"))
    sizes = sizes[sizes["bare"].isin(crops.index)]
    dicom_hw = crops.loc[sizes["bare"], ["orig_height", "orig_width"]].to_numpy(dtype=np.int64)
    csv_hw = sizes[["height", "width"]].to_numpy(dtype=np.int64)
    mismatch = [
        {"image_id": img, "csv_height_width": [int(a[0]), int(a[1])], "dicom_height_width": [int(b[0]), int(b[1])]}
        for img, a, b in zip(sizes["bare"], csv_hw, dicom_hw)
        if (a != b).any()
    ]
    boxed = written[["xmax", "ymax"]].notna().all(axis=1) & (written["xmax"] > written["xmin"]) & (
        written["ymax"] > written["ymin"]
    )
    vanished = boxed & (
        (written["resized_xmax"] <= written["resized_xmin"]) | (written["resized_ymax"] <= written["resized_ymin"])
    )
    found = crops["breast_found"].astype(str).str.lower() == "true"
    return {
        "settings": {
            "dicoms": str(config.dicoms),
            "annotations": str(config.annotations),
            "breast_level": str(config.breast_level),
            "crop": asdict(config.crop),
            "voi_lut": config.voi_lut,
            "n_folds": config.n_folds,
            "resize": "exact area average (OpenCV INTER_AREA when shrinking)",
        },
        "n_images": len(crops) + len(failed) + len(missing),
        "converted": converted,
        "skipped_existing": skipped,
        "n_failed": len(failed),
        "n_missing": len(missing),
        "rows_written": len(written),
        "rows_dropped": len(table) - len(written),
        "failed": failed,
        "missing": missing,
        "no_breast_found": sorted(crops.index[~found.to_numpy()].tolist()),
        "size_mismatch": mismatch,
        "boxes_outside_crop": written.loc[vanished, "image_id"].tolist(),
    }
