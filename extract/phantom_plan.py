"""What each phantom will show: the generator's settings and every seeded draw (breast plans, lesions,
vessels), independent of drawing. `extract.phantoms` turns the plans into images and rows.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from extract.phantom_render import (
    REFERENCE_WIDTH,
    BreastShape,
    CalcCluster,
    CoarseCalc,
    ImageSpec,
    Mass,
    Vessel,
    edge_x,
    pectoral_x,
)

CSV_NAME = "vindr_detection_v1_folds.csv"
IMAGES_DIRNAME = "images_png"
SETTINGS_NAME = "phantoms.json"
VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
"""The four images of a patient, in CSV order."""
MASS_SHAPES = ("round", "oval", "irregular", "spiculated")


class PhantomError(ValueError):
    """Bad generator settings (reported by the CLI as one ``error:`` line)."""


@dataclass(frozen=True)
class PhantomConfig:
    """Settings of a phantom data set; every field is also a CLI flag."""

    n_images: int = 400
    """Images requested; rounded up to a multiple of 4 (two views of two breasts per patient)."""
    seed: int = 0
    """Master seed; image seeds derive from (seed, patient, breast, view)."""
    height: int = 1520
    """PNG height in pixels (the public VinDr conversion is 1520 x 912)."""
    width: int = 912
    """PNG width in pixels. Lesion sizes scale with it; calcification specks stay >= 1 px."""
    mass_prevalence: float = 0.25
    """Probability that a breast has a mass (shown in both of its views)."""
    calc_prevalence: float = 0.25
    """Probability that a breast has a suspicious calcification cluster (independent of masses)."""
    coarse_calc_rate: float = 0.3
    """Probability that a breast has benign coarse calcifications (look-alikes, BI-RADS 2)."""
    crossing_rate: float = 0.3
    """Probability that a view has bright vessel crossings (look-alikes)."""
    lesion_contrast: float = 1.0
    """Multiplier on the added intensity of masses and suspicious specks."""
    cluster_scale: float = 1.0
    """Multiplier on the spread of suspicious calcification clusters; the speck count grows with it."""
    noise: float = 1.0
    """Standard deviation of the per-pixel quantum noise, in grey levels."""
    test_fraction: float = 0.2
    """Fraction of patients in the ``test`` split (at least one of each split if 2+ patients)."""
    density_probs: tuple[float, float, float, float] = (0.15, 0.3, 0.35, 0.2)
    """Probabilities of BI-RADS density A, B, C, D (per patient)."""
    orig_height: int = 3518
    """``height`` column: the original (DICOM) frame the ``xmin..ymax`` boxes refer to."""
    orig_width: int = 2800
    """``width`` column of the original frame."""
    n_folds: int = 5
    """``fold`` column: patient index modulo this."""

    @property
    def n_patients(self) -> int:
        return math.ceil(self.n_images / 4)

    def validate(self) -> None:
        """Raise ``PhantomError`` for settings that cannot give a sensible data set."""
        if self.n_images < 1:
            raise PhantomError(f"--n-images must be >= 1, got {self.n_images}")
        if self.seed < 0:
            raise PhantomError(f"--seed must be >= 0, got {self.seed}")
        if self.height < 32 or self.width < 32:
            raise PhantomError(f"image size must be at least 32 x 32, got {self.height} x {self.width}")
        for name in ("mass_prevalence", "calc_prevalence", "coarse_calc_rate", "crossing_rate", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise PhantomError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
        if len(self.density_probs) != 4 or min(self.density_probs) < 0 or sum(self.density_probs) <= 0:
            raise PhantomError(f"--density-probs needs 4 non-negative numbers, got {self.density_probs}")
        if self.lesion_contrast <= 0 or self.cluster_scale <= 0 or self.noise < 0:
            raise PhantomError("--lesion-contrast and --cluster-scale must be > 0 and --noise >= 0")
        if self.orig_height < 1 or self.orig_width < 1 or self.n_folds < 1:
            raise PhantomError("--orig-height, --orig-width and --n-folds must be positive")


# --------------------------------------------------------------------------- random draws


def rng_for(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *path]))


def hex_id(seed: int, *parts: object) -> str:
    text = ":".join(str(p) for p in ("phantom", seed, *parts))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class MassDraw:
    """View-independent attributes of a breast's mass (position and rotation are per view)."""

    kind: str  # one of MASS_SHAPES
    radius: float  # fraction of W (diameter 6-16 % of the width)
    aspect: float
    harmonics: tuple[tuple[float, float], ...]
    edge: float
    amp: float
    spicules: tuple[tuple[float, float], ...]
    spicule_width: float


@dataclass(frozen=True)
class ClusterDraw:
    """View-independent layout of a breast's calcification cluster."""

    offsets_ref: tuple[tuple[float, float], ...]  # speck offsets in reference (912-wide) pixels
    sizes: tuple[float, ...]  # speck diameters, reference pixels
    amps: tuple[float, ...]


