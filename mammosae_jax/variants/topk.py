"""TopK SAE (Gao et al. 2024) with the AuxK loss for dead latents.

Each token keeps its k largest pre-activations (then ReLU). Training never differentiates a dense
(B, S) matrix: the selection runs on stop-gradient pre-activations, the k selected values carry
a sparse custom gradient (`base.selected_pre`) and are decoded from gathered dictionary rows, so
the backward pass touches only the k selected columns of W_enc and rows of W_dec per token; the
only dense matmul of the step is the forward encoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from mammosae_jax.variants.base import (TrainForward, decode_sparse, pre_bias, scatter_dense,
                                        selected_pre, zero)

if TYPE_CHECKING:  # pragma: no cover
    from mammosae_jax.sae import Params, SAEConfig


def auxk_loss(config: SAEConfig, params: Params, x_BD: jax.Array, x_hat_BD: jax.Array,
              pre_BS: jax.Array, dead_S: jax.Array) -> jax.Array:
    """AuxK: the top-k_aux *dead* latents reconstruct the (fixed) residual x - x̂.

    Normalised by the batch's total variance and scaled by min(n_dead / k_aux, 1), times
    `config.aux_coeff`. Gradients reach only the selected dead latents. When nothing is dead
    the branch is skipped at run time (`lax.cond`), so healthy training pays nothing for it.
    Unlike the main path this one is dense (k_aux = d_in/2 is large: a (B, k_aux, D) gather and
    scatter-add cost more than the 4 matmuls here, measured on CPU).
    """
    if config.aux_coeff == 0.0:
        return zero()
    k_aux = config.resolved_aux_k

    def compute(_):
        aux_pre_BS = x_BD @ params["W_enc"] + pre_bias(params)  # own copy: its dense backward stays in the branch
        _, idx_BK = jax.lax.top_k(jnp.where(dead_S, jax.lax.stop_gradient(aux_pre_BS), -jnp.inf), k_aux)
        vals_BK = jnp.where(dead_S[idx_BK], jax.nn.relu(jnp.take_along_axis(aux_pre_BS, idx_BK, axis=1)), 0.0)
        e_hat_BD = scatter_dense(vals_BK, idx_BK, config.n_latents) @ params["W_dec"]
        e_BD = jax.lax.stop_gradient(x_BD - x_hat_BD)
        total_var = jnp.sum((x_BD - jnp.mean(x_BD, axis=0)) ** 2)
        scale = jnp.minimum(jnp.sum(dead_S) / k_aux, 1.0)
        return config.aux_coeff * scale * jnp.sum((e_hat_BD - e_BD) ** 2) / jnp.maximum(total_var, 1e-12)

    return jax.lax.cond(jnp.any(dead_S), compute, lambda _: zero(), None)


@dataclass(frozen=True)
class TopK:
    """Exactly k active latents per token."""

    name: str = "topk"

    def activate(self, config: SAEConfig, pre_BS: jax.Array) -> jax.Array:
        vals_BK, idx_BK = jax.lax.top_k(pre_BS, config.k)
        return scatter_dense(jax.nn.relu(vals_BK), idx_BK, config.n_latents)

    def train_forward(self, config: SAEConfig, params: Params, x_BD: jax.Array,
                      pre_BS: jax.Array) -> TrainForward:
        pre_sg = jax.lax.stop_gradient(pre_BS)
        _, idx_BK = jax.lax.top_k(pre_sg, config.k)
        vals_BK = jax.nn.relu(selected_pre(params["W_enc"], pre_bias(params), x_BD, idx_BK, pre_sg))
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
