"""One visualize run: latent heatmaps vs ground-truth boxes, localisation scores, figures and
galleries (`run(VisualizeConfig)`). The rules are in `viz.localization`; the command is
`mammosae_jax.cli.visualize`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from mammosae_jax.viz import heatmap_figures as figs
from cache.atomic import write_text_atomic
from mammosae_jax.viz.galleries import LatentScan, cell_box, patch_window, scan_cache
from mammosae_jax.viz.image_checks import png_size_problem, unreadable_png
from mammosae_jax.viz.heatmaps import latent_encoder, latent_maps, upsample_bilinear
from mammosae_jax.viz.localization import (IOU_THRESHOLDS, LatentSummary, PairScores, clip_boxes,
                                       localization_ap, percentile_boxes, score_pair, summarize,
                                       threshold_boxes)

RULES = ("threshold", "percentile")
BOX_COLUMNS = ("resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax")


class VisualizeError(ValueError):
    """Bad input to a visualize run (the command reports it as one line)."""


@dataclass(frozen=True)
class VisualizeConfig:
    """Settings of one visualize run (each is a flag of the visualize command)."""

    cache: str
    """Feature cache folder."""
    images: str
    """PNG root: ``<images>/<patient_id>/<image_id>``."""
    sae: str
    """SAE run folder, .safetensors or reference .pt."""
    out: str
    """Output folder."""
    label: str = "Suspicious_Calcification"
    """Binary label column whose boxes are the ground truth (and whose ranking is read)."""
    csv: str | None = None
    """VinDr CSV with the boxes; None = the row table stored in the cache."""
    ranking: str | None = None
    """Folder of ``top_k_concepts_class=*`` files (with ``top``)."""
    ranking_suffix: str | None = None
    """Which ranking files (e.g. ``finetuned``) when the folder holds several."""
    top: int = 10
    """Number of top-ranked latents."""
    latents: tuple[int, ...] = ()
    """Explicit latents (instead of a ranking)."""
    cls: int = 1
    """Class whose ranking is used."""
    n_images: int = 11
    """Ground-truth images drawn (the first of the split in cache order); all are scored."""
    threshold: float = 0.3
    """Reference box rule: heatmap > threshold * max."""
    percentile: float = 95.0
    """Percentile box rule: heatmap > this percentile of the map."""
    split: str = "test"
    """Split whose images are scored and drawn."""
    rank_by: str = "mean"
    """Image score for AP: the latent's spatial 'mean' or 'max' activation."""
    ap_iou: float = 0.3
    """IoU a ground-truth image's best box needs to count as a true positive in AP."""
    gallery_size: int = 16
    """Patches per gallery."""
    window: int = 192
    """Gallery patch side in PNG pixels."""
    batch_size: int = 8
    """Images per batch when streaming the cache."""
    progress: bool = True


class Result(NamedTuple):
    """What ``run`` produced."""

    latents: list[int]
    table: pd.DataFrame  # one row per (latent, rule)
    map_by_rule: dict[str, float]
    n_positive: int
    out: Path


# ---------------------------------------------------------------- inputs

def choose_latents(cfg: VisualizeConfig, n_latents: int) -> tuple[list[int], list[float | None]]:
    """The latents to study and their ranking importance (None for explicit latents)."""
    if cfg.latents:
        bad = [j for j in cfg.latents if not 0 <= j < n_latents]
        if bad:
            raise VisualizeError(f"latent {bad[0]} is out of range: the SAE has {n_latents} latents")
        return list(cfg.latents), [None] * len(cfg.latents)
    if cfg.ranking is None:
        raise VisualizeError("give --ranking DIR (with --top) or --latents j1,j2,...")
    from mammosae_jax.analysis.ranking import read_ranking

    ranking = read_ranking(cfg.ranking, cfg.label, suffix=cfg.ranking_suffix, n_latents=n_latents)
    if not 0 <= cfg.cls < ranking.n_classes:
        raise VisualizeError(f"--class {cfg.cls}: the '{cfg.label}' ranking has classes 0..{ranking.n_classes - 1}")
    order = ranking.order_Cn[cfg.cls, : cfg.top]
    return [int(j) for j in order], [float(ranking.importance_Cn[cfg.cls, j]) for j in order]


