"""What a variant provides, and the sparse gather helpers that the top-k variants share.

A variant owns one decision: which latents are active. It supplies the inference activation,
the training-time reconstruction (free to be sparse), its sparsity penalty and an auxiliary
loss. Everything else (loss assembly, metrics, the optimiser) is shared in `sae.py`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

import jax
import jax.numpy as jnp

if TYPE_CHECKING:  # pragma: no cover
    from mammosae_jax.sae import Params, SAEConfig


class TrainForward(NamedTuple):
    """A variant's training-time forward pass."""

    z: jax.Array  # (B, S) dense latents (used for metrics; gradients flow only where the variant says)
    x_hat: jax.Array  # (B, D) reconstruction, b_dec included
    min_active: jax.Array  # () smallest kept positive activation (batchtopk learns its threshold from it)


class Variant(Protocol):
    """The plug-in interface; one implementation per file, registered in `variants/__init__.py`."""

    name: str

    def activate(self, config: SAEConfig, pre_BS: jax.Array) -> jax.Array:
        """Inference activation: pre-activations -> dense latents."""

    def train_forward(self, config: SAEConfig, params: Params, x_BD: jax.Array,
                      pre_BS: jax.Array) -> TrainForward:
        """Training reconstruction of a batch whose pre-activations are `pre_BS`."""

    def sparsity_loss(self, config: SAEConfig, z_BS: jax.Array) -> jax.Array:
        """Penalty added to the loss (0 for variants whose sparsity is structural)."""

    def aux_loss(self, config: SAEConfig, params: Params, x_BD: jax.Array, x_hat_BD: jax.Array,
                 pre_BS: jax.Array, dead_S: jax.Array) -> jax.Array:
        """Auxiliary loss given the mask of dead latents (0 for variants without one)."""


def scatter_dense(vals_BK: jax.Array, idx_BK: jax.Array, n_latents: int) -> jax.Array:
    """Dense (B, S) latents with `vals_BK` at `idx_BK` and zeros elsewhere."""
    rows_B1 = jnp.arange(vals_BK.shape[0])[:, None]
    return jnp.zeros((vals_BK.shape[0], n_latents), vals_BK.dtype).at[rows_B1, idx_BK].set(vals_BK)


def gather_pre(params: Params, xc_BD: jax.Array, idx_BK: jax.Array) -> jax.Array:
    """Pre-activations of only the selected latents, recomputed from gathered encoder columns.

    Differentiating this touches only the k gathered columns of W_enc (a scatter-add), unlike
    differentiating through a dense (B, S) pre-activation matrix.
    """
    w_BKD = jnp.take(params["W_enc"].T, idx_BK, axis=0)
    return jnp.einsum("bd,bkd->bk", xc_BD, w_BKD) + params["b_enc"][idx_BK]


def decode_sparse(params: Params, vals_BK: jax.Array, idx_BK: jax.Array) -> jax.Array:
    """Σ_k vals[b, k] · W_dec[idx[b, k]] (no bias): only k dictionary rows per token are read."""
    rows_BKD = jnp.take(params["W_dec"], idx_BK, axis=0)
    return jnp.einsum("bk,bkd->bd", vals_BK, rows_BKD)


def zero() -> jax.Array:
    """A float32 scalar zero (for variants without a penalty or auxiliary loss)."""
    return jnp.zeros((), jnp.float32)
