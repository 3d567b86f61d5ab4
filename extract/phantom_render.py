"""Render one synthetic mammogram ("phantom") from a resolution-free description.

Everything in an ``ImageSpec`` is in normalised coordinates (x as a fraction of the width,
y as a fraction of the height, lengths as a fraction of the width), in the canonical left-breast
orientation (chest wall at x = 0); ``render`` draws it at any size and mirrors right breasts.

Speed comes from the structure: low-frequency tissue is composed on a grid a quarter of the
image size and upsampled once, only the breast's bounding box is processed at full resolution,
and every lesion, vessel and calcification is drawn in a small local window.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

REFERENCE_WIDTH = 912
"""Widths of lesions, vessels and specks are given in pixels of a 912-wide image and scaled."""

FAT_LEVEL = 0.30
DENSE_LEVEL = 0.60
PECTORAL_LEVEL = 0.68
SKIN_LEVEL = 0.12
PERIPHERY_RAMP = 0.06  # fraction of the width over which the compressed breast thins at the skin
GRID_STRIDE = 8  # tissue is composed on a grid this many times coarser than the image
NOISE_MARGIN = 64  # range of the per-image offset into the shared noise tile


@dataclass(frozen=True)
class BreastShape:
    """Silhouette (and pectoral muscle on MLO) of one breast view, canonical orientation."""

    view: str  # "CC" or "MLO"
    depth: float  # greatest distance from the chest wall to the skin, fraction of W
    y_peak: float  # row of the greatest extent (nipple level), fraction of H
    y_top: float  # upper end of the silhouette at the chest wall (0 on MLO: the axilla)
    y_bottom: float  # lower end (inframammary fold), fraction of H
    roundness: float  # exponent e of the profile (1 - u^2)^e
    top_frac: float  # MLO: extent at the top edge as a fraction of ``depth``
    wobble: tuple[float, float, float]  # amplitude, cycles over the height, phase
    pect_width: float  # MLO: pectoral width at the top edge, fraction of W (0 = none)
    pect_height: float  # MLO: row where the pectoral edge meets the chest wall
    pect_curve: float  # exponent of the pectoral edge (1 = straight)


@dataclass(frozen=True)
class Mass:
    """A soft-edged mass; ``radius`` is a fraction of W, the other lengths relative to it."""

    x: float
    y: float
    radius: float
    aspect: float  # minor / major axis (1 = round)
    angle: float  # rotation of the major axis, radians
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) for k = 2, 3, ...
    edge: float  # width of the soft edge relative to the radius
    amp: float  # added intensity at the centre
    spicules: tuple[tuple[float, float], ...]  # (angle, length relative to radius)
    spicule_width: float  # reference pixels


@dataclass(frozen=True)
class CalcCluster:
    """A suspicious cluster of small specks around (x, y); offsets are fractions of W."""

    x: float
    y: float
    offsets: tuple[tuple[float, float], ...]
    sizes: tuple[float, ...]  # speck diameters in reference pixels (1-4)
    amps: tuple[float, ...]


@dataclass(frozen=True)
class CoarseCalc:
    """A benign, isolated coarse ("popcorn") calcification: one to three overlapping blobs."""

    x: float
    y: float
    lobes: tuple[tuple[float, float, float], ...]  # (dx, dy, radius) in reference pixels
    amp: float


@dataclass(frozen=True)
class Vessel:
    """A quadratic Bezier curve through three points, drawn as a thin bright tube."""

    points: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    width: float  # reference pixels
    amp: float


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to draw one image (all random draws already made)."""

    laterality: str  # "L" or "R" (R is drawn mirrored)
    shape: BreastShape
    dense_fraction: float  # fraction of the breast covered by fibroglandular tissue
    coarse_fields: tuple[np.ndarray, ...]  # low-resolution white noise, one per octave
    fine_field: np.ndarray  # white noise for the parenchymal texture
    vessels: tuple[Vessel, ...]
    masses: tuple[Mass, ...]
    clusters: tuple[CalcCluster, ...]
    coarse_calcs: tuple[CoarseCalc, ...]
    noise_offset: int  # picks this image's offset into the shared quantum-noise tile
    noise: float  # standard deviation of the quantum noise, grey levels