def row_table(cfg: VisualizeConfig, cache: Any) -> pd.DataFrame:
    """Rows with ``image_index`` (into the cache), the label and the resized boxes."""
    if cfg.csv is not None:
        from cache.vindr import load_annotations

        rows = load_annotations(cfg.csv)
        index = {str(iid): i for i, iid in enumerate(cache.labels["image_id"])}
        rows = rows.assign(image_index=rows["image_id"].map(index))
        rows = rows[rows["image_index"].notna()].astype({"image_index": np.int64})
        source = cfg.csv
    else:
        rows = cache.rows
        source = "the cache's row table (pass --csv to read boxes from the VinDr CSV)"
    if rows is None:
        raise VisualizeError("the cache stores no row table; pass --csv")
    missing = [c for c in (cfg.label, *BOX_COLUMNS) if c not in rows.columns]
    if missing:
        raise VisualizeError(f"{source} has no column(s) {', '.join(missing)}")
    return rows


def gt_boxes_by_image(rows: pd.DataFrame, label: str, images: np.ndarray) -> dict[int, np.ndarray]:
    """Unclipped resized boxes of the rows with ``label == 1``, per cache image in ``images``."""
    wanted = set(int(i) for i in images)
    keep = (pd.to_numeric(rows[label], errors="coerce") == 1) & rows["image_index"].isin(wanted)
    sel = rows[keep]
    boxes = sel[list(BOX_COLUMNS)].to_numpy(np.float64)
    finite = np.isfinite(boxes).all(axis=1)
    out: dict[int, list[np.ndarray]] = {}
    for i, box in zip(sel["image_index"].to_numpy()[finite], boxes[finite]):
        out.setdefault(int(i), []).append(box)
    return {i: np.asarray(b) for i, b in sorted(out.items())}


def png_of(cache: Any, images_dir: str, i: int) -> Path:
    """PNG path of cache image ``i`` (``<images>/<patient_id>/<image_id>``)."""
    from cache.vindr import png_path

    meta = cache.labels.iloc[int(i)]
    path = png_path(images_dir, {"patient_id": meta["patient_id"], "image_id": meta["image_id"]})
    if not path.is_file():
        raise VisualizeError(f"image not found: {path}")
    return path


# ---------------------------------------------------------------- outputs

