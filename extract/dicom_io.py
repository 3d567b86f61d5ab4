"""Read the pixels of one mammography DICOM with pydicom, or say precisely why not.

Only single-frame greyscale images (MONOCHROME1 / MONOCHROME2) are accepted. Compressed transfer
syntaxes are decoded by whichever pydicom plugin is installed (Pillow covers JPEG 2000 and
baseline JPEG; JPEG Lossless and JPEG-LS need ``pylibjpeg-libjpeg`` or ``gdcm``); when none is,
the error names the packages that would add one.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


class DicomReadError(Exception):
    """A DICOM that cannot be turned into a greyscale image; the message says why."""


class DicomPixels(NamedTuple):
    """Stored pixel values of one image and how to read them."""

    pixels_HW: np.ndarray  # stored values (or VOI-LUT output), any numeric dtype
    monochrome1: bool  # True: low values are bright (must be inverted)
    transfer_syntax: str  # its name, e.g. "Explicit VR Little Endian"


def _check_decodable(ds: pydicom.Dataset) -> str:
    """Return the transfer syntax name, or raise when no installed plugin can decode it."""
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None)
    if uid is None:
        raise DicomReadError("no (0002,0010) Transfer Syntax UID in the file meta information")
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise DicomReadError(f"transfer syntax {uid.name!r} ({uid}) is not supported by pydicom") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise DicomReadError(
            f"cannot decode {uid.name!r} pixel data: no pixel-data handler installed "
            f"(install one of: {missing})"
        )
    return str(uid.name)


def read_dicom_pixels(path: str | Path, *, voi_lut: bool = False) -> DicomPixels:
    """Read one greyscale DICOM image.

    With ``voi_lut`` the modality LUT / rescale and then the first VOI LUT or window
    (``pydicom.pixels.apply_voi_lut``) are applied; a file without either is used as stored.
    Raises :class:`DicomReadError` for anything that prevents a faithful greyscale image.
    """
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as err:
        raise DicomReadError(f"not a DICOM file ({err})") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, NotImplementedError) as err:
        raise DicomReadError(f"unreadable DICOM ({type(err).__name__}: {err})") from None
    if "PixelData" not in ds:
        raise DicomReadError("no (7FE0,0010) Pixel Data element")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in MONOCHROME:
        raise DicomReadError(
            f"PhotometricInterpretation {photometric or 'missing'!r} is not MONOCHROME1/MONOCHROME2"
        )
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomReadError(f"SamplesPerPixel is {ds.SamplesPerPixel}, expected 1")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicomReadError(f"multi-frame image ({frames} frames); expected a single frame")
    syntax = _check_decodable(ds)
    try:
        pixels = ds.pixel_array
        if voi_lut:
            pixels = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
    except Exception as err:  # pydicom raises many types for damaged pixel data
        raise DicomReadError(f"cannot decode pixel data ({type(err).__name__}: {err})") from None
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise DicomReadError(f"decoded pixel array has shape {pixels.shape}, expected (rows, columns)")
    return DicomPixels(pixels, photometric == "MONOCHROME1", syntax)
