"""The complete training state: everything a resumed run needs, as one pytree."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mammosae_jax.models.sae import Params, SAEConfig, init_params
from mammosae_jax.training.config import TrainConfig


class TrainState(NamedTuple):
    step: jax.Array  # () int32 optimiser steps taken
    params: Params
    opt_state: optax.OptState
    steps_since_fired: jax.Array  # (S,) int32 steps since each latent last fired
    fired_since_resample: jax.Array  # (S,) bool (relu resampling)
    threshold: jax.Array  # () float32 batchtopk inference threshold (EMA; < 0 = not yet set)


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    """Adam with constant learning rate and no clipping (SPEC §3)."""
    return optax.adam(train.lr, b1=train.b1, b2=train.b2, eps=train.eps)


def init_state(config: SAEConfig, optimizer: optax.GradientTransformation,
               key: jax.Array) -> TrainState:
    """Fresh parameters, zeroed Adam moments and counters."""
    params = init_params(config, key)
    S = config.n_latents
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        steps_since_fired=jnp.zeros((S,), jnp.int32),
        fired_since_resample=jnp.zeros((S,), bool),
        threshold=jnp.full((), -1.0, jnp.float32),
    )


def zero_latent_slices(tree: Params, mask_S: jax.Array) -> Params:
    """Copy of a params-shaped tree with the entries of the masked latents set to zero."""
    keep_S = ~mask_S
    return {
        "W_enc": tree["W_enc"] * keep_S[None, :],
        "b_enc": tree["b_enc"] * keep_S,
        "W_dec": tree["W_dec"] * keep_S[:, None],
        "b_dec": tree["b_dec"],
    }


def reset_adam_moments(opt_state: optax.OptState, mask_S: jax.Array) -> optax.OptState:
    """Adam state with first and second moments of exactly the masked latents zeroed."""

    def reset(node):
        if isinstance(node, optax.ScaleByAdamState):
            return node._replace(mu=zero_latent_slices(node.mu, mask_S),
                                 nu=zero_latent_slices(node.nu, mask_S))
        return node

    return jax.tree.map(reset, opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState))