class Rendered(NamedTuple):
    """A drawn image and the boxes (PNG pixels, x0, y0, x1, y1) of its lesions."""

    pixels: np.ndarray  # (H, W) uint8
    mass_boxes: list[tuple[float, float, float, float]]
    calc_boxes: list[tuple[float, float, float, float]]


# --------------------------------------------------------------------------- geometry


def edge_x(shape: BreastShape, y: np.ndarray) -> np.ndarray:
    """Distance from the chest wall to the skin (fraction of W) at rows ``y`` (fraction of H)."""
    y = np.asarray(y, dtype=np.float64)
    above = y < shape.y_peak
    u = np.where(
        above,
        (shape.y_peak - y) / max(shape.y_peak - shape.y_top, 1e-6),
        (y - shape.y_peak) / max(shape.y_bottom - shape.y_peak, 1e-6),
    )
    profile = np.clip(1.0 - u * u, 0.0, None) ** shape.roundness
    if shape.view == "MLO":
        profile = np.where(above, shape.top_frac + (1.0 - shape.top_frac) * profile, profile)
    amp, cycles, phase = shape.wobble
    x = shape.depth * profile * (1.0 + amp * np.sin(2 * np.pi * cycles * y + phase))
    return np.where((y >= shape.y_top) & (y <= shape.y_bottom), x, 0.0)


def pectoral_x(shape: BreastShape, y: np.ndarray) -> np.ndarray:
    """Width of the pectoral muscle (fraction of W) at rows ``y``; zero on CC."""
    if shape.pect_width <= 0:
        return np.zeros_like(np.asarray(y, dtype=np.float64))
    t = np.clip(1.0 - np.asarray(y, dtype=np.float64) / shape.pect_height, 0.0, 1.0)
    return shape.pect_width * t ** shape.pect_curve


# --------------------------------------------------------------------------- tissue


def _resize(field: np.ndarray, height: int, width: int, resample=Image.BICUBIC,
            box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32), mode="F")
    return np.asarray(img.resize((width, height), resample, box=box))


