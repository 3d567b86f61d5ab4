"""One self-contained HTML page to browse an SAE run's latents (works offline, from file://).

    python -m mammosae_jax.dashboard --run RUN_DIR --cache CACHE [--analysis DIR] --out report.html

The overview shows the run's config, reconstruction metrics, the demo's gates, the top-k
intervention curves per concept and the linear-probe comparison when present; the table lists
every latent that fires (sortable, filterable, paginated); a card (click a row, or open
``report.html#latent=N``) shows its name, class means, histogram, top images with the heatmap
and the ground-truth boxes, top patches, localisation scores and single-latent attribution.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from cache.cli_errors import cli_main, print_error
from cache.config_options import add_config_options, config_from_args
from mammosae_jax.dashboard.build import DashboardConfig, DashboardError, collect
from mammosae_jax.dashboard.page import write_page

REQUIRED = ("run", "cache", "out")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (one flag per `DashboardConfig` field)."""
    p = argparse.ArgumentParser(prog="python -m mammosae_jax.dashboard", description=__doc__.split("\n\n")[0],
                                epilog="Reads the files the train, fit_head, evaluate, concepts, intervene, visualize "
                                       "and name_latents stages wrote under --analysis; whatever is missing is left out.")
    add_config_options(p, DashboardConfig, overrides={name: {"required": True} for name in REQUIRED})
    return p


def _known_errors() -> tuple[type[BaseException], ...]:
    from cache import CacheError
    from mammosae_jax.analysis.heads import HeadError
    from mammosae_jax.analysis.ranking import RankingError
    from mammosae_jax.formats.common import FormatError

    return DashboardError, CacheError, FormatError, RankingError, HeadError, FileNotFoundError


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; bad input prints one ``error:`` line and exits with status 2."""
    args = build_parser().parse_args(argv)
    cfg = config_from_args(DashboardConfig, args)
    for name in ("top_images", "window", "batch_size"):
        if getattr(cfg, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if cfg.localise_top < 0:
        print("error: --localise-top must be 0 or more", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        data = collect(cfg)
    except _known_errors() as e:
        print_error(e)
        return 2
    path = write_page(data, cfg.out, title=f"SAE latents — {data['meta']['run']}")
    size_mb = path.stat().st_size / 1e6
    print(f"{data['meta']['n_firing']} firing latents of {data['meta']['n_latents']}, {len(data['images'])} images "
          f"embedded; {size_mb:.1f} MB in {time.perf_counter() - started:.0f} s")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
