"""JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope, SAELens): one learned threshold per latent.

    z_i = ReLU(pre_i) · H(pre_i - θ_i)          θ = params["threshold"] [n], kept >= 0
    loss = mean_dims (x̂ - x)² + l1_coeff · mean_tokens Σ_i H(pre_i - θ_i)      (an L0 penalty)

H has no useful derivative, so both the jump and the L0 count use straight-through estimators
with a rectangle kernel K(u) = 1[|u| < 1/2] of width ε = `bandwidth` (the paper's and SAELens's
"step" mode, gradient to the threshold only):

    ∂z_i/∂pre_i = H(pre_i - θ_i)        ∂z_i/∂θ_i = -(θ_i / ε) K((pre_i - θ_i) / ε)
    ∂H/∂pre_i   = 0                     ∂H/∂θ_i   = -(1 / ε) K((pre_i - θ_i) / ε)

`l1_coeff` is the L0 coefficient here (the sweep varies it like relu's L1). SAELens sums the
squared error over dimensions; we average it, so SAELens's `l0_coefficient` λ is our λ / d_in.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from mammosae_jax.models.core import THRESHOLD, Params, Settings, TrainForward, decode, zero


def jump(pre_BS: jax.Array, threshold_S: jax.Array) -> jax.Array:
    """Inference JumpReLU: ReLU(pre) where pre > threshold, else 0 (SAELens's `JumpReLUSAE.encode`)."""
    return jnp.where(pre_BS > threshold_S, jax.nn.relu(pre_BS), 0.0)


def _rectangle(pre_BS: jax.Array, threshold_S: jax.Array, bandwidth: float) -> jax.Array:
    return (jnp.abs((pre_BS - threshold_S) / bandwidth) < 0.5).astype(pre_BS.dtype) / bandwidth


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu_ste(pre_BS: jax.Array, threshold_S: jax.Array, bandwidth: float) -> jax.Array:
    """pre · H(pre - θ), with the straight-through gradients of the module docstring."""
    return jnp.where(pre_BS > threshold_S, pre_BS, 0.0)


def _jumprelu_fwd(pre_BS, threshold_S, bandwidth):
    return jumprelu_ste(pre_BS, threshold_S, bandwidth), (pre_BS, threshold_S)


def _jumprelu_bwd(bandwidth, res, g_BS):
    pre_BS, threshold_S = res
    d_thr = -jnp.sum(threshold_S * _rectangle(pre_BS, threshold_S, bandwidth) * g_BS, axis=0)
    return jnp.where(pre_BS > threshold_S, g_BS, 0.0), d_thr


jumprelu_ste.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def step_ste(pre_BS: jax.Array, threshold_S: jax.Array, bandwidth: float) -> jax.Array:
    """H(pre - θ) as 0/1, with the straight-through gradient to θ only."""
    return (pre_BS > threshold_S).astype(pre_BS.dtype)


def _step_fwd(pre_BS, threshold_S, bandwidth):
    return step_ste(pre_BS, threshold_S, bandwidth), (pre_BS, threshold_S)


def _step_bwd(bandwidth, res, g_BS):
    pre_BS, threshold_S = res
    return jnp.zeros_like(pre_BS), -jnp.sum(_rectangle(pre_BS, threshold_S, bandwidth) * g_BS, axis=0)


step_ste.defvjp(_step_fwd, _step_bwd)


@dataclass(frozen=True)
class JumpReLU:
    """Per-latent learned thresholds, an L0 penalty through straight-through estimators."""

    name: str = "jumprelu"
    uses_k = False
    learns_threshold = False
    extra_params = (THRESHOLD,)

    def init_extra(self, config: Settings) -> Params:
        return {THRESHOLD: jnp.full((config.n_latents,), config.init_threshold, jnp.float32)}

    def activate(self, config: Settings, params: Params, pre_BS: jax.Array) -> jax.Array:
        return jump(pre_BS, params[THRESHOLD])

    def train_forward(self, config: Settings, params: Params, x_BD: jax.Array,
                      pre_BS: jax.Array) -> TrainForward:
        threshold_S = params[THRESHOLD]
        z_BS = jumprelu_ste(pre_BS, threshold_S, config.bandwidth)
        l0 = jnp.mean(jnp.sum(step_ste(pre_BS, threshold_S, config.bandwidth), axis=-1))
        min_active = jnp.min(jnp.where(z_BS > 0, jax.lax.stop_gradient(z_BS), jnp.inf))
        return TrainForward(z_BS, decode(params, z_BS), min_active, penalty=config.l1_coeff * l0)

    def sparsity_loss(self, config: Settings, z_BS: jax.Array) -> jax.Array:
        """The penalty as a function of z alone: the L0 count (its gradient comes from `train_forward`)."""
        return config.l1_coeff * jnp.mean(jnp.sum(z_BS != 0, axis=-1).astype(jnp.float32))

    def aux_loss(self, config: Settings, params: Params, x_BD: jax.Array, x_hat_BD: jax.Array,
                 pre_BS: jax.Array, dead_S: jax.Array) -> jax.Array:
        return zero()


JUMPRELU = JumpReLU()
