"""The linear identity behind vectorised interventions, checked against the reference computation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammosae_jax.models import sae as sae_mod
from mammosae_jax.analysis.heads import make_head
from mammosae_jax.models.sae_io import SAE
from mammosae_jax.analysis.interventions import (
    DEFAULT_KS,
    ablation_effects,
    error_logits,
    fold_head,
    fold_head_params,
    k_list,
    make_exact_fn,
    masked_logits,
    run_sweep,
    sweep_masks,
    topk_union_masks,
)
from mammosae_jax.analysis.latent_stats import make_batch_fn
from mammosae_jax.analysis.metrics import binary_metrics
from mammosae_jax.analysis.ranking import make_ranking, unit_weights

D, N_LAT, H, W, B = 8, 32, 3, 4, 6


@pytest.fixture(scope="module")
def setup():
    config = sae_mod.SAEConfig(d_in=D, n_latents=N_LAT, init="tied")
    params = sae_mod.init_params(config, jax.random.key(0))
    params["b_dec"] = 0.1 * jax.random.normal(jax.random.key(1), (D,))
    params["b_enc"] = 0.2 * jax.random.normal(jax.random.key(2), (N_LAT,))

    sae = SAE(config, params)
    encode, decode = sae.encode, sae.decode
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(B, H, W, D)).astype(np.float32)
    head = make_head(rng.normal(size=(1, D)), [0.3], "Mass", ["0", "1"])
    stats = jax.device_get(make_batch_fn(config)(sae.params, jnp.asarray(maps), jnp.ones(B, bool)))
    return sae, params, encode, decode, maps, head, stats


def test_fold_via_decoder_jacobian_equals_explicit_formula(setup):
    _, params, _, decode, _, head, _ = setup
    a, b = fold_head(decode, N_LAT, head), fold_head_params(params, head)
    np.testing.assert_allclose(a.u_nK, b.u_nK, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a.c_K, b.c_K, rtol=1e-6, atol=1e-7)


def test_mean_of_decoded_positions_is_decode_of_mean_latent(setup):
    _, _, encode, decode, maps, _, stats = setup
    z = encode(jnp.asarray(maps.reshape(-1, D)))
    pooled_decoded = np.asarray(decode(z)).reshape(B, H * W, D).mean(1)
    np.testing.assert_allclose(np.asarray(decode(stats.zbar_Bn)), pooled_decoded, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.xbar_BC, maps.reshape(B, -1, D).mean(1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("keep_error", [False, True])
def test_vectorised_equals_exact_for_random_masks(setup, keep_error):
    sae, _, encode, decode, maps, head, stats = setup
    masks = (np.random.default_rng(3).random((9, N_LAT)) < 0.5).astype(np.float32)
    masks[0], masks[1] = 0.0, 1.0
    folded = fold_head(decode, N_LAT, head)
    extra = error_logits(stats.zbar_Bn, stats.xbar_BC, decode, head) if keep_error else None
    fast = np.asarray(masked_logits(jnp.asarray(stats.zbar_Bn), jnp.asarray(masks), folded, extra))
    exact_fn = make_exact_fn(sae.config, head, keep_error)
    exact = np.asarray(exact_fn(sae.params, jnp.asarray(maps), jnp.asarray(masks)))
    assert fast.shape == exact.shape == (9, B, 1)
    np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-5)
    if keep_error:  # all latents kept + error term = the raw features
        raw = maps.reshape(B, -1, D).mean(1) @ head.weight.T + head.bias
        np.testing.assert_allclose(fast[1], raw, rtol=1e-5, atol=1e-5)


def test_union_of_class_prefixes():
    imp = np.random.default_rng(4).normal(size=(3, 20))
    ranking = make_ranking("density", imp)
    ks = (0, 1, 3, 7, 20)
    masks = topk_union_masks(ranking, ks)
    for row, k in zip(masks, ks):
        want = set().union(*(ranking.order_Cn[c, :k].tolist() for c in range(3)))
        assert set(np.flatnonzero(row).tolist()) == want
    m, modes, kk, size = sweep_masks(ranking, ks)
    assert modes == ("on",) * 5 + ("off",) * 5 and kk == ks + ks
    np.testing.assert_array_equal(m[5:], 1 - m[:5])
    np.testing.assert_array_equal(size[:5], masks.sum(1))


def test_k_list_clips_and_deduplicates():
    assert k_list(DEFAULT_KS, 64) == (0, 1, 5, 10, 50, 64)
    assert k_list(DEFAULT_KS, 16384) == DEFAULT_KS
    with pytest.raises(ValueError, match="k must be >= 0"):
        k_list([-1], 4)


def test_sweep_k0_is_chance_and_all_latents_is_sae_only(setup):
    _, _, _, decode, _, head, stats = setup
    labels = np.array([0, 1, 0, 1, 1, 0])
    ranking = make_ranking("Mass", np.random.default_rng(5).normal(size=(2, N_LAT)))
    folded = fold_head(decode, N_LAT, head)
    sweep = run_sweep(stats.zbar_Bn, folded, ranking, (0, 4, N_LAT))
    m = binary_metrics(labels, sweep.logits_MNK[..., 0])
    assert m.aucroc[0] == 0.5  # on, k=0: every image gets the same logit
    assert m.aucroc[5] == 0.5  # off, all latents removed
    sae_only = np.asarray(decode(stats.zbar_Bn)) @ head.weight.T + head.bias
    np.testing.assert_allclose(sweep.logits_MNK[2], sae_only, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sweep.logits_MNK[3], sweep.logits_MNK[2], rtol=1e-6)  # off, k=0 removes nothing
    np.testing.assert_allclose(sweep.logits_MNK[5], sweep.logits_MNK[0], rtol=1e-6)  # off, all = on, k=0
    assert sweep.n_latents_changed.tolist() == [0, len(set(ranking.order_Cn[:, :4].ravel())), N_LAT] * 2


def test_single_latent_ablation_matches_a_loop_of_masked_evaluations(setup):
    _, _, _, decode, _, head, stats = setup
    labels = np.array([0, 1, 0, 1, 1, 0])
    folded = fold_head(decode, N_LAT, head)
    table = ablation_effects(stats.zbar_Bn, folded.u_nK, unit_weights(labels, np.arange(B), B, 2))
    full = np.asarray(masked_logits(jnp.asarray(stats.zbar_Bn), jnp.ones((1, N_LAT)), folded))[0, :, 0]
    for j in range(N_LAT):
        mask = np.ones((1, N_LAT), np.float32)
        mask[0, j] = 0
        delta = np.asarray(masked_logits(jnp.asarray(stats.zbar_Bn), jnp.asarray(mask), folded))[0, :, 0] - full
        np.testing.assert_allclose(table[j], [delta[labels == 0].mean(), delta[labels == 1].mean()], atol=2e-5)
