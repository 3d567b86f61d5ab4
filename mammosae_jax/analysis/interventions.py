"""Top-k latent interventions, evaluated for every (mode, k) at once.

Everything after the SAE's activation is affine: decoder, spatial mean and linear head. For a
latent mask ``m`` and an image's mean latent vector ``zbar`` (W_dec stored [n, d_in]):

    logit(m) = (m * zbar) @ (W_dec @ W_cls.T) + (b_dec @ W_cls.T + b_cls)
             = (m * zbar) @ u + c

``fold_head`` derives ``u [n, K]`` and ``c [K]`` from the SAE's own decode function (a
reverse-mode Jacobian, so any affine decoder works), and ``masked_logits`` evaluates all masks in
one vmap-ed, jit-compiled call: ``M`` matrix products ``[N, n] @ [n, K]``. ``exact_logits`` is the
reference's computation (decode every position, pool, apply the head) for verification.

T_k is the union over classes of each class's first k latents; mode ``on`` keeps only T_k, ``off``
removes it. The error term ``x - x_hat`` is dropped unless passed as ``extra_NK`` (its logit
contribution, ``(xbar - decode(zbar)) @ W_cls.T``).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mammosae_jax.models import sae as sae_lib
from mammosae_jax.analysis.heads import Head
from mammosae_jax.analysis.ranking import Ranking, rank_positions

DEFAULT_KS = (0, 1, 5, 10, 50, 100, 250, 500, 1000, 5000, 10000, 16384)
MODES = ("on", "off")


class FoldedHead(NamedTuple):
    """The head composed with the decoder: ``logit = z @ u + c`` for a pooled latent vector z."""

    u_nK: jax.Array
    c_K: jax.Array


class Sweep(NamedTuple):
    """Logits of every intervention: ``logits_MNK[i]`` belongs to ``(modes[i], ks[i])``."""

    modes: tuple[str, ...]
    ks: tuple[int, ...]
    n_latents_changed: np.ndarray  # [M] |T_k|: latents kept (on) or removed (off)
    logits_MNK: np.ndarray


def k_list(ks, n_latents: int) -> tuple[int, ...]:
    """``ks`` clipped to ``[0, n_latents]``, duplicates removed, order kept."""
    out: list[int] = []
    for k in ks:
        if int(k) < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        k = min(int(k), n_latents)
        if k not in out:
            out.append(k)
    return tuple(out)


def topk_union_masks(ranking: Ranking, ks) -> np.ndarray:
    """``[len(ks), n]`` bool: latent j is in T_k iff its best rank over classes is < k."""
    best_n = rank_positions(ranking).min(axis=0)
    return best_n[None, :] < np.asarray(ks, np.int64)[:, None]


def sweep_masks(ranking: Ranking, ks, modes=MODES) -> tuple[np.ndarray, tuple[str, ...], tuple[int, ...], np.ndarray]:
    """Float masks ``[M, n]`` (1 = keep) for every (mode, k), with their labels and |T_k|."""
    in_T = topk_union_masks(ranking, ks)
    masks, mode_of, k_of, size = [], [], [], []
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")
        masks.append(in_T if mode == "on" else ~in_T)
        mode_of += [mode] * len(ks)
        k_of += list(ks)
        size += in_T.sum(axis=1).tolist()
    return np.concatenate(masks).astype(np.float32), tuple(mode_of), tuple(int(k) for k in k_of), np.asarray(size)


def fold_head(decode, n_latents: int, head: Head) -> FoldedHead:
    """``u = d(head(decode(z)))/dz`` and ``c = head(decode(0))`` for an affine ``decode``."""
    w_KC = jnp.asarray(head.weight)
    b_K = jnp.asarray(head.bias)

    def logit(z_n):
        return decode(z_n[None])[0] @ w_KC.T + b_K

    zero_n = jnp.zeros((n_latents,), jnp.float32)
    u_Kn = jax.jacrev(logit)(zero_n)
    return FoldedHead(u_nK=u_Kn.T, c_K=logit(zero_n))


def fold_head_params(params: dict, head: Head) -> FoldedHead:
    """The same fold written out for the ReLU SAE's parameters (W_dec [n, d_in], b_dec [d_in])."""
    w_KC = jnp.asarray(head.weight)
    return FoldedHead(params["W_dec"] @ w_KC.T, params["b_dec"] @ w_KC.T + jnp.asarray(head.bias))


