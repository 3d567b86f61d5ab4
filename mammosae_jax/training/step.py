"""One jitted training step: loss, decoder-gradient projection, Adam, renormalisation."""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mammosae_jax.models.sae import SAEConfig, constrain, loss, remove_parallel_component
from mammosae_jax.training.config import TrainConfig
from mammosae_jax.training.state import TrainState, make_optimizer


class StepMetrics(NamedTuple):
    loss: jax.Array
    mse: jax.Array
    l1: jax.Array
    l0: jax.Array
    fvu: jax.Array
    sparsity: jax.Array
    aux: jax.Array
    dead_fraction: jax.Array  # latents silent for at least dead_after_steps steps


def train_step(config: SAEConfig, optimizer: optax.GradientTransformation, dead_after_steps: int,
               threshold_ema: float, state: TrainState, x_BD: jax.Array
               ) -> tuple[TrainState, StepMetrics]:
    """Un-jitted step (see `make_train_step`)."""
    dead_S = state.steps_since_fired >= dead_after_steps

    def objective(params):
        out = loss(config, params, x_BD, dead_S)
        return out.loss, out

    (_, out), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    grads = {**grads, "W_dec": remove_parallel_component(state.params["W_dec"], grads["W_dec"])}
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = constrain(params)  # unit-norm W_dec rows (and a jumprelu threshold >= 0)

    steps_since_fired = jnp.where(out.fired, 0, state.steps_since_fired + 1)
    seen = jnp.isfinite(out.min_active)
    ema = jnp.where(state.threshold < 0, out.min_active,
                    threshold_ema * state.threshold + (1.0 - threshold_ema) * out.min_active)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        steps_since_fired=steps_since_fired,
        fired_since_resample=state.fired_since_resample | out.fired,
        threshold=jnp.where(seen, ema, state.threshold),
    )
    metrics = StepMetrics(out.loss, out.mse, out.l1, out.l0, out.fvu, out.sparsity, out.aux,
                          jnp.mean(steps_since_fired >= dead_after_steps))
    return new_state, metrics


def make_train_step(config: SAEConfig, train: TrainConfig,
                    out_sharding: jax.sharding.Sharding | None = None
                    ) -> Callable[[TrainState, jax.Array], tuple[TrainState, StepMetrics]]:
    """`step(state, x_BD) -> (state, metrics)`, jitted with the state donated.

    Adam settings, the dead-latent window and the threshold EMA come from `train`;
    `out_sharding` (from `training.mesh`) pins the outputs, e.g. replicated parameters.
    Runs that agree on those settings share one compiled step.
    """
    adam = dataclasses.replace(TrainConfig(steps=1), lr=train.lr, b1=train.b1, b2=train.b2, eps=train.eps)
    return _cached_step(config, adam, train.dead_after_steps(), train.threshold_ema, out_sharding)


@functools.lru_cache(maxsize=32)
def _cached_step(config: SAEConfig, adam: TrainConfig, dead_after: int, ema: float,
                 out_sharding: jax.sharding.Sharding | None):
    optimizer = make_optimizer(adam)

    def step(state: TrainState, x_BD: jax.Array) -> tuple[TrainState, StepMetrics]:
        return train_step(config, optimizer, dead_after, ema, state, x_BD)

    return jax.jit(step, donate_argnums=0, out_shardings=out_sharding)
