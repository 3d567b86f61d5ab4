"""Raw VinDr-Mammo DICOMs -> ``images_png/`` + ``vindr_detection_v1_folds.csv`` (the extractor's input).

Usage::

    python -m extract.preprocess_dicom --dicoms vindr/images \\
        --annotations vindr/finding_annotations.csv \\
        --breast-level vindr/breast-level_annotations.csv --out vindr_png --workers 8

Reads ``<dicoms>/<study_id>/<image_id>.dicom`` (or ``.dcm``) and writes, under ``--out``:

- ``images_png/<study_id>/<image_id>.png``: 8-bit grey, Mammo-CLIP's conversion
  (see :mod:`extract.dicom_geometry`);
- ``crop_boxes.csv``: per image the crop in original pixels, the scales and the settings, so any
  box can be mapped again (``x' = (x - crop_x0) * scale_x``); also what a resumed run reuses;
- ``vindr_detection_v1_folds.csv``: the 33 columns of SPEC §2 (:mod:`extract.dicom_annotations`)
  for every image that has a PNG;
- ``preprocess_report.json``: counts, and every DICOM that was missing, unreadable or
  unsupported (those are skipped, never fatal), images where no breast was found, and images
  whose annotated size differs from the DICOM.

Resumable: an image whose PNG and crop record exist is skipped (``--overwrite`` redoes it). Every
file is written to a temporary name and renamed, so an interruption leaves no partial file.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from extract.dicom_annotations import (
    BREAST_SOURCE_COLUMNS,
    CROP_COLUMNS,
    FINDING_SOURCE_COLUMNS,
    AnnotationError,
    merge_sources,
    read_source_csv,
    vindr_table,
    with_resized_boxes,
)
from extract.dicom_geometry import CropConfig, convert_pixels
from extract.dicom_records import (CROP_TABLE_COLUMNS, DICOM_SUFFIXES, UsageError, empty_crop_table, find_dicom,
                                    load_crop_table, run_report)
from extract.dicom_io import DicomReadError, read_dicom_pixels
from cache.atomic import atomic_path, write_text_atomic
from cache.cli_errors import cli_main, print_error

CSV_NAME = "vindr_detection_v1_folds.csv"
CROP_TABLE_NAME = "crop_boxes.csv"
REPORT_NAME = "preprocess_report.json"
IMAGES_DIR_NAME = "images_png"
SETTING_COLUMNS = ("border", "margin", "voi_lut", "out_height", "out_width")
"""Crop-table columns that must match the current settings for a PNG to be reused."""


@dataclass(frozen=True)
class PreprocessConfig:
    """One preprocessing run."""

    dicoms: Path  # <dicoms>/<study_id>/<image_id>.dicom
    annotations: Path  # VinDr finding_annotations.csv
    breast_level: Path  # VinDr breast-level_annotations.csv
    out: Path  # output folder
    crop: CropConfig = field(default_factory=CropConfig)
    voi_lut: bool = False  # apply the modality LUT and the first VOI LUT / window before scaling
    workers: int = 1  # worker processes (1: convert in this process)
    overwrite: bool = False  # redo images whose PNG already exists
    n_folds: int = 5  # folds assigned by patient
    flush_every: int = 200  # rewrite crop_boxes.csv after this many new images


class ImageJob(NamedTuple):
    """One image to convert."""

    study_id: str
    image_id: str  # bare VinDr id, no suffix
    dicom_path: str
    png_path: str


class ImageResult(NamedTuple):
    """What became of one job: a crop record, or why not."""

    job: ImageJob
    record: dict | None
    error: str | None


class RunSummary(NamedTuple):
    """Counts of one run (the full detail is in the report file)."""

    n_images: int
    converted: int
    skipped_existing: int
    failed: int
    missing: int
    rows_written: int
    rows_dropped: int
    no_breast_found: int


# ----------------------------------------------------------------------------------------------
# Atomic writes


def write_png(image_HW: np.ndarray, path: Path) -> None:
    """Write an 8-bit greyscale PNG atomically."""
    with atomic_path(path) as tmp:
        # compression level 1 (fast), as OpenCV's default in Mammo-CLIP's cv2.imwrite
        Image.fromarray(np.ascontiguousarray(image_HW, dtype=np.uint8)).save(tmp, format="PNG", compress_level=1)


def write_text(text: str, path: Path) -> None:
    """Write a text file atomically."""
    write_text_atomic(path, text)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write a CSV atomically (no index)."""
    write_text(df.to_csv(index=False), path)


# ----------------------------------------------------------------------------------------------
# One image (runs in a worker process)


