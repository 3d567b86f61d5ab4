"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024; saev's default objective).

The latents are BatchTopK's (k·B per batch, a learned threshold at inference); the dictionary's
nested prefixes W_dec[:m_1] ⊂ W_dec[:m_2] ⊂ ... ⊂ W_dec[:n] must each reconstruct the input:

    x̂_p = z[:, :m_p] @ W_dec[:m_p] + b_dec,     recon = (1/P) Σ_p mean_dims (x̂_p - x)²

so early latents learn general features and later ones refine them. The P = `prefixes` prefix
ends are fixed, doubling up to n: m_p = n / 2^(P-p) (rounded up, duplicates dropped). saev draws
prefix lengths at random per batch; SAELens (`matryoshka_widths`) and Bussmann et al. fix them,
as we do. Inference is BatchTopK's, so the export is the same (SAELens ``jumprelu``).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from mammosae_jax.models.core import Params, Settings, TrainForward
from mammosae_jax.models.variants.batchtopk import BatchTopK, batch_topk


def prefix_ends(n_latents: int, prefixes: int) -> tuple[int, ...]:
    """The ascending prefix sizes m_1 < ... < m_P = n (ceil(n / 2^(P-p)), duplicates dropped)."""
    if prefixes < 1:
        raise ValueError(f"prefixes must be >= 1, got {prefixes}")
    return tuple(sorted({-(-n_latents // 2 ** (prefixes - p)) for p in range(1, prefixes + 1)}))


@dataclass(frozen=True)
class Matryoshka(BatchTopK):
    """BatchTopK latents; every nested prefix of the dictionary reconstructs the input."""

    name: str = "matryoshka"

    def train_forward(self, config: Settings, params: Params, x_BD: jax.Array,
                      pre_BS: jax.Array) -> TrainForward:
        z_BS, min_active = batch_topk(pre_BS, config.k)
        partial_BD, start, losses = params["b_dec"], 0, []
        for end in prefix_ends(config.n_latents, config.prefixes):  # running sum: each latent decoded once
            partial_BD = partial_BD + z_BS[:, start:end] @ params["W_dec"][start:end]
            losses.append(jnp.mean((partial_BD - x_BD) ** 2))
            start = end
        return TrainForward(z_BS, partial_BD, min_active, recon=jnp.mean(jnp.stack(losses)))


MATRYOSHKA = Matryoshka()
