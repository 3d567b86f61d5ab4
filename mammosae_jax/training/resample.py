"""Dead-latent resampling for the relu SAE, as in the reference (SPEC §3).

Dead = never fired since the last resampling. For each dead latent, one input token is drawn
(without replacement, probability ∝ per-token loss²); the latent's dictionary vector becomes the
unit-norm token, its encoder column the unit token times 0.2 × the mean norm of the alive encoder
columns, its encoder bias 0, and its Adam moments are zeroed. Nothing else changes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mammosae_jax.models.sae import SAEConfig, forward
from mammosae_jax.training.state import TrainState, reset_adam_moments
from mammosae_jax.models.variants import get_variant

ENCODER_SCALE = 0.2


def token_losses(config: SAEConfig, params: dict, x_BD: jax.Array) -> jax.Array:
    """(B,) training loss of each token: mean-over-dims squared error + its sparsity penalty."""
    _, z_BS, x_hat_BD = forward(config, params, x_BD)
    variant = get_variant(config.variant)
    penalty_B = jax.vmap(lambda z_S: variant.sparsity_loss(config, z_S[None]))(z_BS)
    return jnp.mean((x_hat_BD - x_BD) ** 2, axis=-1) + penalty_B


def resample_dead(state: TrainState, x_ND: jax.Array, losses_N: jax.Array,
                  key: jax.Array) -> tuple[TrainState, jax.Array]:
    """State with the dead latents re-initialised from `x_ND`; also the number resampled.

    Static shapes throughout (jit-friendly): sampling without replacement is a Gumbel top-k over
    log(loss²); the i-th dead latent (in index order) takes the i-th drawn token. If there are
    more dead latents than tokens with nonzero loss, the surplus stays as it is.
    """
    params = state.params
    dead_S = ~state.fired_since_resample
    N = x_ND.shape[0]
    log_p_N = jnp.where(losses_N > 0, 2.0 * jnp.log(jnp.maximum(losses_N, 1e-30)), -jnp.inf)
    order_N = jnp.argsort(-(log_p_N + jax.random.gumbel(key, (N,))))
    rank_S = jnp.cumsum(dead_S) - 1
    do_S = dead_S & (rank_S < jnp.sum(losses_N > 0))
    x_SD = x_ND[order_N[jnp.clip(rank_S, 0, N - 1)]]
    unit_SD = x_SD / jnp.maximum(jnp.linalg.norm(x_SD, axis=-1, keepdims=True), 1e-12)

    enc_norms_S = jnp.linalg.norm(params["W_enc"], axis=0)
    n_alive = jnp.sum(~dead_S)
    alive_mean = jnp.where(n_alive > 0,
                           jnp.sum(jnp.where(dead_S, 0.0, enc_norms_S)) / jnp.maximum(n_alive, 1),
                           1.0)
    new_params = {
        "W_enc": jnp.where(do_S[None, :], unit_SD.T * (ENCODER_SCALE * alive_mean), params["W_enc"]),
        "b_enc": jnp.where(do_S, 0.0, params["b_enc"]),
        "W_dec": jnp.where(do_S[:, None], unit_SD, params["W_dec"]),
        "b_dec": params["b_dec"],
    }
    new_state = state._replace(
        params=new_params,
        opt_state=reset_adam_moments(state.opt_state, do_S),
        steps_since_fired=jnp.where(do_S, 0, state.steps_since_fired),
        fired_since_resample=jnp.zeros_like(state.fired_since_resample),
    )
    return new_state, jnp.sum(do_S)
