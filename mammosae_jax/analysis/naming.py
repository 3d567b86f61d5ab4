"""Name SAE latents by comparing their decoder directions with text prompts in Mammo-CLIP's space.

Mammo-CLIP embeds an image as ``normalise(W_img · mean_hw(features) + b_img)``
(``image_projection.projection``, ``W_img`` [E, C]) and a text as ``normalise(text_projection(...))``
in the same E-dim space (E = 512). Latent ``j`` adds ``zbar_j · d_j`` to the pooled features
(``d_j = W_dec[j]``, [C]), so it moves the image embedding along ``W_img d_j``: that linear part is
the latent's direction in CLIP space. The bias ``b_img`` is the same for every latent (it belongs
to the mean image, not to a latent), so it is **left out** by default; ``include_bias=True`` gives
``W_img d_j + b_img`` (the embedding of an image whose pooled feature is ``d_j``) for comparison.

Scores are cosines between unit ``W_img d_j`` and unit prompt embeddings. Because C > E, part of a
decoder direction lies in the null space of ``W_img`` and is invisible to the text side:
``proj_norm = |W_img d_j| / |d_j|`` reports how much survives (low = the name is unreliable).
``center=True`` subtracts the mean prompt embedding first, so that what all prompts share
(the "mammography report" direction) does not dominate the reverse search.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cache.prompt_embeddings import PromptEmbeddings

_EPS = 1e-12


class NamingError(ValueError):
    """Latents or prompts that cannot be compared; the message says why."""


class LatentNames(NamedTuple):
    """Best prompts for each requested latent, best first."""

    latents_L: np.ndarray  # latent ids
    proj_norm_L: np.ndarray  # |W_img d_j| / |d_j|
    prompt_LK: np.ndarray  # prompt indices
    cosine_LK: np.ndarray


class PromptMatches(NamedTuple):
    """Best latents (among the candidates) for each prompt, best first."""

    latent_PK: np.ndarray  # latent ids
    cosine_PK: np.ndarray


def _unit(x_NE: jax.Array) -> tuple[jax.Array, jax.Array]:
    norm_N = jnp.linalg.norm(x_NE, axis=-1)
    return x_NE / jnp.maximum(norm_N, _EPS)[..., None], norm_N


@jax.jit
def _directions(W_dec_NC: jax.Array, W_img_EC: jax.Array, bias_E: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Unit CLIP-space directions [N, E] and the fraction of each decoder direction kept."""
    dec_norm_N = jnp.linalg.norm(W_dec_NC, axis=-1)
    proj_NE = W_dec_NC @ W_img_EC.T
    unit_NE, _ = _unit(proj_NE + bias_E)
    return unit_NE, jnp.linalg.norm(proj_NE, axis=-1) / jnp.maximum(dec_norm_N, _EPS)


def prompt_matrix(text_PE: np.ndarray, center: bool = False) -> jax.Array:
    """Unit prompt embeddings [P, E], optionally with their mean removed first."""
    t_PE = jnp.asarray(text_PE, jnp.float32)
    if center:
        if t_PE.shape[0] < 2:
            raise NamingError("centering needs at least two prompts")
        t_PE = t_PE - t_PE.mean(axis=0)
    return _unit(t_PE)[0]


def latent_directions(W_dec_NC: np.ndarray, emb: PromptEmbeddings, include_bias: bool = False
                      ) -> tuple[jax.Array, jax.Array]:
    """``(unit W_img d_j [+ b_img] [N, E], |W_img d_j| / |d_j| [N])`` for decoder rows ``W_dec``."""
    W = jnp.asarray(W_dec_NC, jnp.float32)
    if W.ndim != 2 or W.shape[1] != emb.dim:
        raise NamingError(f"the SAE's decoder directions have {W.shape[-1]} dims but the CLIP image projection "
                          f"takes {emb.dim} inputs: was the SAE trained on features of this encoder?")
    bias_E = jnp.asarray(emb.image_proj_bias_E if include_bias else np.zeros_like(emb.image_proj_bias_E))
    return _directions(W, jnp.asarray(emb.image_proj_EC), bias_E)


@jax.jit
def cosine_matrix(dirs_NE: jax.Array, text_PE: jax.Array) -> jax.Array:
    """Cosines [N, P] between unit directions and unit prompts."""
    return dirs_NE @ text_PE.T


def name_latents(W_dec_NC: np.ndarray, emb: PromptEmbeddings, latents: np.ndarray, *, k: int = 5,
                 include_bias: bool = False, center: bool = False) -> LatentNames:
    """The ``k`` prompts closest to each of ``latents`` (ids into the rows of ``W_dec``)."""
    latents = _check_ids(latents, W_dec_NC.shape[0])
    k = min(k, len(emb.texts))
    dirs_LE, keep_L = latent_directions(np.asarray(W_dec_NC)[latents], emb, include_bias)
    sim_LP = cosine_matrix(dirs_LE, prompt_matrix(emb.text_PE, center))
    cos_LK, idx_LK = jax.lax.top_k(sim_LP, k)
    return LatentNames(latents, np.asarray(keep_L), np.asarray(idx_LK), np.asarray(cos_LK))


def match_prompts(W_dec_NC: np.ndarray, emb: PromptEmbeddings, candidates: np.ndarray | None = None, *,
                  k: int = 10, include_bias: bool = False, center: bool = False) -> PromptMatches:
    """For every prompt, the ``k`` candidate latents (default: all) whose directions are closest."""
    n = W_dec_NC.shape[0]
    candidates = np.arange(n) if candidates is None else _check_ids(candidates, n)
    k = min(k, len(candidates))
    dirs_NE, _ = latent_directions(np.asarray(W_dec_NC)[candidates], emb, include_bias)
    sim_PN = cosine_matrix(prompt_matrix(emb.text_PE, center), dirs_NE)
    cos_PK, pos_PK = jax.lax.top_k(sim_PN, k)
    return PromptMatches(candidates[np.asarray(pos_PK)], np.asarray(cos_PK))


def similarity_table(W_dec_NC: np.ndarray, emb: PromptEmbeddings, latents: np.ndarray, *,
                     include_bias: bool = False, center: bool = False) -> np.ndarray:
    """The full cosine matrix [L, P] of ``latents`` against every prompt (for the figure)."""
    latents = _check_ids(latents, W_dec_NC.shape[0])
    dirs_LE, _ = latent_directions(np.asarray(W_dec_NC)[latents], emb, include_bias)
    return np.asarray(cosine_matrix(dirs_LE, prompt_matrix(emb.text_PE, center)))


def _check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(ids, np.int64).reshape(-1)
    if ids.size == 0:
        raise NamingError("no latents to name")
    bad = ids[(ids < 0) | (ids >= n)]
    if bad.size:
        raise NamingError(f"latent ids {bad[:5].tolist()} are outside 0..{n - 1}")
    return ids


__all__ = ["LatentNames", "NamingError", "PromptMatches", "cosine_matrix", "latent_directions", "match_prompts",
           "name_latents", "prompt_matrix", "similarity_table"]
