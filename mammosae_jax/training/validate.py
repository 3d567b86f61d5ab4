"""Held-out metrics: MSE, FVU, L0, dead and dense latent fractions over validation tokens."""
from __future__ import annotations

import functools
from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp

from mammosae_jax.models.sae import Params, SAEConfig, forward


class ValSums(NamedTuple):
    n: jax.Array  # () tokens
    sq_err: jax.Array  # () Σ (x̂ - x)²
    x_sum: jax.Array  # (D,) Σ (x - shift)
    x_sq: jax.Array  # (D,) Σ (x - shift)²  (shifted by the first batch's mean: no cancellation)
    active: jax.Array  # () Σ nonzero latents
    fired: jax.Array  # (S,) tokens on which each latent fired


class ValMetrics(NamedTuple):
    n_tokens: int
    mse: float
    fvu: float
    l0: float
    dead_fraction: float  # never fired on the validation tokens
    dense_fraction: float  # fired on more than `dense_above` of them


@functools.partial(jax.jit, static_argnums=0)
def _batch_sums(config: SAEConfig, params: Params, x_BD: jax.Array, shift_D: jax.Array) -> ValSums:
    _, z_BS, x_hat_BD = forward(config, params, x_BD)
    nz_BS = z_BS != 0
    xs_BD = x_BD - shift_D
    return ValSums(jnp.asarray(x_BD.shape[0], jnp.float32), jnp.sum((x_hat_BD - x_BD) ** 2),
                   jnp.sum(xs_BD, 0), jnp.sum(xs_BD**2, 0), jnp.sum(nz_BS, dtype=jnp.float32),
                   jnp.sum(nz_BS, 0, dtype=jnp.float32))


def evaluate(config: SAEConfig, params: Params, batches: Iterable[jax.Array],
             dense_above: float) -> ValMetrics | None:
    """Metrics of the inference rule of `config` over `batches` (None if there are none)."""
    total, shift_D = None, None
    for x_BD in batches:
        if shift_D is None:
            shift_D = jnp.mean(x_BD, axis=0)
        sums = _batch_sums(config, params, x_BD, shift_D)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if total is None:
        return None
    t = jax.device_get(total)
    n = float(t.n)
    var = float((t.x_sq - t.x_sum**2 / n).sum())
    return ValMetrics(int(n), float(t.sq_err) / (n * config.d_in), float(t.sq_err) / max(var, 1e-12),
                      float(t.active) / n, float((t.fired == 0).mean()),
                      float((t.fired / n > dense_above).mean()))
