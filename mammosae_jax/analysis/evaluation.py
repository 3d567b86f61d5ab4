"""Concept-head metrics on raw features, the SAE reconstruction and reconstruction + error.

The pooled reconstruction is ``decode(zbar)``: the decoder is affine, so the mean of the decoded
positions equals the decoding of the mean latent vector. The command is `mammosae_jax.cli.evaluate`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mammosae_jax.analysis.concept_data import ConceptError, check_label, split_images, units
from mammosae_jax.analysis.heads import Head, check_head_dim, head_from_cache, head_logits, load_head
from mammosae_jax.analysis.latent_stats import LatentMeans, ReconStats, stream_latent_means
from mammosae_jax.analysis.metrics import head_metrics, metrics_dict

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
