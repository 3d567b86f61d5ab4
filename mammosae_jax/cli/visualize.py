"""Latent heatmaps vs ground-truth boxes: figures, localisation scores and patch galleries.

    python -m mammosae_jax.visualize --cache CACHE --csv CSV --images DIR --sae SAE \\
        (--ranking DIR --label L --top 10 | --latents 13867,15699) [--class 1] [--n-images 11] \\
        [--threshold 0.3] [--percentile 95] [--split test] --out DIR

What it computes (see ``localization`` for the exact rules):

* heatmap of latent j on image i: its cached-grid activation map, upsampled bilinearly
  (half-pixel centres) to the PNG, not normalised;
* ground truth: the ``resized_*`` boxes of the image's rows with ``label == 1``, clipped to the PNG;
* per (latent, image) over every ground-truth image of the split, for both box rules
  (``threshold``: > t * max, the reference; ``percentile``: > q-th percentile): predicted boxes,
  best IoU, pointing-game hit, box precision / recall at IoU 0.3 and 0.5;
* per latent: means / pooled ratios of those, and AP: every image of the split (with or without
  findings) ranked by the latent's activation (``--rank-by`` mean or max over the grid); a true
  positive is a ground-truth image whose best predicted box has IoU >= ``--ap-iou`` (0.3) with a
  ground-truth box; recall is over all ground-truth images. mAP = mean AP over the chosen latents.

Outputs in ``--out``: ``localization.json`` (the reference's ``image_wise_results`` layout plus
the scores), ``latent_scores.csv`` (one row per latent and rule; also printed), ``summary.json``
(settings, mAP), ``images/<image>/latent=<j>.png``, ``summary_grid.png``, ``galleries/latent=<j>.png``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import pandas as pd


RULES = ("threshold", "percentile")
BOX_COLUMNS = ("resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax")

from mammosae_jax.viz.localize_run import VisualizeConfig, VisualizeError, run
from mammosae_jax.cli.options import non_negative_int, positive_int
from cache.cli_errors import cli_main, print_error
from cache.lock import lock_output


def _latent_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated latent indices, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one latent index")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m mammosae_jax.visualize",
        description="Heatmaps of SAE latents on mammograms, scored against the ground-truth boxes "
                    "(IoU, pointing game, box precision/recall, AP/mAP), with patch galleries.",
        epilog="Writes localization.json, latent_scores.csv, summary.json, summary_grid.png, "
               "images/<image>/latent=<j>.png and galleries/latent=<j>.png under --out.")
    p.add_argument("--cache", required=True, help="feature cache folder")
    p.add_argument("--images", required=True, help="PNG root: <images>/<patient_id>/<image_id>")
    p.add_argument("--sae", required=True, help="SAE: run folder, .safetensors (+cfg.json) or reference .pt")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--csv", help="VinDr CSV with resized_* boxes (default: the cache's row table)")
    p.add_argument("--label", default="Suspicious_Calcification",
                   help="binary label whose boxes are the ground truth (default: %(default)s)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ranking", metavar="DIR", help="folder with top_k_concepts_class={c}_{label}[_suffix].json files")
    which.add_argument("--latents", metavar="J1,J2,...", type=_latent_list, help="comma-separated latent indices, e.g. 13867,15699")
    p.add_argument("--ranking-suffix", help="ranking file suffix (e.g. finetuned) if the folder holds several")
    p.add_argument("--top", type=positive_int, default=10, help="top-ranked latents to study (default: %(default)s)")
    p.add_argument("--class", dest="cls", metavar="C", type=int, default=1, help="ranking class (default: %(default)s)")
    p.add_argument("--n-images", type=non_negative_int, default=11,
                   help="ground-truth images to draw; all are scored (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.3,
                   help="reference box rule: heatmap > threshold * max (default: %(default)s)")
    p.add_argument("--percentile", type=float, default=95.0,
                   help="percentile box rule: heatmap > this percentile (default: %(default)s)")
    p.add_argument("--split", default="test", help="split to score and draw (default: %(default)s)")
    p.add_argument("--rank-by", choices=("mean", "max"), default="mean",
                   help="image score that ranks images for AP (default: %(default)s)")
    p.add_argument("--ap-iou", type=float, default=0.3,
                   help="IoU a ground-truth image's best box needs to be an AP hit (default: %(default)s)")
    p.add_argument("--gallery-size", type=non_negative_int, default=16, help="patches per gallery (default: %(default)s)")
    p.add_argument("--window", type=positive_int, default=192, help="gallery patch side in pixels (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per cache batch (default: %(default)s)")
    return p


def config_from_args(args: argparse.Namespace) -> VisualizeConfig:
    """A ``VisualizeConfig`` from parsed CLI arguments."""
    return VisualizeConfig(cache=args.cache, images=args.images, sae=args.sae, out=args.out, label=args.label,
                           csv=args.csv, ranking=args.ranking, ranking_suffix=args.ranking_suffix, top=args.top,
                           latents=args.latents or (), cls=args.cls, n_images=args.n_images,
                           threshold=args.threshold, percentile=args.percentile, split=args.split,
                           rank_by=args.rank_by, ap_iou=args.ap_iou, gallery_size=args.gallery_size,
                           window=args.window, batch_size=args.batch_size)


def _known_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [VisualizeError, FileNotFoundError]
    try:
        from cache import CacheError

        errors.append(CacheError)
    except ImportError:  # pragma: no cover
        pass
    from mammosae_jax.formats.common import FormatError
    from mammosae_jax.analysis.ranking import RankingError

    errors += [FormatError, RankingError]
    return tuple(errors)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; bad input prints one ``error:`` line and exits with status 2."""
    args = build_parser().parse_args(argv)
    try:
        lock_output(args.out)  # held until main returns
        result = run(config_from_args(args))
    except _known_errors() as e:
        print_error(e)
        sys.exit(2)
    with pd.option_context("display.width", 160, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print(result.table.to_string(index=False))
    print(f"mAP over {len(result.latents)} latents ({result.n_positive} ground-truth images): "
          + ", ".join(f"{r} rule {m:.3f}" for r, m in result.map_by_rule.items()))
    print(f"wrote {result.out}")
    return 0


if __name__ == "__main__":
    main()