def convert_one(job: ImageJob, crop: CropConfig, voi_lut: bool) -> ImageResult:
    """Read, convert and save one image; never raises for a bad file (the error is returned)."""
    try:
        pixels = read_dicom_pixels(job.dicom_path, voi_lut=voi_lut)
        done = convert_pixels(pixels.pixels_HW, monochrome1=pixels.monochrome1, config=crop)
        write_png(done.image_HW, Path(job.png_path))
    except DicomReadError as err:
        return ImageResult(job, None, str(err))
    except Exception as err:  # one bad image must not stop a 20k-image run
        return ImageResult(job, None, f"{type(err).__name__}: {err}")
    height, width = pixels.pixels_HW.shape
    record = {
        "study_id": job.study_id,
        "image_id": job.image_id,
        "border": crop.border,
        "margin": crop.margin,
        "voi_lut": voi_lut,
        "crop_x0": done.crop.x0,
        "crop_y0": done.crop.y0,
        "crop_x1": done.crop.x1,
        "crop_y1": done.crop.y1,
        "orig_height": height,
        "orig_width": width,
        "out_height": crop.out_height,
        "out_width": crop.out_width,
        "scale_x": done.scale_x,
        "scale_y": done.scale_y,
        "breast_found": done.breast_found,
        "threshold": done.threshold,
        "transfer_syntax": pixels.transfer_syntax,
    }
    return ImageResult(job, record, None)


# ----------------------------------------------------------------------------------------------
# The run


def _check_settings(table: pd.DataFrame, config: PreprocessConfig) -> None:
    want = {
        "border": config.crop.border,
        "margin": config.crop.margin,
        "voi_lut": config.voi_lut,
        "out_height": config.crop.out_height,
        "out_width": config.crop.out_width,
    }
    for col, value in want.items():
        differs = table[col].astype(type(value)) != value
        if differs.any():
            other = table[col].iloc[int(np.flatnonzero(differs.to_numpy())[0])]
            raise UsageError(
                f"{config.out} holds images made with {col}={other}, not {value}; "
                "pass --overwrite or choose another --out"
            )


def _results(jobs: list[ImageJob], config: PreprocessConfig) -> Iterator[ImageResult]:
    """Convert the jobs, in this process or a pool, yielding results as they finish."""
    if config.workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield convert_one(job, config.crop, config.voi_lut)
        return
    with ProcessPoolExecutor(max_workers=config.workers) as pool:
        futures: dict[Future, ImageJob] = {
            pool.submit(convert_one, job, config.crop, config.voi_lut): job for job in jobs
        }
        try:
            for future in as_completed(futures):
                try:
                    yield future.result()
                except Exception as err:  # a worker killed (e.g. out of memory)
                    yield ImageResult(futures[future], None, f"worker process failed ({type(err).__name__}: {err})")
        finally:
            for future in futures:
                future.cancel()


class Plan(NamedTuple):
    """What a run has to do: records reused from a previous run, images to convert, missing files."""

    records: dict[str, dict]  # image_id -> crop record, reused
    jobs: list[ImageJob]
    missing: list[dict]


def plan_jobs(rows: pd.DataFrame, saved: pd.DataFrame, config: PreprocessConfig) -> Plan:
    """Reuse an image whose PNG and crop record exist; otherwise convert it if its DICOM exists."""
    records: dict[str, dict] = {}
    jobs: list[ImageJob] = []
    missing: list[dict] = []
    pairs = rows[["study_id", "image_id"]].drop_duplicates("image_id")
    for study_id, image_id in zip(pairs["study_id"], pairs["image_id"]):
        png = config.out / IMAGES_DIR_NAME / study_id / f"{image_id}.png"
        if image_id in saved.index and png.is_file():
            records[image_id] = saved.loc[image_id].to_dict()
            continue
        dicom = find_dicom(config.dicoms, study_id, image_id)
        if dicom is None:
            expected = config.dicoms / study_id / f"{image_id}{DICOM_SUFFIXES[0]}"
            missing.append({"study_id": study_id, "image_id": image_id, "expected": str(expected)})
            continue
        jobs.append(ImageJob(study_id, image_id, str(dicom), str(png)))
    return Plan(records, jobs, missing)


def convert_all(
    jobs: list[ImageJob], records: dict[str, dict], config: PreprocessConfig, *, progress: bool
) -> list[dict]:
    """Convert the jobs, adding their crop records to ``records`` (saved to ``crop_boxes.csv``
    every ``flush_every`` images and at the end, also on interruption); returns the failures."""
    crop_path = config.out / CROP_TABLE_NAME

    def flush() -> None:
        write_csv(pd.DataFrame(list(records.values()), columns=list(CROP_TABLE_COLUMNS)), crop_path)

    failed: list[dict] = []
    since_flush = 0
    bar = tqdm(total=len(jobs), desc="DICOM -> PNG", unit="img", disable=not progress)
    try:
        for result in _results(jobs, config):
            bar.update(1)
            job = result.job
            if result.record is None:
                Path(job.png_path).unlink(missing_ok=True)  # no PNG without a crop record
                failed.append({"study_id": job.study_id, "image_id": job.image_id,
                               "dicom": job.dicom_path, "reason": result.error})
                continue
            records[job.image_id] = result.record
            since_flush += 1
            if since_flush >= config.flush_every:
                flush()
                since_flush = 0
    finally:
        bar.close()
        flush()
    return failed


