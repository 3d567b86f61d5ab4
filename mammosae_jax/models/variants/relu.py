"""ReLU SAE with an L1 penalty: the reference Mammo-SAE (SPEC §3).

z = ReLU((x - b_dec) W_enc + b_enc); loss = mean_dims (x̂ - x)² + l1 · Σ_latents |z|, batch-averaged.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from mammosae_jax.models.core import Params, Settings, TrainForward, decode, zero
from mammosae_jax.models.variants.base import NoExtraParams


@dataclass(frozen=True)
class ReLU(NoExtraParams):
    """Dense ReLU latents; sparsity from the L1 penalty."""

    name: str = "relu"
    uses_k = False

    def activate(self, config: Settings, params: Params, pre_BS: jax.Array) -> jax.Array:
        return jax.nn.relu(pre_BS)

    def train_forward(self, config: Settings, params: Params, x_BD: jax.Array,
                      pre_BS: jax.Array) -> TrainForward:
        z_BS = jax.nn.relu(pre_BS)
        x_hat_BD = decode(params, z_BS)
        min_active = jnp.min(jnp.where(z_BS > 0, z_BS, jnp.inf))
        return TrainForward(z_BS, x_hat_BD, jax.lax.stop_gradient(min_active))

    def sparsity_loss(self, config: Settings, z_BS: jax.Array) -> jax.Array:
        return config.l1_coeff * jnp.mean(jnp.sum(jnp.abs(z_BS), axis=-1))

    def aux_loss(self, config: Settings, params: Params, x_BD: jax.Array, x_hat_BD: jax.Array,
                 pre_BS: jax.Array, dead_S: jax.Array) -> jax.Array:
        return zero()


RELU = ReLU()