@jax.jit
def masked_logits(zbar_Nn, masks_Mn, folded: FoldedHead, extra_NK=None):
    """Logits ``[M, N, K]`` of ``(m * zbar) @ u + c (+ extra)`` for every mask, in one call."""

    def one(mask_n):
        logits_NK = zbar_Nn @ (mask_n[:, None] * folded.u_nK) + folded.c_K
        return logits_NK if extra_NK is None else logits_NK + extra_NK

    return jax.vmap(one)(masks_Mn)


def error_logits(zbar_Nn, xbar_NC, decode, head: Head) -> jax.Array:
    """Logit contribution ``[N, K]`` of the pooled SAE error term ``xbar - decode(zbar)``."""
    err_NC = jnp.asarray(xbar_NC) - decode(jnp.asarray(zbar_Nn))
    return err_NC @ jnp.asarray(head.weight).T


def run_sweep(zbar_Nn, folded: FoldedHead, ranking: Ranking, ks, modes=MODES, extra_NK=None) -> Sweep:
    """All (mode, k) interventions of a ranking on cached mean latents."""
    masks, mode_of, k_of, size = sweep_masks(ranking, ks, modes)
    logits = masked_logits(jnp.asarray(zbar_Nn), jnp.asarray(masks), folded, extra_NK)
    return Sweep(mode_of, k_of, size, np.asarray(logits))


def ablation_effects(zbar_Nn, u_nK, weights_CN: np.ndarray) -> np.ndarray:
    """Mean change of the logit when each single latent is removed: ``[n, n_classes]``.

    Removing latent j changes image i's logits by ``-zbar_ij * u_j``. Column c averages, over the
    units of class c (``weights_CN`` from ``ranking.unit_weights``), the change of output 0 for a
    binary head and of output c (the class's own logit) for a multi-class head.
    """
    u = np.asarray(u_nK, np.float64)
    w = np.asarray(weights_CN, np.float64)
    class_mean_Cn = (w @ np.asarray(zbar_Nn, np.float64)) / np.maximum(w.sum(1, keepdims=True), 1)
    out_of_class = np.zeros(w.shape[0], np.int64) if u.shape[1] == 1 else np.arange(w.shape[0])
    return -(class_mean_Cn.T * u[:, out_of_class])


def make_exact_fn(config: sae_lib.SAEConfig, head: Head, keep_error: bool):
    """Jit-compiled reference computation: ``(params, maps [B,H,W,C], masks [M,n]) -> [M,B,K]``.

    Encodes every position, zeroes the masked latents, decodes every position, pools, applies the
    head (adding the pooled error term when ``keep_error``). Masks are processed one at a time
    (``lax.map``) so memory stays at one batch of decoded positions.
    """
    w_KC = jnp.asarray(head.weight)
    b_K = jnp.asarray(head.bias)

    @jax.jit
    def exact(params, maps_BHWC, masks_Mn):
        def decode(z):
            return sae_lib.decode(config, params, z)

        b, h, w, c = maps_BHWC.shape
        x_TC = maps_BHWC.reshape(b * h * w, c)
        z_Tn = sae_lib.encode(config, params, x_TC).z
        err_BC = (x_TC - decode(z_Tn)).reshape(b, h * w, c).mean(1)

        def one(mask_n):
            pooled_BC = decode(z_Tn * mask_n).reshape(b, h * w, c).mean(1)
            if keep_error:
                pooled_BC = pooled_BC + err_BC
            return pooled_BC @ w_KC.T + b_K

        return jax.lax.map(one, masks_Mn)

    return exact


def exact_logits(cache, sae, head: Head, masks_Mn: np.ndarray, images: np.ndarray, *, keep_error: bool = False, batch_size: int = 1) -> np.ndarray:
    """``[M, N, K]`` logits by the reference's route, streaming ``images`` from the cache."""
    from tqdm import tqdm

    fn = make_exact_fn(sae.config, head, keep_error)
    masks = jnp.asarray(masks_Mn, jnp.float32)
    out = np.zeros((masks.shape[0], len(images), head.n_outputs), np.float32)
    position = {int(i): k for k, i in enumerate(images)}
    with tqdm(total=len(images), desc="exact interventions", unit="img") as bar:
        for idx, maps in cache.iter_images(batch_size, images=np.asarray(images)):
            b = len(idx)
            if b < batch_size:
                maps = np.concatenate([maps, np.zeros((batch_size - b, *maps.shape[1:]), maps.dtype)])
            logits = np.asarray(fn(sae.params, jnp.asarray(maps, jnp.float32), masks))
            out[:, [position[int(i)] for i in idx]] = logits[:, :b]
            bar.update(b)
    return out
