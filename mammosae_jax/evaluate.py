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
from typing import NamedTuple

import numpy as np

from mammosae_jax.concept_data import ConceptError, check_label, split_images, units, write_json
from mammosae_jax.heads import Head, HeadError, check_head_dim, head_from_cache, head_logits, load_head
from mammosae_jax.latent_stats import LatentMeans, ReconStats, stream_latent_means
from mammosae_jax.metrics import MetricsError, head_metrics, metrics_dict

CONDITIONS = ("raw", "sae", "sae+error")


class Evaluation(NamedTuple):
    label: str
    split: str
    n_images: int
    metrics: dict  # {per: {condition: {metric: value}, "n_units": int}}
    reconstruction: ReconStats


def condition_logits(pooled_NC: np.ndarray, means: LatentMeans, sae, head: Head) -> dict[str, np.ndarray]:
    """Head logits ``[N, K]`` of the raw pooled features, the reconstruction, and reconstruction + error."""
    xhat_NC = np.asarray(sae.decode(means.zbar_Nn), np.float64)
    err_NC = means.xbar_NC.astype(np.float64) - xhat_NC
    return {
        "raw": np.asarray(head_logits(head, pooled_NC)),
        "sae": head_logits(head, xhat_NC),
        "sae+error": head_logits(head, xhat_NC + err_NC),
    }


def resolve_head(cache, head_path: str | None, label: str | None) -> tuple[Head, str]:
    """The head (from a file or the cache) and the label it is evaluated on, checked against the cache."""
    head = load_head(head_path) if head_path else head_from_cache(cache)
    label = label or head.label
    check_label(cache, label)
    check_head_dim(head, cache.dim, what=f"cache's features ({cache.path})")
    return head, label


def check_sae_dim(sae, cache) -> None:
    if sae.config.d_in != cache.dim:
        raise ConceptError(f"the SAE takes {sae.config.d_in}-dim inputs but the cache's features have {cache.dim}")


def evaluate(cache, sae, head: Head, label: str, *, split: str = "test", pers=("row", "image"), batch_size: int = 2) -> Evaluation:
    """Metrics of ``head`` on a split for every condition and unit, plus reconstruction quality."""
    check_sae_dim(sae, cache)
    images = split_images(cache, split)
    means, recon = stream_latent_means(cache, sae, images, batch_size=batch_size, desc=f"encoding {split}")
    logits = condition_logits(cache.pooled()[images], means, sae, head)
    out: dict = {}
    for per in pers:
        u = units(cache, label, images, per)
        out[per] = {"n_units": int(len(u.labels_U)), "n_positive": int((u.labels_U > 0).sum())}
        for name, z in logits.items():
            out[per][name] = metrics_dict(head_metrics(u.labels_U, z[u.image_pos_U]))
    return Evaluation(label, split, int(len(images)), out, recon)


def format_table(ev: Evaluation) -> str:
    """Plain-text table: one line per (unit, condition)."""
    lines = []
    for per, block in ev.metrics.items():
        names = list(block["raw"])
        lines.append(f"{ev.label} / {ev.split} / per {per} ({block['n_units']} units, {block['n_positive']} positive)")
        lines.append(f"  {'features':<10}" + "".join(f"{n:>10}" for n in names))
        for cond in CONDITIONS:
            lines.append(f"  {cond:<10}" + "".join(f"{block[cond][n]:>10.4f}" for n in names))
    r = ev.reconstruction
    lines.append(
        f"reconstruction: mse={r.mse:.4g} fvu={r.fvu:.4f} l0={r.l0:.2f} dead={r.dead_fraction:.4f} "
        f"dense(>{r.dense_threshold:g})={r.dense_fraction:.4f} ever_active={r.n_ever_active} tokens={r.n_tokens}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from cache import CacheError, open_cache

    from mammosae_jax.formats.common import FormatError
    from mammosae_jax.io import load_sae

    p = argparse.ArgumentParser(prog="python -m mammosae_jax.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="feature cache folder")
    p.add_argument("--sae", required=True, help="SAE: run folder, .safetensors or reference .pt")
    p.add_argument("--head", help="concept head .safetensors (default: the head stored in the cache)")
    p.add_argument("--label", help="label column to evaluate against (default: the head's label)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--per", choices=("row", "image", "both"), default="both",
                   help="metric units: CSV rows (reference parity), images (max over rows) or both (default)")
    p.add_argument("--batch-size", type=int, default=2, help="images encoded per step (default 2)")
    p.add_argument("--out", required=True, help="output folder for evaluation_{label}.json")
    a = p.parse_args(argv)
    try:
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
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