@dataclass(frozen=True)
class BreastPlan:
    """Breast-level draws shared by the CC and MLO views."""

    depth: float
    mass: MassDraw | None
    cluster: ClusterDraw | None
    coarse: bool  # benign coarse calcifications present
    mass_birads: int
    calc_birads: int

    @property
    def birads(self) -> int:
        """``breast_birads``: the highest finding category, else 2 with coarse calcifications, else 1."""
        findings = [b for b, present in ((self.mass_birads, self.mass), (self.calc_birads, self.cluster)) if present]
        return max(findings) if findings else (2 if self.coarse else 1)


def plan_breast(config: PhantomConfig, patient: int, side: int) -> BreastPlan:
    """Draw whether a breast has a mass / cluster / coarse calcifications, and their attributes."""
    rng = rng_for(config.seed, patient, side)
    has_mass = rng.random() < config.mass_prevalence
    has_calc = rng.random() < config.calc_prevalence
    coarse = bool(rng.random() < config.coarse_calc_rate)
    depth = rng.uniform(0.5, 0.8)
    mass_birads = int(rng.choice([3, 4, 5], p=[0.35, 0.45, 0.2]))
    calc_birads = int(rng.choice([4, 5], p=[0.75, 0.25]))
    mass = _draw_mass(rng, config.lesion_contrast) if has_mass else None
    cluster = _draw_cluster(rng, config.lesion_contrast, config.cluster_scale) if has_calc else None
    return BreastPlan(depth, mass, cluster, coarse, mass_birads, calc_birads)


def _draw_mass(rng: np.random.Generator, contrast: float) -> MassDraw:
    kind = MASS_SHAPES[int(rng.integers(len(MASS_SHAPES)))]
    harm_amp = {"round": 0.02, "oval": 0.03, "irregular": 0.13, "spiculated": 0.07}[kind]
    harmonics = tuple((float(rng.uniform(0.3, 1.0) * harm_amp), float(rng.uniform(0, 2 * np.pi))) for _ in range(4))
    aspect = {"round": (0.9, 1.0), "oval": (0.55, 0.8), "irregular": (0.7, 1.0), "spiculated": (0.75, 1.0)}[kind]
    edge = {"round": (0.06, 0.12), "oval": (0.06, 0.12), "irregular": (0.12, 0.25), "spiculated": (0.1, 0.2)}[kind]
    spicules: tuple[tuple[float, float], ...] = ()
    if kind == "spiculated":
        n = int(rng.integers(8, 19))
        spicules = tuple((float(a), float(ln)) for a, ln in zip(rng.uniform(0, 2 * np.pi, n), rng.uniform(0.4, 1.2, n)))
    return MassDraw(
        kind=kind,
        radius=float(rng.uniform(0.03, 0.08)),
        aspect=float(rng.uniform(*aspect)),
        harmonics=harmonics,
        edge=float(rng.uniform(*edge)),
        amp=float(rng.uniform(0.28, 0.42) * contrast),
        spicules=spicules,
        spicule_width=float(rng.uniform(1.0, 2.0)),
    )


def _draw_cluster(rng: np.random.Generator, contrast: float, scale: float = 1.0) -> ClusterDraw:
    n = max(1, round(int(rng.integers(5, 31)) * scale))
    spread = rng.uniform(10.0, 28.0) * scale  # reference pixels
    elong = rng.uniform(1.0, 2.5)
    angle = rng.uniform(0, np.pi)
    xy = rng.normal(size=(n, 2)) * np.array([spread * elong, spread / elong])
    xy = np.clip(xy, -2.5 * spread * elong, 2.5 * spread * elong)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    xy = xy @ rot.T
    return ClusterDraw(
        offsets_ref=tuple((float(a), float(b)) for a, b in xy),
        sizes=tuple(rng.uniform(1.0, 4.0, n).tolist()),
        amps=tuple((rng.uniform(0.35, 0.55, n) * contrast).tolist()),
    )


def sample_shape(rng: np.random.Generator, view: str, depth: float) -> BreastShape:
    """Silhouette of one view of a breast whose greatest depth is about ``depth``."""
    wobble = (float(rng.uniform(0, 0.02)), float(rng.uniform(1, 3)), float(rng.uniform(0, 2 * np.pi)))
    roundness = float(rng.uniform(0.35, 0.6))
    if view == "CC":
        y_peak = float(rng.uniform(0.46, 0.54))
        half = float(rng.uniform(0.3, 0.42))
        return BreastShape(
            "CC", depth * float(rng.uniform(0.95, 1.05)), y_peak,
            max(y_peak - half * float(rng.uniform(0.9, 1.1)), 0.02),
            min(y_peak + half * float(rng.uniform(0.9, 1.1)), 0.98),
            roundness, 0.0, wobble, 0.0, 1.0, 1.0,
        )
    y_peak = float(rng.uniform(0.45, 0.6))
    top_frac = float(rng.uniform(0.3, 0.45))
    d = depth * float(rng.uniform(0.9, 1.05))
    return BreastShape(
        "MLO", d, y_peak, 0.0, min(y_peak + float(rng.uniform(0.28, 0.38)), 0.97),
        roundness, top_frac, wobble,
        top_frac * d * float(rng.uniform(0.6, 0.9)), float(rng.uniform(0.3, 0.55)), float(rng.uniform(0.8, 1.3)),
    )


