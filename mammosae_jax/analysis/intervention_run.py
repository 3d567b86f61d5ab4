"""Run top-k interventions on a split and write their outputs (JSON records, the Figure-2 plot,
the single-latent ablation CSV). The equations are in `analysis.interventions`; the command is
`mammosae_jax.cli.intervene`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from mammosae_jax.analysis.concept_data import n_classes_of, split_images, units
from mammosae_jax.analysis.evaluation import check_sae_dim
from mammosae_jax.analysis.heads import Head, head_logits
from mammosae_jax.analysis.interventions import (
    DEFAULT_KS,
    MODES,
    ablation_effects,
    error_logits,
    exact_logits,
    fold_head,
    k_list,
    masked_logits,
    sweep_masks,
)
from mammosae_jax.analysis.latent_stats import stream_latent_means
from mammosae_jax.analysis.metrics import head_metrics, metrics_dict
from mammosae_jax.analysis.ranking import Ranking, RankingError, unit_weights


class InterventionResult(NamedTuple):
    label: str
    records: dict[str, list[dict]]  # mode -> one record per k
    reference: dict[str, dict]  # "raw", "sae": metrics without intervention
    ablation_nC: np.ndarray  # [n_latents, n_classes] mean logit change
    max_abs_diff_exact: float | None  # --exact: largest |identity - exact| logit difference


def headline(records_or_metrics: dict) -> str:
    return "aucroc" if "aucroc" in records_or_metrics else "macro_f1"


def run_interventions(cache, sae, head: Head, ranking: Ranking, label: str, *, ks=DEFAULT_KS, modes=MODES,
                      keep_error: bool = False, exact: bool = False, per: str = "row", split: str = "test",
                      batch_size: int = 2) -> InterventionResult:
    """Evaluate every (mode, k) on a split; optionally verify against the exact computation."""
    check_sae_dim(sae, cache)
    if ranking.n_latents != sae.config.n_latents:
        raise RankingError(f"the ranking covers {ranking.n_latents} latents but the SAE has {sae.config.n_latents}")
    ks = k_list(ks, sae.config.n_latents)
    images = split_images(cache, split)
    means, _ = stream_latent_means(cache, sae, images, batch_size=batch_size, desc=f"encoding {split}")
    folded = fold_head(sae.decode, sae.config.n_latents, head)
    extra = error_logits(means.zbar_Nn, means.xbar_NC, sae.decode, head) if keep_error else None
    masks, mode_of, k_of, size = sweep_masks(ranking, ks, modes)
    logits = np.asarray(masked_logits(jnp.asarray(means.zbar_Nn), jnp.asarray(masks), folded, extra))
    max_diff = None
    if exact:
        ref = exact_logits(cache, sae, head, masks, images, keep_error=keep_error, batch_size=batch_size)
        max_diff = float(np.abs(ref - logits).max())
        logits = ref
    u = units(cache, label, images, per)
    m = head_metrics(u.labels_U, logits[:, u.image_pos_U])
    records: dict[str, list[dict]] = {mode: [] for mode in modes}
    for i, (mode, k) in enumerate(zip(mode_of, k_of)):
        records[mode].append({"k": k, "n_latents_kept_or_removed": int(size[i]), **metrics_dict(m, i)})
    sae_only = np.asarray(masked_logits(jnp.asarray(means.zbar_Nn), jnp.ones((1, sae.config.n_latents)), folded))[0]
    reference = {
        "raw": metrics_dict(head_metrics(u.labels_U, head_logits(head, cache.pooled()[images])[u.image_pos_U])),
        "sae": metrics_dict(head_metrics(u.labels_U, sae_only[u.image_pos_U])),
    }
    weights = unit_weights(u.labels_U, u.image_pos_U, len(images), n_classes_of(label))
    ablation = ablation_effects(means.zbar_Nn, folded.u_nK, weights)
    return InterventionResult(label, records, reference, ablation, max_diff)
