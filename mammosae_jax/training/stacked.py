"""Many SAEs as one: states stacked along a leading member axis, ONE train step vmap-ed over them.

A *stack* is a group of sweep members whose arrays have identical shapes and whose computation
differs only in numbers: same `SAEConfig` except `l1_coeff`, any Adam learning rate. Those two
hyper-parameters travel as traced (M,) arrays (`StackHyper`), so one compiled program trains all
M members on the same token batch. Everything else (`n_latents`, `variant`, `k`, ...) is static
in the compiled program and therefore separates stacks:

* width (`n_latents`) changes every array shape;
* `k` is the static size of `jax.lax.top_k` in the topk/batchtopk variants, so members with
  different k form separate stacks (one stack per k). A single stack over k would need a
  static k_max with per-member masks *inside* the variant's training forward; the variants
  keep k static, and we reuse them unchanged instead of re-implementing their forward pass.

The step itself is `training.step.train_step`, the very function the single-SAE trainer jits:
per member we rebuild its `SAEConfig` with the traced l1 coefficient and its Adam with the traced
learning rate (optax scales by `-lr` as an array; the optimiser *state* does not depend on lr).
Resampling reuses `training.resample` the same way. Sharding is the trainer's: the token batch
is split over the data axis, every stacked leaf (member axis included) is replicated.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mammosae_jax.models.sae import SAEConfig
from mammosae_jax.training.config import TrainConfig
from mammosae_jax.training.resample import resample_dead, token_losses
from mammosae_jax.training.state import TrainState, init_state, make_optimizer
from mammosae_jax.training.step import StepMetrics, train_step


@dataclass(frozen=True)
class Member:
    """One SAE of a sweep: its config (l1 included) and its learning rate."""

    name: str
    """Folder name of its run under the sweep folder."""
    config: SAEConfig
    """The SAE it trains (its own `l1_coeff`)."""
    lr: float
    """Its Adam learning rate (the other TrainConfig fields are shared by the sweep)."""

    def train_config(self, tc: TrainConfig) -> TrainConfig:
        """The sweep's TrainConfig with this member's learning rate (what a single run would use)."""
        return dataclasses.replace(tc, lr=self.lr)


class StackHyper(NamedTuple):
    """Per-member hyper-parameters of a stack, as arrays with a leading member axis."""

    l1_coeff: jax.Array  # (M,) float32
    lr: jax.Array  # (M,) float32


class Stack(NamedTuple):
    """Members that train in one vmap-ed step."""

    template: SAEConfig  # the shared config (l1_coeff of the first member; per-member values in hyper)
    members: tuple[int, ...]  # indices into the sweep's member list
    hyper: StackHyper


def shape_key(config: SAEConfig) -> SAEConfig:
    """What must be equal for two configs to share a stack: everything but `l1_coeff`."""
    return dataclasses.replace(config, l1_coeff=0.0)


def group_members(members: Sequence[Member]) -> list[Stack]:
    """Stacks of members sharing `shape_key`, in order of first appearance."""
    groups: dict[SAEConfig, list[int]] = {}
    for i, m in enumerate(members):
        groups.setdefault(shape_key(m.config), []).append(i)
    stacks = []
    for idx in groups.values():
        hyper = StackHyper(jnp.asarray([members[i].config.l1_coeff for i in idx], jnp.float32),
                           jnp.asarray([members[i].lr for i in idx], jnp.float32))
        stacks.append(Stack(members[idx[0]].config, tuple(idx), hyper))
    return stacks


def stack_trees(trees: Sequence[Any]) -> Any:
    """One pytree whose leaves are the given pytrees' leaves stacked along a new leading axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


@jax.jit
def member_tree(tree: Any, i: int | jax.Array) -> Any:
    """Member `i`'s slice of a stacked pytree (one compiled program per tree structure, any i)."""
    return jax.tree.map(lambda a: a[i], tree)


@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def init_stacked_state(template: SAEConfig, tc: TrainConfig, key: jax.Array, n: int) -> TrainState:
    """n copies of the state a single run with `key` starts from (same init for every member)."""
    state = init_state(template, make_optimizer(tc), key)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), state)


def _member_config(template: SAEConfig, l1_coeff: jax.Array) -> SAEConfig:
    # The config is a plain Python object inside the traced function: replacing l1_coeff by a
    # tracer makes the relu penalty `l1_coeff * Σ|z|` a traced product (SAEConfig validates only
    # shape-defining fields, never l1_coeff).
    return dataclasses.replace(template, l1_coeff=l1_coeff)


def member_step(template: SAEConfig, tc: TrainConfig, state: TrainState, hyper: StackHyper,
                x_BD: jax.Array) -> tuple[TrainState, StepMetrics]:
    """The single trainer's `train_step` for one member, its l1 and lr given as traced scalars."""
    optimizer = make_optimizer(dataclasses.replace(tc, lr=hyper.lr))
    return train_step(_member_config(template, hyper.l1_coeff), optimizer, tc.dead_after_steps(),
                      tc.threshold_ema, state, x_BD)


@functools.lru_cache(maxsize=32)
def make_stacked_step(template: SAEConfig, tc: TrainConfig,
                      out_sharding: jax.sharding.Sharding | None = None
                      ) -> Callable[[TrainState, StackHyper, jax.Array], tuple[TrainState, StepMetrics]]:
    """`step(stacked_state, hyper, x_BD) -> (stacked_state, stacked metrics)`, jitted, state donated.

    Every member sees the same batch `x_BD`; metrics come back with a leading (M,) axis.
    """
    step = jax.vmap(functools.partial(member_step, template, tc), in_axes=(0, 0, None))
    return jax.jit(step, donate_argnums=0, out_shardings=out_sharding)


def _resample_one(template: SAEConfig, state: TrainState, l1_coeff: jax.Array, x_ND: jax.Array,
                  key: jax.Array) -> tuple[TrainState, jax.Array]:
    losses_N = token_losses(_member_config(template, l1_coeff), state.params, x_ND)
    return resample_dead(state, x_ND, losses_N, key)


@functools.lru_cache(maxsize=32)
def make_stacked_resample(template: SAEConfig, out_sharding: jax.sharding.Sharding | None = None
                          ) -> Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, jax.Array]]:
    """`resample(stacked_state, l1 (M,), x_ND, key) -> (stacked_state, n_resampled (M,))`.

    Each member scores the tokens with its own loss (its own l1 penalty) and resamples its own
    dead latents, from the same tokens and key a single run would use.
    """
    fn = jax.vmap(functools.partial(_resample_one, template), in_axes=(0, 0, None, None))
    return jax.jit(fn, donate_argnums=0, out_shardings=out_sharding)


def metrics_rows(metrics: StepMetrics) -> list[dict[str, float]]:
    """Stacked (M,) metrics as one plain dict per member."""
    host = {k: np.asarray(v) for k, v in jax.device_get(metrics)._asdict().items()}
    n = len(next(iter(host.values())))
    return [{k: float(v[i]) for k, v in host.items()} for i in range(n)]