def _place(rng: np.random.Generator, shape: BreastShape, radius: float, aspect: float) -> tuple[float, float]:
    """A centre (x, y) where a lesion of ``radius`` (fraction of W) lies well inside the breast."""
    ry = radius / aspect
    lo_y = shape.y_top + ry + 0.03
    hi_y = shape.y_bottom - ry - 0.03
    for _ in range(100):
        y = float(rng.uniform(lo_y, hi_y)) if hi_y > lo_y else shape.y_peak
        ys = np.array([y - ry, y, y + ry])
        lo = max(1.3 * radius, float(pectoral_x(shape, ys).max()) + 1.2 * radius) + 0.02
        hi = float(edge_x(shape, ys).min()) - 1.5 * radius - 0.02
        if hi > lo:
            return float(rng.uniform(lo, hi)), y
    return float(edge_x(shape, np.array([shape.y_peak]))[0]) * 0.5, shape.y_peak


def _vessels(rng: np.random.Generator, shape: BreastShape, aspect: float, crossing_rate: float) -> list[Vessel]:
    vessels = []
    for _ in range(int(rng.integers(2, 6))):
        y0 = float(rng.uniform(shape.y_top + 0.05, shape.y_bottom - 0.05))
        y2 = float(np.clip(y0 + rng.normal(0, 0.08), shape.y_top + 0.03, shape.y_bottom - 0.03))
        x0 = float(pectoral_x(shape, np.array([y0]))[0] + rng.uniform(0.01, 0.08))
        x2 = float(edge_x(shape, np.array([y2]))[0] * rng.uniform(0.5, 0.9))
        mid = ((x0 + x2) / 2 + float(rng.normal(0, 0.04)), (y0 + y2) / 2 + float(rng.normal(0, 0.04)))
        vessels.append(Vessel(((x0, y0), mid, (x2, y2)), float(rng.uniform(1.5, 3.0)), float(rng.uniform(0.06, 0.1))))
    if rng.random() < crossing_rate:
        for _ in range(int(rng.integers(1, 3))):
            cx, cy = _place(rng, shape, 0.03, aspect)
            a1 = float(rng.uniform(0, np.pi))
            for a in (a1, a1 + float(rng.uniform(0.6, 1.5))):
                half = float(rng.uniform(0.04, 0.08))
                dx, dy = half * math.cos(a), half * math.sin(a) / aspect
                vessels.append(Vessel(((cx - dx, cy - dy), (cx, cy), (cx + dx, cy + dy)),
                                      float(rng.uniform(1.5, 3.0)), float(rng.uniform(0.1, 0.16))))
    return vessels


def plan_view(config: PhantomConfig, patient: int, side: int, view_index: int, density: int,
              breast: BreastPlan) -> ImageSpec:
    """All draws for one image, given its breast's shared draws."""
    laterality, view = VIEWS[2 * side + view_index]
    rng = rng_for(config.seed, patient, side, view_index)
    aspect = config.height / config.width
    shape = sample_shape(rng, view, breast.depth)
    dense_fraction = float(np.clip((0.1, 0.3, 0.55, 0.8)[density] + rng.uniform(-0.05, 0.05), 0.03, 0.95))
    coarse_fields = tuple(rng.standard_normal(size).astype(np.float32) for size in ((10, 6), (20, 12), (40, 24)))
    fine_field = rng.standard_normal((190, 114)).astype(np.float32)
    vessels = _vessels(rng, shape, aspect, config.crossing_rate)
    masses, clusters, coarse = [], [], []
    if breast.mass is not None:
        m = breast.mass
        x, y = _place(rng, shape, m.radius * (1 + 4 * max(a for a, _ in m.harmonics)), aspect)
        masses.append(Mass(x, y, m.radius, m.aspect, float(rng.uniform(0, np.pi)), m.harmonics,
                           m.edge, m.amp, m.spicules, m.spicule_width))
    if breast.cluster is not None:
        c = breast.cluster
        extent = max(max(abs(a), abs(b)) for a, b in c.offsets_ref) / REFERENCE_WIDTH + 0.01
        x, y = _place(rng, shape, extent, aspect)
        offsets = tuple((a / REFERENCE_WIDTH, b / REFERENCE_WIDTH) for a, b in c.offsets_ref)  # fractions of W
        clusters.append(CalcCluster(x, y, offsets, c.sizes, c.amps))
    if breast.coarse:
        for _ in range(int(rng.integers(1, 4))):
            x, y = _place(rng, shape, 0.015, aspect)
            lobes = tuple((float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3)), float(rng.uniform(2.5, 5.0)))
                          for _ in range(int(rng.integers(1, 4))))
            coarse.append(CoarseCalc(x, y, lobes, float(rng.uniform(0.35, 0.6))))
    return ImageSpec(
        laterality, shape, dense_fraction, coarse_fields, fine_field, tuple(vessels), tuple(masses),
        tuple(clusters), tuple(coarse), int(rng.integers(2**63)), config.noise,
    )
