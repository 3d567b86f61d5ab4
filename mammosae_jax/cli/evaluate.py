"""Evaluate a concept head on raw features and through an SAE.

    python -m mammosae_jax.evaluate --cache CACHE --sae SAE [--head HEAD] [--per row|image|both] --out DIR

Three feature sets, each pooled and fed to the head:

* ``raw``: the cached pooled features;
* ``sae``: the SAE reconstruction, error term dropped (what the reference evaluated);
* ``sae+error``: reconstruction plus the pooled error term (equals ``raw`` up to rounding and the
  cache's storage dtype: a check that nothing is lost on the way).

The pooled reconstruction is computed as ``decode(zbar)``: the decoder is affine, so the mean of
the decoded positions equals the decoding of the mean latent vector exactly. Metrics per CSV row
(reference parity) and per image (label = max over rows); reconstruction quality over every
position. Writes ``DIR/evaluation_{label}.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mammosae_jax.analysis.concept_data import ConceptError, write_json
from mammosae_jax.analysis.evaluation import evaluate, format_table, resolve_head
from mammosae_jax.analysis.heads import HeadError
from mammosae_jax.analysis.metrics import MetricsError
from mammosae_jax.cli.options import positive_int
from cache.cli_errors import cli_main, print_error
from cache.lock import lock_output


@cli_main
def main(argv: list[str] | None = None) -> None:
    from cache import CacheError, open_cache

    from mammosae_jax.formats.common import FormatError
    from mammosae_jax.models.sae_io import load_sae

    p = argparse.ArgumentParser(prog="python -m mammosae_jax.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="feature cache folder")
    p.add_argument("--sae", required=True, help="SAE: run folder, .safetensors or reference .pt")
    p.add_argument("--head", help="concept head .safetensors (default: the head stored in the cache)")
    p.add_argument("--label", help="label column to evaluate against (default: the head's label)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--per", choices=("row", "image", "both"), default="both",
                   help="metric units: CSV rows (reference parity), images (max over rows) or both (default)")
    p.add_argument("--batch-size", type=positive_int, default=2, help="images encoded per step (default 2)")
    p.add_argument("--out", required=True, help="output folder for evaluation_{label}.json")
    a = p.parse_args(argv)
    try:
        lock_output(a.out)  # held until main returns
        cache = open_cache(a.cache)
        head, label = resolve_head(cache, a.head, a.label)
        sae = load_sae(a.sae)
        pers = ("row", "image") if a.per == "both" else (a.per,)
        ev = evaluate(cache, sae, head, label, split=a.split, pers=pers, batch_size=a.batch_size)
        out = Path(a.out) / f"evaluation_{label}.json"
        write_json(out, {"label": ev.label, "split": ev.split, "n_images": ev.n_images, "head": a.head or "cache",
                         "sae": str(a.sae), "metrics": ev.metrics, "reconstruction": ev.reconstruction._asdict()})
        print(format_table(ev))
        print(f"wrote {out}")
    except (ConceptError, HeadError, MetricsError, CacheError, FormatError) as e:
        print_error(e)
        sys.exit(2)


if __name__ == "__main__":
    main()
