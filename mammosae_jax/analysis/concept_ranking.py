"""Rank SAE latents per concept class from their spatial-mean activations on a split
(`rank_concepts`; the scores are in `analysis.ranking`). The command is `mammosae_jax.cli.concepts`.
"""
from __future__ import annotations


import numpy as np

from mammosae_jax.analysis.concept_data import check_label, n_classes_of, split_images, units
from mammosae_jax.analysis.evaluation import check_sae_dim
from mammosae_jax.analysis.heads import Head, check_head_dim
from mammosae_jax.analysis.interventions import fold_head
from mammosae_jax.analysis.latent_stats import stream_latent_means
from mammosae_jax.analysis.ranking import (
    ClassMeans,
    Ranking,
    RankingError,
    class_means,
    class_scores,
    make_ranking,
    unit_weights,
)


def rank_concepts(cache, sae, label: str, *, score: str = "centered", per: str = "row", split: str = "training",
                  batch_size: int = 2, head: Head | None = None) -> tuple[Ranking, ClassMeans]:
    """Ranking of every latent for every class of ``label``, and the class means behind it."""
    check_label(cache, label)
    check_sae_dim(sae, cache)
    u_nK = None
    if score == "attribution":
        if head is None:
            raise RankingError("--score attribution needs the concept head (--head, or one stored in the cache)")
        if head.label != label:
            raise RankingError(f"the head is for '{head.label}', not '{label}'")
        check_head_dim(head, sae.config.d_in, what="SAE's inputs")
        u_nK = np.asarray(fold_head(sae.decode, sae.config.n_latents, head).u_nK)
    images = split_images(cache, split)
    means, _ = stream_latent_means(cache, sae, images, batch_size=batch_size, desc=f"encoding {split}")
    u = units(cache, label, images, per)
    stats = class_means(means.zbar_Nn, unit_weights(u.labels_U, u.image_pos_U, len(images), n_classes_of(label)))
    return make_ranking(label, class_scores(stats, score, u_nK)), stats
