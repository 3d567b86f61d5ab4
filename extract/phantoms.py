"""Synthetic mammograms ("phantoms") in the VinDr layout: the embedded default data set.

    python -m extract.phantoms --out DIR --n-images 400 --seed 0 [--height 1520 --width 912]

writes ``DIR/images_png/<patient_id>/<image_id>`` (8-bit grey PNG),
``DIR/vindr_detection_v1_folds.csv`` (the 33 VinDr columns, one row per finding) and
``DIR/phantoms.json`` (the generator settings). Each patient has four images (CC and MLO of
both breasts), so ``--n-images`` is rounded up to a multiple of 4. A lesion belongs to a breast
and shows in both of its views. Every random draw comes from a seed derived from
(``--seed``, patient, breast, view), so the same arguments give byte-identical files, and a
smaller run is a prefix of a larger one (apart from the split, which is drawn over all patients).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from cache.atomic import write_bytes_atomic
from cache.vindr import DENSITY_NAMES, FINDING_COLUMNS, NO_FINDING, VINDR_COLUMNS
from extract.phantom_plan import (CSV_NAME, IMAGES_DIRNAME, SETTINGS_NAME, VIEWS, BreastPlan, PhantomConfig, PhantomError,
                                  hex_id, plan_breast, plan_view, rng_for)
from extract.phantom_png import encode_png_gray8
from extract.phantom_render import render
from cache.cli_errors import cli_main, print_error

# --------------------------------------------------------------------------- data set


def assign_test_patients(config: PhantomConfig) -> np.ndarray:
    """(n_patients,) bool: which patients form the ``test`` split (a seeded permutation)."""
    n = config.n_patients
    n_test = int(round(n * config.test_fraction))
    if n >= 2:
        n_test = min(max(n_test, 1 if config.test_fraction > 0 else 0), n - 1 if config.test_fraction < 1 else n)
    order = rng_for(config.seed, 2**31 - 1).permutation(n)
    is_test = np.zeros(n, dtype=bool)
    is_test[order[:n_test]] = True
    return is_test


def patient_density(config: PhantomConfig, patient: int) -> int:
    """BI-RADS density class 0..3 of a patient (both breasts)."""
    probs = np.asarray(config.density_probs, dtype=np.float64)
    return int(rng_for(config.seed, patient).choice(4, p=probs / probs.sum()))


def _box_fields(box: tuple[float, float, float, float], sx: float, sy: float) -> dict:
    resized = [round(v, 2) for v in box]
    return dict(
        xmin=round(resized[0] * sx, 2), ymin=round(resized[1] * sy, 2),
        xmax=round(resized[2] * sx, 2), ymax=round(resized[3] * sy, 2),
        resized_xmin=resized[0], resized_ymin=resized[1], resized_xmax=resized[2], resized_ymax=resized[3],
    )


def image_rows(base: dict, mass_boxes, calc_boxes, breast: BreastPlan, config: PhantomConfig) -> list[dict]:
    """CSV rows of one image: one per finding, or a single ``No Finding`` row."""
    sx, sy = config.orig_width / config.width, config.orig_height / config.height
    empty_box = {c: np.nan for c in ("xmin", "ymin", "xmax", "ymax",
                                     "resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax")}
    labels = {c: 0 for c in FINDING_COLUMNS}
    findings = [("Mass", b, breast.mass_birads) for b in mass_boxes]
    findings += [("Suspicious_Calcification", b, breast.calc_birads) for b in calc_boxes]
    rows = []
    for column, box, birads in findings:
        rows.append({**base, **_box_fields(box, sx, sy), **labels, column: 1,
                     "finding_categories": str([column.replace("_", " ")]),
                     "finding_birads": f"BI-RADS {birads}"})
    if not rows:
        rows.append({**base, **empty_box, **labels, "No_Finding": 1,
                     "finding_categories": str([NO_FINDING]), "finding_birads": ""})
    return rows


def generate_patient(config: PhantomConfig, patient: int, is_test: bool, out_dir: Path) -> list[dict]:
    """Draw, render and write the four images of one patient; return their CSV rows."""
    density = patient_density(config, patient)
    patient_id = hex_id(config.seed, patient)
    series_id = hex_id(config.seed, patient, "series")
    rows: list[dict] = []
    for side in (0, 1):
        breast = plan_breast(config, patient, side)
        for view_index in (0, 1):
            laterality, view = VIEWS[2 * side + view_index]
            spec = plan_view(config, patient, side, view_index, density, breast)
            rendered = render(spec, config.height, config.width)
            image_id = hex_id(config.seed, patient, side, view_index) + ".png"
            write_bytes_atomic(out_dir / IMAGES_DIRNAME / patient_id / image_id, encode_png_gray8(rendered.pixels))
            base = dict(
                patient_id=patient_id, series_id=series_id, image_id=image_id, laterality=laterality,
                view=view, height=config.orig_height, width=config.orig_width,
                breast_birads=f"BI-RADS {breast.birads}", breast_density=DENSITY_NAMES[density],
                split="test" if is_test else "training", fold=patient % config.n_folds, density=density,
            )
            rows += image_rows(base, rendered.mass_boxes, rendered.calc_boxes, breast, config)
    return rows


def _patient_job(args: tuple[PhantomConfig, int, bool, Path]) -> list[dict]:
    return generate_patient(*args)


class GenerateResult(NamedTuple):
    """What ``generate`` wrote."""

    csv_path: Path
    images_dir: Path
    n_images: int
    n_rows: int
    seconds: float


def generate(config: PhantomConfig, out_dir: str | os.PathLike[str], workers: int = 1,
             progress: bool = True) -> GenerateResult:
    """Write the phantom data set to ``out_dir``; the CSV is written last, atomically."""
    config.validate()
    if workers < 1:
        raise PhantomError(f"--workers must be >= 1, got {workers}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PhantomError(f"--out exists and is not a folder: {out}")
    start = time.perf_counter()
    is_test = assign_test_patients(config)
    jobs = [(config, p, bool(is_test[p]), out) for p in range(config.n_patients)]
    bar = tqdm(total=4 * len(jobs), unit="img", desc="phantoms", disable=not progress)
    rows: list[dict] = []
    for patient_rows in _run(jobs, workers):
        rows += patient_rows
        bar.update(4)
    bar.close()
    table = pd.DataFrame(rows, columns=list(VINDR_COLUMNS))
    csv_path = out / CSV_NAME
    write_bytes_atomic(csv_path, table.to_csv(index=False, float_format="%.2f", lineterminator="\n").encode())
    settings = {"generator": "extract.phantoms", **asdict(config), "n_images_written": 4 * len(jobs)}
    write_bytes_atomic(out / SETTINGS_NAME, (json.dumps(settings, indent=2) + "\n").encode())
    return GenerateResult(csv_path, out / IMAGES_DIRNAME, 4 * len(jobs), len(table), time.perf_counter() - start)


def _run(jobs: list, workers: int) -> Iterator[list[dict]]:
    if workers == 1:
        yield from map(_patient_job, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_patient_job, jobs, chunksize=4)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    defaults = PhantomConfig()
    p = argparse.ArgumentParser(
        prog="python -m extract.phantoms",
        description="Write a synthetic mammography data set in the VinDr layout "
                    "(images_png/<patient_id>/<image_id>.png + vindr_detection_v1_folds.csv).",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created if needed)")
    p.add_argument("--n-images", type=int, default=defaults.n_images,
                   help="number of images; rounded up to a multiple of 4 (CC+MLO of both breasts per patient)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="master seed (same arguments -> identical files)")
    p.add_argument("--height", type=int, default=defaults.height, help="PNG height in pixels")
    p.add_argument("--width", type=int, default=defaults.width, help="PNG width in pixels")
    p.add_argument("--mass-prevalence", type=float, default=defaults.mass_prevalence,
                   help="probability that a breast has a mass (both views)")
    p.add_argument("--calc-prevalence", type=float, default=defaults.calc_prevalence,
                   help="probability that a breast has a suspicious calcification cluster")
    p.add_argument("--coarse-calc-rate", type=float, default=defaults.coarse_calc_rate,
                   help="probability that a breast has benign coarse calcifications (look-alikes)")
    p.add_argument("--crossing-rate", type=float, default=defaults.crossing_rate,
                   help="probability that a view has bright vessel crossings (look-alikes)")
    p.add_argument("--lesion-contrast", type=float, default=defaults.lesion_contrast,
                   help="multiplier on the brightness of masses and suspicious specks")
    p.add_argument("--cluster-scale", type=float, default=defaults.cluster_scale,
                   help="multiplier on the spread (and speck count) of suspicious calcification clusters")
    p.add_argument("--noise", type=float, default=defaults.noise, help="quantum noise, grey levels (std)")
    p.add_argument("--test-fraction", type=float, default=defaults.test_fraction,
                   help="fraction of patients in the test split")
    p.add_argument("--density-probs", type=float, nargs=4, default=defaults.density_probs,
                   metavar=("A", "B", "C", "D"), help="probabilities of density A..D")
    p.add_argument("--orig-height", type=int, default=defaults.orig_height,
                   help="'height' column: original frame of the xmin..ymax boxes")
    p.add_argument("--orig-width", type=int, default=defaults.orig_width, help="'width' column")
    p.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> PhantomConfig:
    return PhantomConfig(
        n_images=args.n_images, seed=args.seed, height=args.height, width=args.width,
        mass_prevalence=args.mass_prevalence, calc_prevalence=args.calc_prevalence,
        coarse_calc_rate=args.coarse_calc_rate, crossing_rate=args.crossing_rate,
        lesion_contrast=args.lesion_contrast, cluster_scale=args.cluster_scale, noise=args.noise,
        test_fraction=args.test_fraction,
        density_probs=tuple(args.density_probs), orig_height=args.orig_height, orig_width=args.orig_width,
    )


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        result = generate(config, args.out, workers=args.workers, progress=not args.quiet)
    except (PhantomError, OSError) as exc:
        print_error(exc)
        return 2
    table = pd.read_csv(result.csv_path)
    per_image = table.groupby("image_id")[["Mass", "Suspicious_Calcification"]].max()
    note = "" if result.n_images == config.n_images else f" ({config.n_images} requested, rounded up to a multiple of 4)"
    print(f"wrote {result.n_images} images{note} and {result.n_rows} rows in {result.seconds:.1f} s "
          f"({result.n_images / max(result.seconds, 1e-9):.1f} images/s)")
    print(f"  images: {result.images_dir}")
    print(f"  csv:    {result.csv_path}")
    print(f"  images with Mass: {int(per_image['Mass'].sum())}, "
          f"with Suspicious_Calcification: {int(per_image['Suspicious_Calcification'].sum())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
