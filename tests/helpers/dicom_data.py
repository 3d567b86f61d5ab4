"""Tiny synthetic mammography DICOMs and VinDr source CSVs for the DICOM preprocessing tests.

A phantom is defined in "brightness" (0 = background, 1 = brightest): a half-ellipse breast
attached to the left or right edge, a bright rectangular finding inside it, and a small bright
marker square in a far corner that is not connected to the breast (as burnt-in labels are).
Stored values are brightness scaled to ``bits_stored`` bits, inverted for MONOCHROME1.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from PIL import Image
from pydicom.uid import JPEG2000Lossless, ExplicitVRLittleEndian, JPEGLossless

MAMMO_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray, For Presentation
BACKGROUND = 0.02
TISSUE = 0.5
BLOB = 1.0
MARKER = 0.9


class Phantom(NamedTuple):
    """Brightness image and what is where, in original pixel coordinates (half-open boxes)."""

    brightness_HW: np.ndarray  # float64 in [0, 1]
    breast_mask_HW: np.ndarray  # bool, True inside the breast (blob included)
    blob: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the finding
    marker: tuple[int, int, int, int]


def make_phantom(
    height: int = 400,
    width: int = 300,
    *,
    side: str = "left",
    semi_x: float = 170.0,
    semi_y: float = 160.0,
    blob: tuple[int, int, int, int] = (60, 170, 90, 200),
    seed: int = 0,
) -> Phantom:
    """A breast of semi-axes ``semi_x`` x ``semi_y`` centred on the ``side`` edge at mid height."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    cx = 0.0 if side == "left" else float(width)
    cy = height / 2.0
    breast = ((xx - cx) / semi_x) ** 2 + ((yy - cy) / semi_y) ** 2 <= 1.0
    img = BACKGROUND + rng.uniform(-0.004, 0.004, size=(height, width))
    texture = 0.08 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    img[breast] = TISSUE + texture[breast]
    if side == "right":
        blob = (width - blob[2], blob[1], width - blob[0], blob[3])
    x0, y0, x1, y1 = blob
    img[y0:y1, x0:x1] = BLOB
    mx0 = width - 25 if side == "left" else 10
    marker = (mx0, 15, mx0 + 12, 27)
    img[marker[1] : marker[3], marker[0] : marker[2]] = MARKER
    return Phantom(np.clip(img, 0.0, 1.0), breast, blob, marker)


def stored_values(brightness_HW: np.ndarray, *, bits_stored: int, monochrome1: bool) -> np.ndarray:
    """Brightness -> uint16 stored values (MONOCHROME1: high value = dark)."""
    top = 2**bits_stored - 1
    values = np.round(brightness_HW * top)
    if monochrome1:
        values = top - values
    return values.astype(np.uint16)


def write_dicom(
    path: Path,
    pixels_HW: np.ndarray,
    *,
    photometric: str,
    bits_stored: int,
    window: tuple[float, float] | None = None,
) -> Path:
    """Write an uncompressed single-frame MG DICOM (optionally with Window Center / Width)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MAMMO_SOP_CLASS
    ds.Modality = "MG"
    ds.set_pixel_data(pixels_HW, photometric, bits_stored)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_j2k_dicom(path: Path, pixels_HW: np.ndarray, *, photometric: str, bits_stored: int) -> Path:
    """A JPEG 2000 lossless DICOM; the code stream is made by Pillow (OpenJPEG), reversible wavelet."""
    stream = io.BytesIO()
    Image.fromarray(pixels_HW.astype(np.uint16)).save(stream, format="JPEG2000", irreversible=False, no_jp2=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.SOPClassUID = MAMMO_SOP_CLASS
    ds.SOPInstanceUID = "1.2.3.4.6"
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels_HW.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = photometric
    ds.PixelData = encapsulate([stream.getvalue()])
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_jpeg_lossless_stub(path: Path, height: int = 64, width: int = 48) -> Path:
    """A JPEG Lossless (Process 14) DICOM; no installed plugin can decode it here."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.SOPClassUID = MAMMO_SOP_CLASS
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.Modality = "MG"
    ds.Rows, ds.Columns = height, width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(40) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


FINDING_HEADER = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "finding_categories", "finding_birads",
    "xmin", "ymin", "xmax", "ymax", "split",
]
BREAST_HEADER = [
    "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
    "breast_birads", "breast_density", "split",
]


def write_csv(path: Path, header: list[str], rows: list[dict]) -> Path:
    """Write rows (dicts over ``header``; missing keys -> empty) as a CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in header})
    return path


def area_resize(img_HW: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area-average resize by its definition, in exact integer steps: repeat every pixel
    ``out`` times along an axis (now ``in * out`` samples), then average blocks of ``in``."""

    def along_rows(x: np.ndarray, n_out: int) -> np.ndarray:
        n_in = x.shape[0]
        return np.repeat(x, n_out, axis=0).reshape(n_out, n_in, *x.shape[1:]).mean(axis=1)

    return along_rows(along_rows(img_HW.astype(np.float64), out_h).T, out_w).T
