"""How many dimensions the cached features need: the PCA bound on any sparse code's FVU.

A reconstruction from r directions cannot beat the best rank-r affine one (PCA), and the FVU of
that is ``1 - (sum of the r largest covariance eigenvalues) / trace``, with the same per-dimension
mean as the SAE's FVU. An SAE with mean L0 = r can do better than PCA only by choosing different
latents for different tokens, so the PCA curve tells whether a sparsity / FVU target is plausible.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cache.reader import FeatureCache


def token_covariance(cache: FeatureCache, images: Sequence[int],
                     chunk_tokens: int = 8192) -> tuple[np.ndarray, int]:
    """(C, C) float64 covariance (divided by n) of every token of `images`, and the token count."""
    c = cache.dim
    total_C = np.zeros(c)
    gram_CC = np.zeros((c, c))
    n = 0
    per_image = int(np.prod(cache.grid))
    step = max(1, chunk_tokens // per_image)
    images = [int(i) for i in images]
    for start in range(0, len(images), step):
        x_TC = np.concatenate([cache.feature_map(i).reshape(-1, c) for i in images[start:start + step]])
        x_TC = x_TC.astype(np.float64)
        total_C += x_TC.sum(axis=0)
        gram_CC += x_TC.T @ x_TC
        n += x_TC.shape[0]
    if n == 0:
        raise ValueError("no tokens: the image selection is empty")
    mean_C = total_C / n
    return gram_CC / n - np.outer(mean_C, mean_C), n


def pca_fvu(cov_CC: np.ndarray, ranks: Sequence[int]) -> dict[int, float]:
    """FVU of the best rank-r affine reconstruction, for each r in `ranks`."""
    eig = np.clip(np.linalg.eigvalsh(cov_CC)[::-1], 0.0, None)
    explained = np.concatenate([[0.0], np.cumsum(eig)]) / max(float(eig.sum()), np.finfo(np.float64).tiny)
    return {int(r): float(1.0 - explained[min(max(int(r), 0), eig.size)]) for r in ranks}


def split_pca_fvu(cache: FeatureCache, split: str, ranks: Sequence[int]) -> dict[int, float]:
    """`pca_fvu` over all tokens of one split of the cache."""
    cov_CC, _ = token_covariance(cache, cache.split_indices(split))
    return pca_fvu(cov_CC, ranks)
