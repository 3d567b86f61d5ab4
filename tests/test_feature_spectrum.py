"""PCA bound on the FVU of the cached features (mammosae_jax.analysis.spectrum)."""
from __future__ import annotations

import numpy as np
import pytest

from cache.reader import open_cache
from mammosae_jax.analysis.spectrum import pca_fvu, split_pca_fvu, token_covariance
from helpers.train_data import DIM, GRID, write_train_cache


@pytest.fixture(scope="module")
def spectrum_cache(tmp_path_factory):
    return open_cache(write_train_cache(tmp_path_factory.mktemp("spectrum") / "c", n_images=36))


def _tokens(cache, images) -> np.ndarray:
    return np.concatenate([cache.feature_map(int(i)).reshape(-1, DIM) for i in images]).astype(np.float64)


def test_covariance_matches_numpy_over_chunks(spectrum_cache) -> None:
    images = spectrum_cache.split_indices("training")
    x = _tokens(spectrum_cache, images)
    cov, n = token_covariance(spectrum_cache, images, chunk_tokens=3 * int(np.prod(GRID)))  # several chunks
    assert n == x.shape[0]
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False, bias=True), rtol=1e-10, atol=1e-12)


def test_pca_fvu_equals_the_error_of_the_rank_r_projection(spectrum_cache) -> None:
    images = spectrum_cache.split_indices("test")
    x = _tokens(spectrum_cache, images)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    got = split_pca_fvu(spectrum_cache, "test", [0, 3, 8, DIM, 10 * DIM])
    for r in (0, 3, 8, DIM):
        recon = centred @ vt[:r].T @ vt[:r]
        expected = ((centred - recon) ** 2).sum() / (centred**2).sum()
        assert got[r] == pytest.approx(expected, abs=1e-9)
    assert got[DIM] == pytest.approx(0.0, abs=1e-9) and got[10 * DIM] == got[DIM]
    assert got[0] == pytest.approx(1.0)


def test_pca_fvu_of_a_known_spectrum() -> None:
    cov = np.diag([4.0, 3.0, 2.0, 1.0])
    assert pca_fvu(cov, [1, 2]) == {1: pytest.approx(0.6), 2: pytest.approx(0.3)}


def test_empty_selection_is_an_error(spectrum_cache) -> None:
    with pytest.raises(ValueError, match="no tokens"):
        token_covariance(spectrum_cache, [])
