"""The SAE equations shared by the model and every variant (a leaf: imports nothing of the package).

    pre = (x - b_dec) @ W_enc + b_enc  =  x @ W_enc + (b_enc - b_dec @ W_enc)
    x̂   = z @ W_dec + b_dec           W_dec [n, d_in] with unit-norm rows
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]
PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
THRESHOLD = "threshold"  # the per-latent threshold [n] of JumpReLU SAEs (SAELens's tensor name)


class Settings(Protocol):
    """What a variant reads of an SAE's config (`models.sae.SAEConfig` provides it)."""

    n_latents: int
    k: int | None
    l1_coeff: float
    aux_coeff: float
    threshold: float | None
    bandwidth: float
    init_threshold: float
    prefixes: int

    @property
    def resolved_aux_k(self) -> int: ...


class TrainForward(NamedTuple):
    """A variant's training-time forward pass."""

    z: jax.Array  # (B, S) dense latents (used for metrics; gradients flow only where the variant says)
    x_hat: jax.Array  # (B, D) reconstruction, b_dec included
    min_active: jax.Array  # () smallest kept positive activation (batchtopk learns its threshold from it)
    penalty: jax.Array | None = None  # () the sparsity penalty, when the variant computes it here (jumprelu)
    recon: jax.Array | None = None  # () reconstruction loss replacing mean (x̂ - x)² (matryoshka's prefixes)


def pre_bias(params: Params) -> jax.Array:
    """c = b_enc - b_dec @ W_enc, so that (x - b_dec) @ W_enc + b_enc = x @ W_enc + c.

    Folding the tied bias into the encoder bias makes its encoder-side gradient a matrix-vector
    product instead of a (B, D) x (D, S) matmul in every backward pass.
    """
    return params["b_enc"] - params["b_dec"] @ params["W_enc"]


def pre_activation(params: Params, x_BD: jax.Array) -> jax.Array:
    """(x - b_dec) @ W_enc + b_enc, computed as x @ W_enc + c (`pre_bias`): same value, a cheaper backward."""
    return x_BD @ params["W_enc"] + pre_bias(params)


def decode(params: Params, z_BS: jax.Array) -> jax.Array:
    """x̂ = z @ W_dec + b_dec."""
    return z_BS @ params["W_dec"] + params["b_dec"]


def normalize_rows(W_dec_SD: jax.Array) -> jax.Array:
    """Rescale every dictionary vector (row of W_dec) to unit L2 norm."""
    return W_dec_SD / jnp.linalg.norm(W_dec_SD, axis=-1, keepdims=True)


def remove_parallel_component(W_dec_SD: jax.Array, grad_SD: jax.Array) -> jax.Array:
    """Gradient minus its component along each (unit-norm) dictionary vector."""
    unit_SD = normalize_rows(W_dec_SD)
    return grad_SD - jnp.sum(grad_SD * unit_SD, axis=-1, keepdims=True) * unit_SD


def constrain(params: Params) -> Params:
    """Project params back onto their constraints: unit-norm W_dec rows, a non-negative threshold."""
    out = {**params, "W_dec": normalize_rows(params["W_dec"])}
    if THRESHOLD in params:
        out[THRESHOLD] = jnp.maximum(params[THRESHOLD], 0.0)
    return out


def zero() -> jax.Array:
    """A float32 scalar zero (for variants without a penalty or auxiliary loss)."""
    return jnp.zeros((), jnp.float32)
