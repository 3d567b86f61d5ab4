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


def pre_bias(params: Params) -> jax.Array:
    """c = b_enc - b_dec @ W_enc, so that (x - b_dec) @ W_enc + b_enc = x @ W_enc + c.

    Folding the tied bias into the encoder bias makes its encoder-side gradient a matrix-vector
    product instead of a (B, D) x (D, S) matmul in every backward pass.
    """
    return params["b_enc"] - params["b_dec"] @ params["W_enc"]


@jax.custom_vjp
def selected_pre(W_enc_DS: jax.Array, c_S: jax.Array, x_BD: jax.Array, idx_BK: jax.Array,
                 pre_BS: jax.Array) -> jax.Array:
    """(x @ W_enc + c)[b, idx[b, k]], read from `pre_BS` (which must hold x @ W_enc + c).

    The value costs nothing (the dense pre-activations exist for the top-k selection); the
    gradient is exact for W_enc, c and x but touches only the k selected columns of W_enc (one
    scatter-add of k rows per token) and never forms a dense (B, S) cotangent. `pre_BS` is a
    value hint and receives no gradient.
    """
    return jnp.take_along_axis(pre_BS, idx_BK, axis=1)


def _selected_pre_fwd(W_enc_DS, c_S, x_BD, idx_BK, pre_BS):
    return jnp.take_along_axis(pre_BS, idx_BK, axis=1), (W_enc_DS, x_BD, idx_BK)


def _selected_pre_bwd(res, g_BK):
    W_enc_DS, x_BD, idx_BK = res
    D, S = W_enc_DS.shape
    upd_BKD = g_BK[:, :, None] * x_BD[:, None, :]
    # indices come from top_k: always in bounds, so skip XLA's bounds handling
    d_W_enc = jnp.zeros((S, D), g_BK.dtype).at[idx_BK].add(upd_BKD, mode="promise_in_bounds").T
    d_c = jnp.zeros((S,), g_BK.dtype).at[idx_BK].add(g_BK, mode="promise_in_bounds")
    d_x = jnp.einsum("bk,bkd->bd", g_BK, jnp.take(W_enc_DS.T, idx_BK, axis=0, mode="clip"))  # dropped by XLA if unused
    return d_W_enc, d_c, d_x, None, None


selected_pre.defvjp(_selected_pre_fwd, _selected_pre_bwd)


def decode_sparse(params: Params, vals_BK: jax.Array, idx_BK: jax.Array) -> jax.Array:
    """Σ_k vals[b, k] · W_dec[idx[b, k]] (no bias): only k dictionary rows per token are read."""
    rows_BKD = jnp.take(params["W_dec"], idx_BK, axis=0, mode="clip")  # top_k indices: in bounds
    return jnp.einsum("bk,bkd->bd", vals_BK, rows_BKD)


def zero() -> jax.Array:
    """A float32 scalar zero (for variants without a penalty or auxiliary loss)."""
    return jnp.zeros((), jnp.float32)
