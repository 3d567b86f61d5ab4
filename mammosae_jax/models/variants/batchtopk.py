"""BatchTopK SAE (Bussmann et al. 2024): k·B active latents per *batch*, a threshold at inference.

Training keeps the k·B largest ReLU pre-activations of the whole batch, so tokens may use more or
fewer than k latents. The trainer tracks an exponential moving average of the smallest kept
activation and stores it as `Settings.threshold`; inference is then JumpReLU's with that one
threshold for every latent (`jumprelu.jump`: ReLU(pre) where pre > threshold), per-token and
batch-independent. Without a threshold, inference falls back to the batch rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from mammosae_jax.models.core import Params, Settings, decode
from mammosae_jax.models.variants.base import TopKFamily, TrainForward
from mammosae_jax.models.variants.jumprelu import jump


def batch_topk(pre_BS: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Dense latents keeping the k·B largest ReLU pre-activations of the batch, and the smallest kept.

    Gradients flow to the kept entries only.
    """
    B, S = pre_BS.shape
    flat = jax.nn.relu(pre_BS).reshape(-1)
    _, idx = jax.lax.top_k(jax.lax.stop_gradient(flat), min(k * B, B * S))
    kept = flat[idx]
    z_BS = jnp.zeros_like(flat).at[idx].set(kept).reshape(B, S)
    min_active = jnp.min(jnp.where(kept > 0, jax.lax.stop_gradient(kept), jnp.inf))
    return z_BS, min_active


@dataclass(frozen=True)
class BatchTopK(TopKFamily):
    """k active latents per token on average over a batch."""

    name: str = "batchtopk"
    learns_threshold = True

    def activate(self, config: Settings, params: Params, pre_BS: jax.Array) -> jax.Array:
        if config.threshold is None:
            return batch_topk(pre_BS, config.k)[0]
        return jump(pre_BS, jnp.float32(config.threshold))

    def train_forward(self, config: Settings, params: Params, x_BD: jax.Array,
                      pre_BS: jax.Array) -> TrainForward:
        z_BS, min_active = batch_topk(pre_BS, config.k)
        return TrainForward(z_BS, decode(params, z_BS), min_active)


BATCHTOPK = BatchTopK()
