"""The sparse autoencoder: config, parameters and its equations as pure JAX functions.

    z  = act((x - b_dec) @ W_enc + b_enc)        W_enc [d_in, n], b_enc [n]
    x̂  = z @ W_dec + b_dec                       W_dec [n, d_in] with unit-norm rows, b_dec [d_in]
    loss = mean_dims (x̂ - x)² + variant penalty (+ auxiliary loss), averaged over the batch

`act` and the penalty come from the variant plug-ins in `models/variants/`; the equations shared
with them (`pre_activation`, `decode`, unit-norm helpers) are in `models/core.py`.

Why Flax in this shape: the parameters are a plain dict of four arrays, the public contract
(docs/CONTRACTS.md) and exactly the SAELens tensor names, so conversion, saving and interventions
need no renaming. The model is four equations; we write them as pure functions over that dict and
jit the train step around them (no per-call graph traversal, donation and sharding apply directly
to the pytree). Flax enters as `nnx`: `SAEModule` is an `nnx.Module` whose `nnx.Param`s are those
four arrays, so `nnx.to_pure_dict(nnx.state(m, nnx.Param))` *is* the params dict and the module can be
composed into larger Flax models; we picked nnx over linen because linen would nest the arrays
under `{'params': {...}}` scopes and split the RNG per parameter name, breaking the one-key,
one-dict correspondence with `init_params`.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mammosae_jax.models import core
from mammosae_jax.models.core import (PARAM_NAMES, THRESHOLD, Params, constrain, normalize_rows, pre_activation,
                                     remove_parallel_component)
from mammosae_jax.models.variants import VARIANTS, get_variant

__all__ = ["PARAM_NAMES", "THRESHOLD", "Params", "constrain", "normalize_rows", "pre_activation",
           "remove_parallel_component"]
INITS = ("reference", "tied")
DEFAULT_K = 32


@dataclass(frozen=True)
class SAEConfig:
    """Everything that defines an SAE's function (not how it is trained)."""

    d_in: int
    """Input feature dimension (2048 for EfficientNet-B5)."""
    n_latents: int
    """Dictionary size (expansion · d_in)."""
    variant: str = "relu"
    """Registered variant name: relu, topk, batchtopk, jumprelu, matryoshka."""
    k: int | None = None
    """Active latents per token (topk) or per token on average (batchtopk, matryoshka); None = 32.
    relu and jumprelu have none."""
    l1_coeff: float = 3e-5
    """Sparsity coefficient: on the L1 norm Σ|z| (relu), on the L0 count (jumprelu)."""
    aux_k: int | None = None
    """Dead latents used by AuxK (topk/batchtopk); None = min(d_in // 2, n_latents)."""
    aux_coeff: float = 1.0 / 32.0
    """AuxK loss coefficient; 0 disables it."""
    threshold: float | None = None
    """Inference threshold of batchtopk/matryoshka (set by the trainer); None = batch rule."""
    bandwidth: float = 0.05
    """Width of the straight-through rectangle kernel (jumprelu; SAELens's default)."""
    init_threshold: float = 0.01
    """Initial per-latent threshold (jumprelu; SAELens's default)."""
    prefixes: int = 4
    """Nested dictionary prefixes that each reconstruct the input (matryoshka)."""
    init: str = "reference"
    """'reference': SPEC §3 init (tiny kaiming-uniform encoder); 'tied': W_enc = W_decᵀ, b_enc = 0."""

    def __post_init__(self) -> None:
        if self.d_in <= 0 or self.n_latents <= 0:
            raise ValueError(f"d_in and n_latents must be positive, got {self.d_in}, {self.n_latents}")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown SAE variant {self.variant!r}; known: {', '.join(VARIANTS)}")
        uses_k = VARIANTS[self.variant].uses_k
        if not uses_k and self.k is not None:
            raise ValueError(f"a {self.variant} SAE has no k (k={self.k} given)")
        if uses_k and self.k is None:
            object.__setattr__(self, "k", DEFAULT_K)
        if uses_k and not 0 < self.k <= self.n_latents:
            raise ValueError(f"k must be in [1, n_latents={self.n_latents}], got {self.k}")
        if self.aux_k is not None and not 0 < self.aux_k <= self.n_latents:
            raise ValueError(f"aux_k must be in [1, n_latents={self.n_latents}], got {self.aux_k}")
        if self.bandwidth <= 0 or self.init_threshold < 0:
            raise ValueError(f"bandwidth must be > 0 and init_threshold >= 0, got {self.bandwidth}, {self.init_threshold}")
        if self.prefixes < 1:
            raise ValueError(f"prefixes must be >= 1, got {self.prefixes}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; known: {', '.join(INITS)}")

    @property
    def resolved_aux_k(self) -> int:
        """aux_k with its default applied."""
        return self.aux_k if self.aux_k is not None else min(max(self.d_in // 2, 1), self.n_latents)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (inverse of `from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        """Config from a dict; unknown keys raise (so typos in cfg files are caught)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SAEConfig field(s): {', '.join(sorted(unknown))}")
        if d.get("variant", "relu") in VARIANTS and not VARIANTS[d.get("variant", "relu")].uses_k:
            d = {**d, "k": None}  # files written before relu configs dropped k carry an unused one
        return cls(**d)


class EncodeOut(NamedTuple):
    pre: jax.Array  # (B, S) pre-activations (x - b_dec) @ W_enc + b_enc
    z: jax.Array  # (B, S) latents


class ForwardOut(NamedTuple):
    pre: jax.Array  # (B, S)
    z: jax.Array  # (B, S)
    x_hat: jax.Array  # (B, D)


class LossOut(NamedTuple):
    loss: jax.Array  # () the differentiated total: mse (matryoshka: mean prefix mse) + sparsity + aux
    mse: jax.Array  # () mean over tokens and dims of (x̂ - x)²
    l1: jax.Array  # () mean over tokens of Σ_latents |z| (unscaled)
    l0: jax.Array  # () mean number of nonzero latents per token
    fvu: jax.Array  # () Σ(x̂ - x)² / Σ(x - mean_batch x)²
    sparsity: jax.Array  # () the variant's penalty as added to the loss (l1_coeff · l1 for relu)
    aux: jax.Array  # () auxiliary loss as added to the loss (AuxK)
    fired: jax.Array  # (S,) bool, latent was nonzero for some token of the batch
    min_active: jax.Array  # () smallest kept positive activation (inf if none)


@functools.partial(jax.jit, static_argnums=0)
def init_params(config: SAEConfig, key: jax.Array) -> Params:
    """Fresh float32 parameters (see `SAEConfig.init`); b_dec = 0, W_dec ~ N(0, 1) with unit rows.

    A jumprelu SAE also gets `threshold` [n] = `init_threshold`.
    """
    k_dec, k_enc, k_benc = jax.random.split(key, 3)
    D, S = config.d_in, config.n_latents
    W_dec = normalize_rows(jax.random.normal(k_dec, (S, D), jnp.float32))
    if config.init == "tied":
        W_enc, b_enc = W_dec.T, jnp.zeros((S,), jnp.float32)
    else:  # the reference's kaiming-uniform on a (1, S, D) tensor: fan_in = S·D
        bound_w, bound_b = (6.0 / (S * D)) ** 0.5, 1.0 / S**0.5
        W_enc = jax.random.uniform(k_enc, (D, S), jnp.float32, -bound_w, bound_w)
        b_enc = jax.random.uniform(k_benc, (S,), jnp.float32, -bound_b, bound_b)
    return {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": jnp.zeros((D,), jnp.float32),
            **get_variant(config.variant).init_extra(config)}


def param_names(config: SAEConfig) -> tuple[str, ...]:
    """The params an SAE of this config has: `PARAM_NAMES` plus its variant's extra ones."""
    return PARAM_NAMES + tuple(get_variant(config.variant).extra_params)


def encode(config: SAEConfig, params: Params, x_BD: jax.Array) -> EncodeOut:
    """Pre-activations and latents of a batch (inference rule of the variant; jumprelu reads
    `params["threshold"]`, batchtopk/matryoshka `config.threshold`)."""
    pre_BS = pre_activation(params, x_BD)
    return EncodeOut(pre_BS, get_variant(config.variant).activate(config, params, pre_BS))


def decode(config: SAEConfig, params: Params, z_BS: jax.Array) -> jax.Array:
    """x̂ = z @ W_dec + b_dec."""
    return core.decode(params, z_BS)


def forward(config: SAEConfig, params: Params, x_BD: jax.Array) -> ForwardOut:
    """Encode then decode (inference rule)."""
    pre_BS, z_BS = encode(config, params, x_BD)
    return ForwardOut(pre_BS, z_BS, decode(config, params, z_BS))


def loss(config: SAEConfig, params: Params, x_BD: jax.Array,
         dead_S: jax.Array | None = None) -> LossOut:
    """Training loss of a batch and its metrics; `dead_S` (bool mask) feeds the AuxK loss."""
    variant = get_variant(config.variant)
    pre_BS = pre_activation(params, x_BD)
    z_BS, x_hat_BD, min_active, penalty, recon = variant.train_forward(config, params, x_BD, pre_BS)
    err_BD = x_hat_BD - x_BD
    mse = jnp.mean(err_BD**2)
    sparsity = variant.sparsity_loss(config, z_BS) if penalty is None else penalty
    if dead_S is None:
        dead_S = jnp.zeros((config.n_latents,), bool)
    aux = variant.aux_loss(config, params, x_BD, x_hat_BD, pre_BS, dead_S)
    total_var = jnp.sum((x_BD - jnp.mean(x_BD, axis=0)) ** 2)
    return LossOut(
        loss=(mse if recon is None else recon) + sparsity + aux,
        mse=mse,
        l1=jnp.mean(jnp.sum(jnp.abs(z_BS), axis=-1)),
        l0=jnp.mean(jnp.sum(z_BS != 0, axis=-1).astype(jnp.float32)),
        fvu=jnp.sum(err_BD**2) / jnp.maximum(total_var, 1e-12),
        sparsity=sparsity,
        aux=aux,
        fired=jnp.any(z_BS != 0, axis=0),
        min_active=min_active,
    )


class SAEModule(nnx.Module):
    """Flax nnx view of an SAE: four `nnx.Param`s named like the params dict, calls the pure functions."""

    def __init__(self, config: SAEConfig, *, rngs: nnx.Rngs | None = None,
                 params: Params | None = None) -> None:
        if params is None:
            if rngs is None:
                raise ValueError("SAEModule needs rngs (to initialise) or params")
            params = init_params(config, rngs.params())
        self.config = config
        for name in param_names(config):
            setattr(self, name, nnx.Param(jnp.asarray(params[name], jnp.float32)))

    def params(self) -> Params:
        """The plain params dict (the arrays themselves, no copy)."""
        return {name: getattr(self, name)[...] for name in param_names(self.config)}

    def __call__(self, x_BD: jax.Array) -> ForwardOut:
        return forward(self.config, self.params(), x_BD)