def _smooth(field: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur (edges replicated), renormalised to unit variance."""
    p = np.pad(field, 1, mode="edge")
    p = (p[:-2] + 2 * p[1:-1] + p[2:]) * 0.25
    p = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) * 0.25
    return (p * np.float32(1.0 / 0.375)).astype(np.float32)  # white noise: std 6/16 after the blur


def tissue_grid(spec: ImageSpec, gh: int, gw: int) -> np.ndarray:
    """Attenuation of fat, fibroglandular tissue and pectoral muscle on a (gh, gw) grid."""
    field = np.zeros((gh, gw), dtype=np.float32)
    for octave, noise in enumerate(spec.coarse_fields):
        field += _resize(noise, gh, gw) * (0.6 ** octave)
    y = (np.arange(gh) + 0.5) / gh
    x = (np.arange(gw) + 0.5) / gw
    edge = edge_x(spec.shape, y)[:, None]
    inside = (x[None, :] < edge) & (edge > 0)
    # Fibroglandular tissue gathers behind the nipple, away from the skin and the chest wall.
    t = np.where(edge > 0, x[None, :] / np.maximum(edge, 1e-6), 2.0)
    prior = np.exp(-(((t - 0.55) / 0.35) ** 2)) * np.exp(-(((y[:, None] - spec.shape.y_peak) / 0.3) ** 2))
    texture = _smooth(_resize(spec.fine_field, gh, gw, Image.BILINEAR))
    field += (1.6 * prior).astype(np.float32) + 0.45 * texture
    threshold = np.quantile(field[inside], 1.0 - spec.dense_fraction) if inside.any() else 0.0
    dense = 1.0 / (1.0 + np.exp(-(field - threshold) / 0.3))
    tissue = FAT_LEVEL + (DENSE_LEVEL - FAT_LEVEL) * dense + texture * (0.012 + 0.03 * dense)
    pect = pectoral_x(spec.shape, y)[:, None]
    if spec.shape.pect_width > 0:
        muscle = np.clip((pect - x[None, :]) * gw + 0.5, 0.0, 1.0)
        tissue = tissue * (1 - muscle) + (PECTORAL_LEVEL + 0.02 * texture) * muscle
    return tissue.astype(np.float32)


# --------------------------------------------------------------------------- lesions


def _window(cx: float, cy: float, half: float, height: int, width: int):
    """Integer window around (cx, cy) clipped to the image, and its pixel-centre coordinates."""
    x0, x1 = max(int(math.floor(cx - half)), 0), min(int(math.ceil(cx + half)) + 1, width)
    y0, y1 = max(int(math.floor(cy - half)), 0), min(int(math.ceil(cy + half)) + 1, height)
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5
    return (slice(y0, y1), slice(x0, x1)), xs - cx, ys - cy


def draw_mass(canvas: np.ndarray, mass: Mass, scale: float) -> tuple[float, float, float, float]:
    """Add a mass to ``canvas`` (in place); return its box (core outline plus half the edge)."""
    height, width = canvas.shape
    radius = mass.radius * width
    cx, cy = mass.x * width, mass.y * height
    harm_max = sum(abs(a) for a, _ in mass.harmonics)
    spic_len = max((length for _, length in mass.spicules), default=0.0)
    half = radius * (1 + harm_max + spic_len) + 3 * mass.edge * radius + 2
    win, dx, dy = _window(cx, cy, half, height, width)
    dx, dy = dx[None, :], dy[:, None]
    cos_a, sin_a = math.cos(mass.angle), math.sin(mass.angle)
    u = dx * cos_a + dy * sin_a
    v = (-dx * sin_a + dy * cos_a) / mass.aspect
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    boundary = radius * _outline(mass, theta)
    edge_px = max(mass.edge * radius, 0.7)
    # Soft edge: a smoothstep from 1 at (outline - 2 edge) to 0 at (outline + 2 edge), so the mass
    # has compact support and its box below contains every pixel it touches.
    ramp = np.clip((boundary + 2.0 * edge_px - rho) / (4.0 * edge_px), 0.0, 1.0)
    core = ramp * ramp * (3.0 - 2.0 * ramp)
    value = core * (1.0 + 0.3 * np.clip(1.0 - rho / boundary, 0.0, 1.0))
    if mass.spicules:
        value = np.maximum(value, _spicules(mass, dx, dy, radius, scale))
    canvas[win] += (mass.amp * value).astype(np.float32)
    # Box: the outline plus the whole soft edge, sampled densely and mapped back to image
    # coordinates, plus the tips of any spicules (and their width).
    phi = np.linspace(-np.pi, np.pi, 720, endpoint=False)
    r = radius * _outline(mass, phi) + 2.0 * edge_px
    bu, bv = r * np.cos(phi), r * np.sin(phi) * mass.aspect
    bx = cx + bu * cos_a - bv * sin_a
    by = cy + bu * sin_a + bv * cos_a
    if mass.spicules:
        reach = np.array([(1 + ln) * radius for _, ln in mass.spicules])
        angles = np.array([a for a, _ in mass.spicules])
        pad = max(mass.spicule_width * scale, 0.6)
        bx = np.concatenate([bx, cx + reach * np.cos(angles) - pad, cx + reach * np.cos(angles) + pad])
        by = np.concatenate([by, cy + reach * np.sin(angles) - pad, cy + reach * np.sin(angles) + pad])
    return _clip_box((bx.min(), by.min(), bx.max(), by.max()), width, height)


def _outline(mass: Mass, theta: np.ndarray) -> np.ndarray:
    r = np.ones_like(theta)
    for k, (amp, phase) in enumerate(mass.harmonics, start=2):
        r = r + amp * np.cos(k * theta + phase)
    return r


def _spicules(mass: Mass, dx: np.ndarray, dy: np.ndarray, radius: float, scale: float) -> np.ndarray:
    """Thin radial lines leaving the mass outline, fading towards their tips."""
    angles = np.array([a for a, _ in mass.spicules], dtype=np.float32)[:, None, None]
    lengths = np.array([ln for _, ln in mass.spicules], dtype=np.float32)[:, None, None] * radius
    along = dx * np.cos(angles) + dy * np.sin(angles)
    across = np.abs(-dx * np.sin(angles) + dy * np.cos(angles))
    width = max(mass.spicule_width * scale, 0.6)
    start = 0.5 * radius
    fade = np.clip(1.0 - (along - start) / (lengths + radius - start), 0.0, 1.0) * (along > start)
    line = np.clip(1.0 - across / width, 0.0, 1.0)
    return (0.55 * fade * line).max(axis=0)


def draw_cluster(canvas: np.ndarray, cluster: CalcCluster, scale: float) -> tuple[float, float, float, float]:
    """Add a calcification cluster; return the box around its specks."""
    height, width = canvas.shape
    cx = cluster.x * width
    cy = cluster.y * height
    # Speck centres are snapped to pixel centres so that even a 1-px speck keeps its full peak.
    off = np.asarray(cluster.offsets, dtype=np.float64) * width
    px = np.floor(cx + off[:, 0]) + 0.5
    py = np.floor(cy + off[:, 1]) + 0.5
    sigma = np.maximum(np.asarray(cluster.sizes) * scale / 2.5, 0.42)
    reach = float(np.ceil(3 * sigma.max())) + 1
    x0, x1 = px.min() - reach, px.max() + reach
    y0, y1 = py.min() - reach, py.max() + reach
    half = max(x1 - x0, y1 - y0) / 2
    win, dx, dy = _window((x0 + x1) / 2, (y0 + y1) / 2, half, height, width)
    gx = dx[None, None, :] + (x0 + x1) / 2 - px[:, None, None]
    gy = dy[None, :, None] + (y0 + y1) / 2 - py[:, None, None]
    s2 = (2 * sigma**2)[:, None, None]
    specks = np.asarray(cluster.amps)[:, None, None] * np.exp(-(gx**2 + gy**2) / s2)
    canvas[win] += specks.max(axis=0).astype(np.float32)
    margin = 2 * sigma.max() + 2 * scale
    return _clip_box((px.min() - margin, py.min() - margin, px.max() + margin, py.max() + margin), width, height)


def draw_coarse_calc(canvas: np.ndarray, calc: CoarseCalc, scale: float) -> None:
    """Add a benign coarse calcification (a few overlapping round blobs with firm edges)."""
    height, width = canvas.shape
    cx, cy = calc.x * width, calc.y * height
    half = max(abs(dx) + abs(dy) + r for dx, dy, r in calc.lobes) * scale + 3
    win, gx, gy = _window(cx, cy, half, height, width)
    value = np.zeros((gy.size, gx.size), dtype=np.float32)
    for lx, ly, lr in calc.lobes:
        r = max(lr * scale, 0.8)
        d = np.hypot(gx[None, :] - lx * scale, gy[:, None] - ly * scale)
        value = np.maximum(value, np.clip(r + 0.5 - d, 0.0, 1.0))
    canvas[win] += calc.amp * value


def draw_vessel(canvas: np.ndarray, vessel: Vessel, scale: float) -> None:
    """Add a vessel: a Bezier curve drawn with a bright core and a dimmer rim."""
    height, width = canvas.shape
    t = np.linspace(0.0, 1.0, 24)[:, None]
    p = np.asarray(vessel.points, dtype=np.float64) * np.array([width, height])
    curve = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
    core = max(int(round(vessel.width * scale)), 1)
    pad = core + 3
    x0 = max(int(curve[:, 0].min()) - pad, 0)
    y0 = max(int(curve[:, 1].min()) - pad, 0)
    x1 = min(int(curve[:, 0].max()) + pad, width)
    y1 = min(int(curve[:, 1].max()) + pad, height)
    if x1 <= x0 or y1 <= y0:
        return
    layer = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(layer)
    pts = [(float(x - x0), float(y - y0)) for x, y in curve]
    draw.line(pts, fill=115, width=core + 2, joint="curve")
    draw.line(pts, fill=255, width=core, joint="curve")
    canvas[y0:y1, x0:x1] += np.asarray(layer) * np.float32(vessel.amp / 255.0)


def _clip_box(box, width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))


def _mirror(box: tuple[float, float, float, float], width: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return (width - x1, y0, width - x0, y1)


# --------------------------------------------------------------------------- image


def render(spec: ImageSpec, height: int, width: int) -> Rendered:
    """Draw ``spec`` as an (height, width) uint8 image; lesion boxes in the same (PNG) frame."""
    scale = width / REFERENCE_WIDTH
    y = (np.arange(height) + 0.5) / height
    edge_px = (edge_x(spec.shape, y) * width).astype(np.float32)
    rows = np.flatnonzero(edge_px > 0)
    out = np.zeros((height, width), dtype=np.uint8)
    mass_boxes: list[tuple[float, float, float, float]] = []
    calc_boxes: list[tuple[float, float, float, float]] = []
    if rows.size:
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        c1 = min(int(math.ceil(float(edge_px.max()))) + 2, width)
        gh, gw = max(height // GRID_STRIDE, 16), max(width // GRID_STRIDE, 16)
        grid = tissue_grid(spec, gh, gw)
        canvas = np.zeros((height, width), dtype=np.float32)
        box = (0.0, r0 * gh / height, c1 * gw / width, r1 * gh / height)
        canvas[r0:r1, :c1] = _resize(grid, r1 - r0, c1, Image.BICUBIC, box=box)
        for vessel in spec.vessels:
            draw_vessel(canvas, vessel, scale)
        for calc in spec.coarse_calcs:
            draw_coarse_calc(canvas, calc, scale)
        mass_boxes = [draw_mass(canvas, m, scale) for m in spec.masses]
        calc_boxes = [draw_cluster(canvas, c, scale) for c in spec.clusters]
        region = canvas[r0:r1, :c1]
        outside = _periphery(region, edge_px[r0:r1], width, scale)
        region *= 255.0
        if spec.noise > 0:
            tile = _noise_tile(spec.noise, height, width)
            oy, ox = spec.noise_offset % NOISE_MARGIN, (spec.noise_offset // NOISE_MARGIN) % NOISE_MARGIN
            region += tile[oy + r0:oy + r1, ox:ox + c1]
        else:
            region += 0.5
        np.clip(region, 0.0, 255.0, out=region)
        block = region.astype(np.uint8)
        block[outside] = 0
        out[r0:r1, :c1] = block
    if spec.laterality == "R":
        out = np.ascontiguousarray(out[:, ::-1])
        mass_boxes = [_mirror(b, width) for b in mass_boxes]
        calc_boxes = [_mirror(b, width) for b in calc_boxes]
    return Rendered(out, mass_boxes, calc_boxes)


def _periphery(region: np.ndarray, edge_px: np.ndarray, width: int, scale: float) -> np.ndarray:
    """Thin the breast towards the skin, add the skin line and cut the silhouette, in place.

    Only a band of fixed width inside the skin is touched (gathered, changed, scattered back);
    deeper tissue is at full thickness already. Returns the boolean mask of the pixels whose
    centre lies outside the breast, which the caller sets to zero after adding noise.
    """
    n_rows, n_cols = region.shape
    ramp = PERIPHERY_RAMP * width
    band = int(math.ceil(ramp)) + 3
    start = np.clip(np.floor(edge_px - ramp).astype(np.int64) - 1, 0, None)  # (n_rows,)
    cols = start[:, None] + np.arange(band)[None, :]  # (n_rows, band)
    cols = np.minimum(cols, n_cols - 1)
    rows = np.arange(n_rows)[:, None]
    depth = edge_px[:, None] - (cols + 0.5).astype(np.float32)
    thick = np.clip(depth * (1.0 / ramp), 0.0, 1.0)
    skin_w = max(1.5 * scale, 1.0)
    skin = SKIN_LEVEL * np.clip(1.0 - np.abs(depth - skin_w) / skin_w, 0.0, 1.0)
    values = region[rows, cols] * (0.55 + 0.45 * thick * (2.0 - thick)) + skin
    region[rows, cols] = values * np.clip(depth, 0.0, 1.0)
    return (np.arange(n_cols, dtype=np.float32) + 0.5)[None, :] >= edge_px[:, None]


@functools.lru_cache(maxsize=4)
def _noise_tile(sigma: float, height: int, width: int) -> np.ndarray:
    """Uniform noise of standard deviation ``sigma`` (+0.5 for rounding), shared by all images.

    Drawing fresh per-pixel noise for every image would cost more than the rest of the image;
    each image instead reads this tile at its own offset (up to ``NOISE_MARGIN`` pixels).
    """
    rng = np.random.default_rng(np.random.SeedSequence([height, width, 0x6E6F697365]))
    tile = rng.random((height + NOISE_MARGIN, width + NOISE_MARGIN), dtype=np.float32)
    tile -= 0.5
    tile *= np.float32(sigma * math.sqrt(12.0))
    tile += 0.5
    return tile
