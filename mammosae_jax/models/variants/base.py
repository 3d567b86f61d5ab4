"""What a variant provides, the base the top-k variants share (`TopKFamily`: AuxK, no penalty) and
their sparse gather helpers.

A variant owns one decision: which latents are active. It supplies the inference activation,
the training-time reconstruction (free to be sparse), its sparsity penalty and an auxiliary
loss. Everything else (loss assembly, metrics) is `models/sae.py`; the equations it shares are
`models/core.py`. Variants never import `sae.py`: they read the config through `core.Settings`.
"""
from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp

from mammosae_jax.models.core import Params, Settings, TrainForward, pre_bias, zero

__all__ = ["Params", "Settings", "TrainForward", "Variant", "pre_bias", "zero"]



class Variant(Protocol):
    """The plug-in interface; one implementation per file, registered in `variants/__init__.py`."""

    name: str
    uses_k: bool
    """whether the variant has a k (active latents per token); relu does not."""
    learns_threshold: bool
    """whether training learns a scalar inference threshold (`Settings.threshold`, batchtopk)."""
    extra_params: tuple[str, ...]
    """params beyond `core.PARAM_NAMES` (jumprelu: the per-latent threshold)."""

    def init_extra(self, config: Settings) -> Params:
        """Initial values of `extra_params` (float32)."""

    def activate(self, config: Settings, params: Params, pre_BS: jax.Array) -> jax.Array:
        """Inference activation: pre-activations -> dense latents (`params` holds any extra params)."""

    def train_forward(self, config: Settings, params: Params, x_BD: jax.Array,
                      pre_BS: jax.Array) -> TrainForward:
        """Training reconstruction of a batch whose pre-activations are `pre_BS`."""

    def sparsity_loss(self, config: Settings, z_BS: jax.Array) -> jax.Array:
        """Penalty added to the loss (0 for variants whose sparsity is structural)."""

    def aux_loss(self, config: Settings, params: Params, x_BD: jax.Array, x_hat_BD: jax.Array,
                 pre_BS: jax.Array, dead_S: jax.Array) -> jax.Array:
        """Auxiliary loss given the mask of dead latents (0 for variants without one)."""


def scatter_dense(vals_BK: jax.Array, idx_BK: jax.Array, n_latents: int) -> jax.Array:
    """Dense (B, S) latents with `vals_BK` at `idx_BK` and zeros elsewhere."""
    rows_B1 = jnp.arange(vals_BK.shape[0])[:, None]
    return jnp.zeros((vals_BK.shape[0], n_latents), vals_BK.dtype).at[rows_B1, idx_BK].set(vals_BK)


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


def auxk_loss(config: Settings, params: Params, x_BD: jax.Array, x_hat_BD: jax.Array,
              pre_BS: jax.Array, dead_S: jax.Array) -> jax.Array:
    """AuxK: the top-k_aux *dead* latents reconstruct the (fixed) residual x - x̂.

    Normalised by the batch's total variance and scaled by min(n_dead / k_aux, 1), times
    `config.aux_coeff`. Gradients reach only the selected dead latents. When nothing is dead
    the branch is skipped at run time (`lax.cond`), so healthy training pays nothing for it.
    Unlike the main path this one is dense (k_aux = d_in/2 is large: a (B, k_aux, D) gather and
    scatter-add cost more than the 4 matmuls here, measured on CPU).
    """
    if config.aux_coeff == 0.0:
        return zero()
    k_aux = config.resolved_aux_k

    def compute(_):
        aux_pre_BS = x_BD @ params["W_enc"] + pre_bias(params)  # own copy: its dense backward stays in the branch
        _, idx_BK = jax.lax.top_k(jnp.where(dead_S, jax.lax.stop_gradient(aux_pre_BS), -jnp.inf), k_aux)
        vals_BK = jnp.where(dead_S[idx_BK], jax.nn.relu(jnp.take_along_axis(aux_pre_BS, idx_BK, axis=1)), 0.0)
        e_hat_BD = scatter_dense(vals_BK, idx_BK, config.n_latents) @ params["W_dec"]
        e_BD = jax.lax.stop_gradient(x_BD - x_hat_BD)
        total_var = jnp.sum((x_BD - jnp.mean(x_BD, axis=0)) ** 2)
        scale = jnp.minimum(jnp.sum(dead_S) / k_aux, 1.0)
        return config.aux_coeff * scale * jnp.sum((e_hat_BD - e_BD) ** 2) / jnp.maximum(total_var, 1e-12)

    return jax.lax.cond(jnp.any(dead_S), compute, lambda _: zero(), None)


class NoExtraParams:
    """Mixin of the variants whose params are exactly `core.PARAM_NAMES`."""

    learns_threshold = False
    extra_params: tuple[str, ...] = ()

    def init_extra(self, config: Settings) -> Params:
        return {}


class TopKFamily(NoExtraParams):
    """Shared base of the variants with a k (TopK, BatchTopK): no penalty, AuxK for dead latents."""

    uses_k = True

    def sparsity_loss(self, config: Settings, z_BS: jax.Array) -> jax.Array:
        return zero()

    def aux_loss(self, config: Settings, params: Params, x_BD: jax.Array, x_hat_BD: jax.Array,
                 pre_BS: jax.Array, dead_S: jax.Array) -> jax.Array:
        return auxk_loss(config, params, x_BD, x_hat_BD, pre_BS, dead_S)