def _clean(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, NaN to None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    return value


def pair_record(scores: PairScores, prefix: str = "") -> dict[str, Any]:
    """The score fields of one (latent, image, rule) in ``localization.json``."""
    rec: dict[str, Any] = {f"{prefix}max_iou": scores.max_iou}
    for t, m in zip(IOU_THRESHOLDS, scores.matches):
        rec[f"{prefix}precision@{t:g}"] = m.precision
        rec[f"{prefix}recall@{t:g}"] = m.recall
    return rec


def summary_row(latent: int, rank: int, importance: float | None, rule: str, s: LatentSummary) -> dict[str, Any]:
    """One line of the per-latent table."""
    row: dict[str, Any] = {"rank": rank, "latent": latent, "importance": importance, "rule": rule,
                           "n_images": s.n_images, "mean_max_iou": s.mean_max_iou, "hit_rate": s.hit_rate}
    for t, p, r in zip(IOU_THRESHOLDS, s.precision, s.recall):
        row[f"precision@{t:g}"] = p
        row[f"recall@{t:g}"] = r
    row["boxes_per_image"] = s.mean_boxes
    row["ap"] = s.ap
    return row


# ---------------------------------------------------------------- the run

class Truth(NamedTuple):
    """A ground-truth image of the split."""

    png: Path
    image_hw: tuple[int, int]
    boxes: np.ndarray  # (n >= 1, 4) resized boxes clipped to the PNG


class Scored(NamedTuple):
    """Per-(latent, image) scores of the ground-truth images, and what the figures need."""

    pairs: dict[str, list[list[PairScores]]]  # rule -> latent -> one PairScores per ground-truth image
    records: list[dict[str, Any]]  # localization.json entries, one per ground-truth image
    views: list[figs.GridView]  # the drawn images, for the summary grid


def ground_truth(cfg: VisualizeConfig, cache: Any, split_idx: np.ndarray) -> dict[int, Truth]:
    """Ground-truth images of the split (cache order) with their boxes clipped to the PNG.

    A box that falls entirely outside the PNG is dropped; an image left without boxes is not a
    ground-truth image.
    """
    truth = {}
    for i, raw in gt_boxes_by_image(row_table(cfg, cache), cfg.label, split_idx).items():
        png = png_of(cache, cfg.images, i)
        try:
            hw = figs.image_hw(png)
        except OSError as e:
            raise VisualizeError(f"cannot read {png} ({e}); restore the PNG and rerun") from None
        if (problem := png_size_problem(png, hw, cache)) is not None:
            raise VisualizeError(problem)
        boxes = clip_boxes(raw, hw)
        if len(boxes):
            truth[i] = Truth(png, hw, boxes)
    if not truth:
        raise VisualizeError(f"no image of split '{cfg.split}' has a {cfg.label} box")
    return truth


def score_images(cfg: VisualizeConfig, cache: Any, encode, latents: list[int], truth: dict[int, Truth],
                 scan: LatentScan, out: Path) -> Scored:
    """Score every ground-truth image; draw the first ``cfg.n_images`` of them."""
    pairs: dict[str, list[list[PairScores]]] = {r: [[] for _ in latents] for r in RULES}
    records, views = [], []
    drawn = set(list(truth)[: cfg.n_images])
    logits, head = cache.logits(), cache.head()
    for i, t in tqdm(truth.items(), desc="scoring ground-truth images", unit="img", disable=not cfg.progress):
        name = str(cache.labels["image_id"].iloc[i])
        grids_LHW = latent_maps(encode, cache.feature_map(i))
        heats_LHW = upsample_bilinear(grids_LHW, t.image_hw)
        entry: dict[str, Any] = {}
        by_latent = []
        for li, j in enumerate(latents):
            heat = heats_LHW[li]
            thr = score_pair(heat, threshold_boxes(heat, cfg.threshold), t.boxes)
            pct = score_pair(heat, percentile_boxes(heat, cfg.percentile), t.boxes)
            pairs["threshold"][li].append(thr)
            pairs["percentile"][li].append(pct)
            by_latent.append(thr)
            entry[f"concept_{j}"] = {
                "gt_boxes": t.boxes, "pred_boxes": thr.pred_boxes, "mean_act": float(scan.mean_NL[i, li]),
                "max_act": float(scan.max_NL[i, li]), "hit": thr.hit, **pair_record(thr),
                "pred_boxes_percentile": pct.pred_boxes, **pair_record(pct, "percentile_")}
        entry["agg"] = _agg(cache, i, cfg.label, logits, head)
        records.append({name: entry})
        if i in drawn:
            views.append(_draw_image(cfg, out, name, t, grids_LHW, latents, by_latent, scan.mean_NL[i], scan.max_NL[i]))
    return Scored(pairs, records, views)


def _draw_image(cfg: VisualizeConfig, out: Path, name: str, t: Truth, grids_LHW: np.ndarray, latents: list[int],
                scores: list[PairScores], mean_L: np.ndarray, max_L: np.ndarray) -> figs.GridView:
    """One figure per latent for this image; returns its column of the summary grid."""
    disp_hw = figs.display_hw(t.image_hw)
    grey = figs.shrink_grey(figs.read_grey(t.png), disp_hw)
    disp_LHW = upsample_bilinear(grids_LHW, disp_hw)  # straight from the grid to display size
    for li, j in enumerate(latents):
        figs.plot_image_latent(out / "images" / Path(name).stem / f"latent={j}.png", grey, disp_LHW[li],
                               t.image_hw, t.boxes, scores[li].pred_boxes, latent=j, image_name=name,
                               label=cfg.label, mean_act=float(mean_L[li]), max_act=float(max_L[li]),
                               threshold=cfg.threshold, max_iou=scores[li].max_iou, hit=scores[li].hit)
    return figs.GridView(name, t.image_hw, grey, list(disp_LHW), t.boxes, [s.pred_boxes for s in scores])


def latent_table(cfg: VisualizeConfig, latents: list[int], importance: list[float | None], scored: Scored,
                 scan: LatentScan, split_idx: np.ndarray, truth: dict[int, Truth]) -> tuple[pd.DataFrame, dict]:
    """The per-(latent, rule) table and mAP per rule."""
    rank_NL = scan.mean_NL if cfg.rank_by == "mean" else scan.max_NL
    positive_mask = np.isin(split_idx, list(truth))
    rows, aps = [], {r: [] for r in RULES}
    for li, j in enumerate(latents):
        for r in RULES:
            ious = np.array([p.max_iou for p in scored.pairs[r][li]])
            ap = localization_ap(rank_NL[split_idx, li], positive_mask, ious, cfg.ap_iou)
            aps[r].append(ap)
            rows.append(summary_row(j, li, importance[li], r, summarize(scored.pairs[r][li], ap)))
    return pd.DataFrame(rows), {r: float(np.nanmean(aps[r])) for r in RULES}


def score_latents(cfg: VisualizeConfig, cache: Any, sae: Any, latents: list[int], scan: LatentScan) -> pd.DataFrame:
    """The per-(latent, rule) table of `latents` on the split's ground-truth images, from their
    columns of an existing cache scan; nothing drawn or written (the dashboard's scores)."""
    split_idx = np.asarray(cache.split_indices(cfg.split), np.int64)
    truth = ground_truth(cfg, cache, split_idx)
    scored = score_images(replace(cfg, n_images=0), cache, latent_encoder(sae, latents), latents, truth, scan,
                          Path(cfg.out))
    return latent_table(cfg, latents, [None] * len(latents), scored, scan, split_idx, truth)[0]


def run(cfg: VisualizeConfig) -> Result:
    """Score and draw the chosen latents; see the module docstring."""
    from cache import open_cache

    from mammosae_jax.models.sae_io import load_sae

    if cfg.rank_by not in ("mean", "max"):
        raise VisualizeError(f"--rank-by must be 'mean' or 'max', got {cfg.rank_by!r}")
    if not 0 < cfg.threshold < 1:
        raise VisualizeError(f"--threshold must lie in (0, 1), got {cfg.threshold}")
    if not 0 <= cfg.percentile < 100:
        raise VisualizeError(f"--percentile must lie in [0, 100), got {cfg.percentile}")
    if cfg.n_images < 0 or cfg.top < 1 or cfg.gallery_size < 0 or cfg.window < 1 or cfg.batch_size < 1:
        raise VisualizeError("--n-images and --gallery-size must be >= 0; --top, --window and --batch-size >= 1")
    cache = open_cache(cfg.cache)
    sae = load_sae(cfg.sae)
    if sae.d_in != cache.dim:
        raise VisualizeError(f"the SAE reads {sae.d_in}-dim features but the cache holds {cache.dim}-dim ones")
    latents, importance = choose_latents(cfg, sae.n_latents)
    encode = latent_encoder(sae, latents)
    split_idx = np.asarray(cache.split_indices(cfg.split), np.int64)
    truth = ground_truth(cfg, cache, split_idx)

    scan = scan_cache(cache, encode, len(latents), top_n=cfg.gallery_size, batch_size=cfg.batch_size,
                      progress=cfg.progress)
    shown = list(truth)[: cfg.n_images] + ([int(i) for i, v in zip(scan.top.image_LN.ravel(), scan.top.value_LN.ravel())
                                            if i >= 0 and v > 0] if cfg.gallery_size else [])
    if (problem := unreadable_png(png_of(cache, cfg.images, i) for i in shown)) is not None:
        raise VisualizeError(problem)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    scored = score_images(cfg, cache, encode, latents, truth, scan, out)
    table, map_by_rule = latent_table(cfg, latents, importance, scored, scan, split_idx, truth)

    if scored.views:
        shown = [[scored.pairs["threshold"][li][k] for k in range(len(scored.views))] for li in range(len(latents))]
        figs.plot_summary_grid(out / "summary_grid.png", scored.views, latents,
                               np.array([[p.max_iou for p in row] for row in shown]),
                               np.array([[p.hit for p in row] for row in shown]),
                               label=cfg.label, threshold=cfg.threshold)
    if cfg.gallery_size:
        _write_galleries(out / "galleries", cache, cfg, latents, scan)
    write_text_atomic(out / "localization.json", json.dumps(_clean(scored.records), indent=1))
    write_text_atomic(out / "latent_scores.csv", table.to_csv(index=False))
    summary = {"settings": asdict(cfg), "latents": latents, "n_ground_truth_images": len(truth),
               "n_split_images": int(split_idx.size), "mAP": map_by_rule,
               "ap_definition": f"images of split '{cfg.split}' ranked by the latent's {cfg.rank_by} activation; "
                                f"true positive = ground-truth image whose best box has IoU >= {cfg.ap_iou}"}
    write_text_atomic(out / "summary.json", json.dumps(_clean(summary), indent=1))
    return Result(latents, table, map_by_rule, len(truth), out)


def _agg(cache: Any, i: int, label: str, logits: np.ndarray | None, head: Any) -> dict[str, Any]:
    """The reference's ``agg`` entry: image label and, if the cache's head is this label's, P(label)."""
    agg: dict[str, Any] = {"y_label": float(cache.labels[label].iloc[i]) if label in cache.labels else None}
    if logits is not None and head is not None and head.label == label and logits.shape[1] == 1:
        agg["y_pred"] = [float(1 / (1 + np.exp(-logits[i, 0])))]
    return agg


def _write_galleries(folder: Path, cache: Any, cfg: VisualizeConfig, latents: list[int], scan: LatentScan) -> None:
    grid_hw = tuple(cache.grid)
    for li, j in enumerate(tqdm(latents, desc="galleries", unit="latent", disable=not cfg.progress)):
        crops, cells, values, captions = [], [], [], []
        for v, i, r, c in zip(scan.top.value_LN[li], scan.top.image_LN[li], scan.top.row_LN[li], scan.top.col_LN[li]):
            if i < 0 or not v > 0:  # unused slot, or an image where the latent does not fire
                continue
            grey = figs.read_grey(png_of(cache, cfg.images, int(i)))
            x1, y1, x2, y2 = patch_window(int(r), int(c), grid_hw, grey.shape, cfg.window)
            cx1, cy1, cx2, cy2 = cell_box(int(r), int(c), grid_hw, grey.shape)
            crops.append(grey[y1:y2, x1:x2])
            cells.append((cx1 - x1, cy1 - y1, cx2 - x1, cy2 - y1))
            values.append(float(v))
            meta = cache.labels.iloc[int(i)]
            tag = f"\n{cfg.label.replace('_', ' ')} = {meta[cfg.label]}" if cfg.label in meta else ""
            captions.append(f"{figs.short_name(meta['image_id'])} · {meta['split']}{tag}")
        figs.plot_gallery(folder / f"latent={j}.png", crops, cells, values, captions, latent=j, n_scanned=len(cache))
