"""Collect everything the page shows into one JSON-ready dict (`collect`), from the stage files
(`dashboard.inputs`) and one vectorised pass over the cache (`dashboard.latents`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammosae_jax.dashboard import inputs
from mammosae_jax.dashboard.encode import colour_lut, quantise_grids, rounded, thumbnail_uri
from mammosae_jax.dashboard.latents import (Firing, TopImages, all_latents_encoder, concept_class_means,
                                            firing_stats, single_latent_attribution, top_images)
from mammosae_jax.viz.galleries import LatentScan, cell_box, patch_window, scan_cache
from mammosae_jax.viz.localization import clip_boxes


class DashboardError(ValueError):
    """Bad input to the dashboard (the command reports it as one line)."""


@dataclass(frozen=True)
class DashboardConfig:
    """Settings of one dashboard (each is a flag of the dashboard command)."""

    run: str
    """SAE run folder (or .safetensors / reference .pt)."""
    cache: str
    """Feature cache folder."""
    out: str
    """The HTML file to write."""
    analysis: str | None = None
    """Folder of the concept stages' outputs (default: the run folder's parent, the demo's layout)."""
    images: str | None = None
    """PNG root ``<images>/<patient_id>/<image_id>`` (default: ANALYSIS/data/images_png when present)."""
    csv: str | None = None
    """VinDr CSV with the boxes (default: ANALYSIS/data/vindr_detection_v1_folds.csv, else the cache's rows)."""
    top_images: int = 6
    """Top-activating images per latent on its card."""
    localise_top: int = 32
    """Class-1 latents per concept scored against the boxes here, beside those `visualize` scored."""
    window: int = 192
    """Gallery patch side in PNG pixels (as `visualize --window`)."""
    batch_size: int = 8
    progress: bool = True

    @property
    def analysis_dir(self) -> Path:
        return Path(self.analysis) if self.analysis else Path(self.run).resolve().parent

    def images_dir(self) -> Path | None:
        path = Path(self.images) if self.images else self.analysis_dir / "data" / "images_png"
        return path if path.is_dir() else None

    def csv_path(self) -> str | None:
        path = Path(self.csv) if self.csv else self.analysis_dir / "data" / "vindr_detection_v1_folds.csv"
        return str(path) if path.is_file() else None


def _visualize_cfg(cfg: DashboardConfig, label: str, out: str, latents: tuple[int, ...] = ()):
    from mammosae_jax.viz.localize_run import VisualizeConfig

    return VisualizeConfig(cache=cfg.cache, images=str(cfg.images_dir()), sae=cfg.run, out=out, label=label,
                           csv=cfg.csv_path(), latents=latents, n_images=0, gallery_size=0,
                           batch_size=cfg.batch_size, progress=cfg.progress)


def localise(cfg: DashboardConfig, cache: Any, sae: Any, scan: LatentScan, label: str,
             latents: list[int]) -> dict[int, dict[str, float]]:
    """Hit rate, mean max IoU and AP of `latents`, scored as `visualize` scores them, from the scan."""
    from mammosae_jax.viz.localize_run import VisualizeError, score_latents

    if not latents or cfg.images_dir() is None:
        return {}
    sub = LatentScan(scan.mean_NL[:, latents], scan.max_NL[:, latents], None)
    try:
        table = score_latents(_visualize_cfg(cfg, label, "", tuple(latents)), cache, sae, latents, sub)
    except VisualizeError:
        return {}
    return inputs.localisation_scores(table.to_dict("records"))


def _concept_columns(cfg: DashboardConfig, cache: Any, sae: Any, scan: Any, fire: Firing,
                     label: str) -> tuple[dict[str, list], dict[str, Any]]:
    """The table columns of one concept and its overview entry."""
    analysis, lat = cfg.analysis_dir, fire.latents
    ranking = inputs.ranking_of(analysis, label, int(sae.config.n_latents))
    means = concept_class_means(cache, scan, lat, label)
    attribution = single_latent_attribution(cache, sae, scan, lat, inputs.head_of(analysis, label), label)
    scored = inputs.localisation(analysis, label)
    firing = set(lat.tolist())
    order = [int(j) for j in ranking.order_Cn[1] if int(j) in firing]
    extra = [j for j in order[: cfg.localise_top] if j not in scored]
    scored = {**localise(cfg, cache, sae, scan, label, extra), **scored}
    loc = {key: [scored.get(int(j), {}).get(key) for j in lat] for key in ("hit", "iou", "ap")}
    columns = {f"score:{label}": rounded(ranking.importance_Cn[1][lat]), f"m0:{label}": rounded(means[0]),
               f"m1:{label}": rounded(means[1]), f"dauc:{label}": rounded(attribution.ablated_auroc - attribution.sae_auroc),
               **{f"{k}:{label}": v for k, v in loc.items()}}
    overview = {"curves": inputs.curves(analysis, label), "metrics": inputs.head_metrics(analysis, label),
                "sae_auroc_test_rows": attribution.sae_auroc, "n_localised": len(scored)}
    return columns, overview