def run(config: PreprocessConfig, *, progress: bool = True) -> RunSummary:
    """Convert every annotated image and write the CSV, crop table and report."""
    if not config.dicoms.is_dir():
        raise UsageError(f"DICOM folder not found: {config.dicoms}")
    findings = read_source_csv(config.annotations, FINDING_SOURCE_COLUMNS)
    breast = read_source_csv(config.breast_level, BREAST_SOURCE_COLUMNS)
    rows = merge_sources(findings, breast)
    table = vindr_table(rows, n_folds=config.n_folds)  # checks every cell before any work

    saved = empty_crop_table() if config.overwrite else load_crop_table(config.out / CROP_TABLE_NAME)
    _check_settings(saved, config)
    plan = plan_jobs(rows, saved, config)
    skipped = len(plan.records)
    records = dict(plan.records)
    failed = convert_all(plan.jobs, records, config, progress=progress)
    converted = len(records) - skipped

    crops = pd.DataFrame(list(records.values()), columns=list(CROP_TABLE_COLUMNS)).set_index("image_id")
    written = with_resized_boxes(table, crops[list(CROP_COLUMNS)])
    write_csv(written, config.out / CSV_NAME)
    report = run_report(config, table, crops, written, converted, skipped, failed, plan.missing)
    write_text(json.dumps(report, indent=2, default=str) + "\n", config.out / REPORT_NAME)
    return RunSummary(
        n_images=report["n_images"],
        converted=converted,
        skipped_existing=skipped,
        failed=len(failed),
        missing=len(plan.missing),
        rows_written=len(written),
        rows_dropped=len(table) - len(written),
        no_breast_found=len(report["no_breast_found"]),
    )


# ----------------------------------------------------------------------------------------------
# CLI


def parse_size(text: str) -> tuple[int, int]:
    """``"1520x912"`` -> ``(1520, 912)`` (height, width)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--size must be HEIGHTxWIDTH with positive integers, e.g. 1520x912; got {text!r}")
    return int(parts[0]), int(parts[1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m extract.preprocess_dicom",
        description=(
            "Convert VinDr-Mammo DICOMs to Mammo-CLIP's PNG layout (border crop 5 px, MONOCHROME1 "
            "inverted, min-max uint8, breast crop, area resize) and write "
            "vindr_detection_v1_folds.csv, crop_boxes.csv and preprocess_report.json under --out."
        ),
    )
    parser.add_argument("--dicoms", type=Path, required=True, metavar="DIR",
                        help="folder with <study_id>/<image_id>.dicom (or .dcm)")
    parser.add_argument("--annotations", type=Path, required=True, metavar="CSV",
                        help="VinDr finding_annotations.csv")
    parser.add_argument("--breast-level", type=Path, required=True, metavar="CSV",
                        help="VinDr breast-level_annotations.csv")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--size", default="1520x912", metavar="HxW", help="PNG height x width (default: 1520x912)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default: 1)")
    parser.add_argument("--voi-lut", action="store_true",
                        help="apply the modality LUT and the DICOM VOI LUT / window before scaling")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose PNG already exists")
    parser.add_argument("--margin", type=int, default=CropConfig.margin, metavar="PX",
                        help="pixels of background kept around the breast (default: 4)")
    parser.add_argument("--folds", type=int, default=5, metavar="N",
                        help="number of folds assigned by patient hash (default: 5)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    height, width = parse_size(args.size)
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.margin < 0:
        raise UsageError(f"--margin must be >= 0, got {args.margin}")
    if args.folds < 1:
        raise UsageError(f"--folds must be at least 1, got {args.folds}")
    return PreprocessConfig(
        dicoms=args.dicoms,
        annotations=args.annotations,
        breast_level=args.breast_level,
        out=args.out,
        crop=CropConfig(out_height=height, out_width=width, margin=args.margin),
        voi_lut=args.voi_lut,
        workers=args.workers,
        overwrite=args.overwrite,
        n_folds=args.folds,
    )


@cli_main
def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    try:
        config = config_from_args(args)
        started = time.perf_counter()
        summary = run(config, progress=not args.quiet)
    except (UsageError, AnnotationError) as err:
        print_error(err)
        sys.exit(2)
    except OSError as err:  # e.g. --out not writable, disk full
        print(f"error: cannot write the output: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished images are kept; run again to resume", file=sys.stderr)
        sys.exit(130)
    seconds = time.perf_counter() - started
    print(
        f"{summary.converted} converted, {summary.skipped_existing} already done, "
        f"{summary.failed} unreadable or unsupported, {summary.missing} missing DICOMs, "
        f"{summary.no_breast_found} without a breast found ({seconds:.1f} s); "
        f"{summary.rows_written} rows in {config.out / CSV_NAME} "
        f"({summary.rows_dropped} dropped); details in {config.out / REPORT_NAME}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
