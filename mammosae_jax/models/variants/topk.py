"""TopK SAE (Gao et al. 2024) with the AuxK loss for dead latents.

Each token keeps its k largest pre-activations (then ReLU). Training never differentiates a dense
(B, S) matrix: the selection runs on stop-gradient pre-activations, the k selected values carry
a sparse custom gradient (`base.selected_pre`) and are decoded from gathered dictionary rows, so
the backward pass touches only the k selected columns of W_enc and rows of W_dec per token; the
only dense matmul of the step is the forward encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from mammosae_jax.models.core import Params, Settings
from mammosae_jax.models.variants.base import TopKFamily, TrainForward, decode_sparse, pre_bias, scatter_dense, selected_pre


@dataclass(frozen=True)
class TopK(TopKFamily):
    """Exactly k active latents per token."""

    name: str = "topk"

    def activate(self, config: Settings, params: Params, pre_BS: jax.Array) -> jax.Array:
        vals_BK, idx_BK = jax.lax.top_k(pre_BS, config.k)
        return scatter_dense(jax.nn.relu(vals_BK), idx_BK, config.n_latents)

    def train_forward(self, config: Settings, params: Params, x_BD: jax.Array,
                      pre_BS: jax.Array) -> TrainForward:
        pre_sg = jax.lax.stop_gradient(pre_BS)
        _, idx_BK = jax.lax.top_k(pre_sg, config.k)
        vals_BK = jax.nn.relu(selected_pre(params["W_enc"], pre_bias(params), x_BD, idx_BK, pre_sg))
        x_hat_BD = decode_sparse(params, vals_BK, idx_BK) + params["b_dec"]
        z_BS = jax.lax.stop_gradient(scatter_dense(vals_BK, idx_BK, config.n_latents))
        min_active = jnp.min(jnp.where(vals_BK > 0, jax.lax.stop_gradient(vals_BK), jnp.inf))
        return TrainForward(z_BS, x_hat_BD, min_active)


TOPK = TopK()