def _image_entries(cfg: DashboardConfig, cache: Any, images: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Thumbnail, size, identifiers, labels and (clipped) ground-truth boxes of each shown image."""
    from mammosae_jax.viz.localize_run import gt_boxes_by_image, png_of, row_table

    folder = cfg.images_dir()
    if folder is None:
        return {}
    boxes = {}
    for label in labels:
        try:
            boxes[label] = gt_boxes_by_image(row_table(_visualize_cfg(cfg, label, ""), cache), label, images)
        except ValueError:  # no row table with boxes: the cards show no boxes
            boxes[label] = {}
    meta = cache.labels
    out = {}
    for i in images:
        uri, hw = thumbnail_uri(png_of(cache, str(folder), int(i)))
        row = meta.iloc[int(i)]
        out[str(int(i))] = {
            "uri": uri, "hw": list(hw), "id": str(row["image_id"]), "split": str(row["split"]),
            "labels": {lab: int(row[lab]) for lab in labels if lab in meta.columns},
            "boxes": {lab: rounded(clip_boxes(b[int(i)], hw), 6) for lab, b in boxes.items() if int(i) in b}}
    return out


def _cards(cache: Any, top: TopImages, image_hw: dict[int, tuple[int, int]], window: int) -> dict[str, Any]:
    """Per latent: top images with their grids (quantised), patch windows and peak cells."""
    grids, scale = quantise_grids(top.grids)
    grid_hw = tuple(cache.grid)
    win, cell = [], []
    for img_T, row_T, col_T in zip(top.image, top.row, top.col):
        win.append([list(patch_window(int(r), int(c), grid_hw, image_hw[int(i)], window)) if i >= 0 else None
                    for i, r, c in zip(img_T, row_T, col_T)])
        cell.append([rounded(cell_box(int(r), int(c), grid_hw, image_hw[int(i)]), 6) if i >= 0 else None
                     for i, r, c in zip(img_T, row_T, col_T)])
    return {"img": top.image.tolist(), "val": rounded(top.value), "win": win, "cell": cell,
            "grids": grids, "gscale": rounded(scale)}


def collect(cfg: DashboardConfig) -> dict[str, Any]:
    """Everything the page embeds; raises DashboardError on inputs it cannot use."""
    from cache import open_cache

    from mammosae_jax.models.sae_io import load_sae

    cache, sae = open_cache(cfg.cache), load_sae(cfg.run)
    if sae.d_in != cache.dim:
        raise DashboardError(f"the SAE reads {sae.d_in}-dim features but the cache holds {cache.dim}-dim ones")
    analysis = cfg.analysis_dir
    labels = inputs.concepts_of(analysis, list(cache.label_names))
    encode = all_latents_encoder(sae)
    scan = scan_cache(cache, encode, int(sae.config.n_latents), top_n=cfg.top_images, batch_size=cfg.batch_size,
                      progress=cfg.progress)
    fire = firing_stats(scan)
    if not len(fire.latents):
        raise DashboardError("no latent fires on any position of the cache")
    top = top_images(cache, encode, scan, fire.latents, cfg.batch_size, cfg.progress)
    shown = np.unique(top.image[top.image >= 0])
    images = _image_entries(cfg, cache, shown, labels)
    image_hw = {int(k): tuple(v["hw"]) for k, v in images.items()} or {int(i): (1, 1) for i in shown}
    names = inputs.names(analysis)
    firing = set(fire.latents.tolist())
    table: dict[str, list] = {"id": fire.latents.tolist(), "freq": rounded(fire.frequency), "mean": rounded(fire.mean),
                              "max": rounded(fire.max),
                              "name": [names[int(j)][0][0] if int(j) in names else "" for j in fire.latents]}
    concepts = {}
    for label in labels:
        columns, concepts[label] = _concept_columns(cfg, cache, sae, scan, fire, label)
        table.update(columns)
    return {
        "meta": {"run": str(cfg.run), "cache": str(cfg.cache), "analysis": str(analysis), "n_images": len(cache),
                 "n_latents": int(sae.config.n_latents), "n_firing": int(len(fire.latents)),
                 "grid": list(cache.grid), "top_images": cfg.top_images},
        "overview": {"config": inputs.run_config(Path(cfg.run)), "reconstruction": inputs.reconstruction(analysis, labels),
                     "gates": inputs.gates(analysis), "comparison": inputs.comparison(analysis, labels),
                     "concepts": concepts},
        "labels": labels,
        "table": table,
        "hist": {"counts": fire.hist_counts.tolist(), "max": rounded(fire.hist_max)},
        "cards": _cards(cache, top, image_hw, cfg.window),
        "names": {str(j): v for j, v in names.items() if j in firing},
        "images": images,
        "lut": colour_lut(),
    }
