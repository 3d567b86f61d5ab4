"""TopK SAE (Gao et al. 2024) with the AuxK loss for dead latents.

Each token keeps its k largest pre-activations (then ReLU). Training never differentiates a dense
(B, S) matrix: the selection runs on stop-gradient pre-activations, the k selected values are
recomputed from gathered encoder columns and decoded from gathered dictionary rows, so the
backward pass touches only the selected rows of W_enc.T and W_dec.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from mammosae_jax.variants.base import (TrainForward, decode_sparse, gather_pre, scatter_dense,
                                        zero)

if TYPE_CHECKING:  # pragma: no cover
    from mammosae_jax.sae import Params, SAEConfig


def auxk_loss(config: SAEConfig, params: Params, x_BD: jax.Array, x_hat_BD: jax.Array,
              pre_BS: jax.Array, dead_S: jax.Array) -> jax.Array:
    """AuxK: the top-k_aux *dead* latents reconstruct the (fixed) residual x - x̂.

    Normalised by the batch's total variance and scaled by min(n_dead / k_aux, 1), times
    `config.aux_coeff`; zero when nothing is dead. Gradients reach only the selected dead latents.
    """
    if config.aux_coeff == 0.0:
        return zero()
    k_aux = config.resolved_aux_k
    masked_BS = jnp.where(dead_S, jax.lax.stop_gradient(pre_BS), -jnp.inf)
    _, idx_BK = jax.lax.top_k(masked_BS, k_aux)
    xc_BD = x_BD - params["b_dec"]
    vals_BK = jnp.where(dead_S[idx_BK], jax.nn.relu(gather_pre(params, xc_BD, idx_BK)), 0.0)
    e_hat_BD = decode_sparse(params, vals_BK, idx_BK)
    e_BD = jax.lax.stop_gradient(x_BD - x_hat_BD)
    total_var = jnp.sum((x_BD - jnp.mean(x_BD, axis=0)) ** 2)
    scale = jnp.minimum(jnp.sum(dead_S) / k_aux, 1.0)
    return config.aux_coeff * scale * jnp.sum((e_hat_BD - e_BD) ** 2) / jnp.maximum(total_var, 1e-12)


@dataclass(frozen=True)
class TopK:
    """Exactly k active latents per token."""

    name: str = "topk"

    def activate(self, config: SAEConfig, pre_BS: jax.Array) -> jax.Array:
        vals_BK, idx_BK = jax.lax.top_k(pre_BS, config.k)
        return scatter_dense(jax.nn.relu(vals_BK), idx_BK, config.n_latents)

    def train_forward(self, config: SAEConfig, params: Params, x_BD: jax.Array,
                      pre_BS: jax.Array) -> TrainForward:
        _, idx_BK = jax.lax.top_k(jax.lax.stop_gradient(pre_BS), config.k)
        vals_BK = jax.nn.relu(gather_pre(params, x_BD - params["b_dec"], idx_BK))
        x_hat_BD = decode_sparse(params, vals_BK, idx_BK) + params["b_dec"]
        z_BS = jax.lax.stop_gradient(scatter_dense(vals_BK, idx_BK, config.n_latents))
        min_active = jnp.min(jnp.where(vals_BK > 0, jax.lax.stop_gradient(vals_BK), jnp.inf))
        return TrainForward(z_BS, x_hat_BD, min_active)

    def sparsity_loss(self, config: SAEConfig, z_BS: jax.Array) -> jax.Array:
        return zero()

    def aux_loss(self, config: SAEConfig, params: Params, x_BD: jax.Array, x_hat_BD: jax.Array,
                 pre_BS: jax.Array, dead_S: jax.Array) -> jax.Array:
        return auxk_loss(config, params, x_BD, x_hat_BD, pre_BS, dead_S)


TOPK = TopK()
