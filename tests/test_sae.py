"""The SAE equations and variants (mammosae_jax.models.sae, mammosae_jax.models.variants)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mammosae_jax.models import sae
from mammosae_jax.models.variants import VARIANTS, get_variant
from mammosae_jax.models.variants.base import scatter_dense

D, S, B = 16, 64, 12

# jitted once per config: eager op-by-op dispatch would compile every primitive separately
_loss = jax.jit(sae.loss, static_argnums=0)
_encode = jax.jit(sae.encode, static_argnums=0)
_forward = jax.jit(sae.forward, static_argnums=0)


def _setup(variant="relu", k=4, init="tied", seed=0, **kw):
    config = sae.SAEConfig(D, S, variant=variant, k=None if variant == "relu" else k, init=init, **kw)
    params = sae.init_params(config, jax.random.key(seed))
    # a non-zero tied bias and encoder bias so that every term of the equations is exercised
    params["b_dec"] = 0.1 * jax.random.normal(jax.random.key(seed + 1), (D,))
    params["b_enc"] = 0.05 * jax.random.normal(jax.random.key(seed + 2), (S,))
    x = jax.random.normal(jax.random.key(seed + 3), (B, D)) + 0.3
    return config, params, x


def test_init_shapes_unit_rows_and_reference_bounds():
    config = sae.SAEConfig(D, S)
    p = sae.init_params(config, jax.random.key(0))
    assert {k: v.shape for k, v in p.items()} == {"W_enc": (D, S), "b_enc": (S,), "W_dec": (S, D),
                                                  "b_dec": (D,)}
    assert all(v.dtype == jnp.float32 for v in p.values())
    np.testing.assert_allclose(np.linalg.norm(p["W_dec"], axis=1), 1.0, rtol=1e-6)
    assert np.all(p["b_dec"] == 0)
    # SPEC §3: kaiming-uniform with fan_in = S·D -> ±sqrt(6/(S·D)); bias ±1/sqrt(S)
    assert np.abs(p["W_enc"]).max() <= np.sqrt(6 / (S * D)) and np.abs(p["W_enc"]).max() > 0.5 * np.sqrt(6 / (S * D))
    assert np.abs(p["b_enc"]).max() <= 1 / np.sqrt(S)
    tied = sae.init_params(dataclasses.replace(config, init="tied"), jax.random.key(0))
    np.testing.assert_array_equal(tied["W_enc"], tied["W_dec"].T)
    np.testing.assert_array_equal(tied["b_enc"], 0)


def test_relu_loss_matches_numpy_float64():
    config, p, x = _setup("relu", l1_coeff=3e-3)
    P = {k: np.asarray(v, np.float64) for k, v in p.items()}
    xn = np.asarray(x, np.float64)
    pre = (xn - P["b_dec"]) @ P["W_enc"] + P["b_enc"]
    z = np.maximum(pre, 0)
    x_hat = z @ P["W_dec"] + P["b_dec"]
    mse = np.mean((x_hat - xn) ** 2)
    l1 = np.mean(np.abs(z).sum(1))
    out = _loss(config, p, x)
    np.testing.assert_allclose(out.mse, mse, rtol=1e-5)
    np.testing.assert_allclose(out.l1, l1, rtol=1e-5)
    np.testing.assert_allclose(out.loss, mse + 3e-3 * l1, rtol=1e-5)
    np.testing.assert_allclose(out.l0, np.mean((z > 0).sum(1)), rtol=1e-6)
    np.testing.assert_allclose(out.fvu, ((x_hat - xn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum(), rtol=1e-5)
    np.testing.assert_array_equal(out.fired, (z > 0).any(0))
    np.testing.assert_allclose(out.min_active, z[z > 0].min(), rtol=1e-4)
    enc = _encode(config, p, x)
    np.testing.assert_allclose(enc.pre, pre, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sae.decode(config, p, enc.z), x_hat, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_forward(config, p, x).x_hat, x_hat, rtol=1e-4, atol=1e-5)


def _dense_topk_loss(config, params, x):
    """Dense reference: differentiate through a (B, S) matrix and a dense decoder matmul."""
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    vals, idx = jax.lax.top_k(pre, config.k)
    z = scatter_dense(jax.nn.relu(vals), idx, config.n_latents)
    x_hat = z @ params["W_dec"] + params["b_dec"]
    return jnp.mean((x_hat - x) ** 2)


def test_topk_sparse_gather_gradients_equal_dense_gradients():
    config, p, x = _setup("topk", k=5, aux_coeff=0.0)
    g_sparse = jax.jit(jax.grad(lambda q: sae.loss(config, q, x).loss))(p)
    g_dense = jax.jit(jax.grad(lambda q: _dense_topk_loss(config, q, x)))(p)
    for name in sae.PARAM_NAMES:
        np.testing.assert_allclose(g_sparse[name], g_dense[name], rtol=1e-5, atol=1e-7, err_msg=name)
    # the custom sparse gradient is exact for the input too (e.g. attributions w.r.t. x)
    gx_sparse = jax.jit(jax.grad(lambda xx: sae.loss(config, p, xx).loss))(x)
    gx_dense = jax.jit(jax.grad(lambda xx: _dense_topk_loss(config, p, xx)))(x)
    np.testing.assert_allclose(gx_sparse, gx_dense, rtol=1e-5, atol=1e-7)
    # only the selected latents get decoder / encoder gradient
    _, idx = jax.lax.top_k(_encode(config, p, x).pre, config.k)
    touched = np.zeros(S, bool)
    touched[np.asarray(idx).ravel()] = True
    assert np.all(np.asarray(g_sparse["W_dec"])[~touched] == 0)
    assert np.all(np.asarray(g_sparse["W_enc"])[:, ~touched] == 0)
    assert np.abs(np.asarray(g_sparse["W_dec"])[touched]).sum() > 0


def test_topk_keeps_exactly_k_and_matches_inference():
    config, p, x = _setup("topk", k=6)
    p["b_enc"] = p["b_enc"] + 10.0  # all pre-activations positive: exactly k survive the ReLU
    enc = _encode(config, p, x)
    np.testing.assert_array_equal(np.sum(np.asarray(enc.z) != 0, axis=1), 6)
    out = _loss(config, p, x)
    np.testing.assert_allclose(out.mse, np.mean((np.asarray(_forward(config, p, x).x_hat) - np.asarray(x)) ** 2), rtol=1e-5)
    assert float(out.l0) == 6.0


def test_batchtopk_training_keeps_k_times_batch_and_threshold_inference():
    config, p, x = _setup("batchtopk", k=3)
    p["b_enc"] = p["b_enc"] + 10.0
    out = _loss(config, p, x)
    assert float(out.l0) * B == 3 * B  # k·B active in total over the batch
    pre = np.asarray(_encode(config, p, x).pre)
    kth = np.sort(pre.ravel())[::-1][3 * B - 1]
    np.testing.assert_allclose(out.min_active, kth, rtol=1e-6)
    thr = float(np.median(pre))
    z = np.asarray(_encode(dataclasses.replace(config, threshold=thr), p, x).z)
    np.testing.assert_array_equal(z, np.where(pre > thr, pre, 0))


def test_auxk_zero_without_dead_and_touches_only_dead_latents():
    config, p, x = _setup("topk", k=4, aux_k=8, aux_coeff=1.0)
    assert float(_loss(config, p, x).aux) == 0.0
    dead = np.zeros(S, bool)
    dead[::3] = True
    aux_grad = jax.jit(jax.grad(lambda q: sae.loss(config, q, x, jnp.asarray(dead)).aux))(p)
    assert float(_loss(config, p, x, jnp.asarray(dead)).aux) > 0
    assert np.all(np.asarray(aux_grad["W_dec"])[~dead] == 0)
    assert np.all(np.asarray(aux_grad["W_enc"])[:, ~dead] == 0)
    assert np.abs(np.asarray(aux_grad["W_dec"])[dead]).sum() > 0

    # numpy reference of AuxK: top-8 dead pre-activations reconstruct the residual
    P = {k: np.asarray(v, np.float64) for k, v in p.items()}
    xn = np.asarray(x, np.float64)
    pre = (xn - P["b_dec"]) @ P["W_enc"] + P["b_enc"]
    top = np.argsort(-pre, axis=1)[:, :4]
    z = np.zeros_like(pre)
    np.put_along_axis(z, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    e = xn - (z @ P["W_dec"] + P["b_dec"])
    masked = np.where(dead, pre, -np.inf)
    top_d = np.argsort(-masked, axis=1)[:, :8]
    z_aux = np.zeros_like(pre)
    np.put_along_axis(z_aux, top_d, np.maximum(np.take_along_axis(pre, top_d, 1), 0), 1)
    expected = min(dead.sum() / 8, 1.0) * ((z_aux @ P["W_dec"] - e) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    np.testing.assert_allclose(_loss(config, p, x, jnp.asarray(dead)).aux, expected, rtol=1e-4)


def test_config_validation_and_dict_round_trip():
    c = sae.SAEConfig(8, 32, variant="topk", k=4, threshold=0.5)
    assert sae.SAEConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown SAE variant 'nope'; known: relu, topk, batchtopk, jumprelu, matryoshka$"):
        sae.SAEConfig(8, 32, variant="nope")
    with pytest.raises(ValueError, match="k must be in"):
        sae.SAEConfig(8, 32, variant="topk", k=33)
    with pytest.raises(ValueError, match="a relu SAE has no k"):
        sae.SAEConfig(8, 32, k=4)
    assert sae.SAEConfig(8, 32).k is None and sae.SAEConfig(8, 32, variant="topk").k == 32
    with pytest.raises(ValueError, match="unknown SAEConfig field"):
        sae.SAEConfig.from_dict({"d_in": 8, "n_latents": 32, "dims": 3})
    with pytest.raises(ValueError, match="unknown SAE variant 'gated'"):
        get_variant("gated")
    assert list(VARIANTS) == ["relu", "topk", "batchtopk", "jumprelu", "matryoshka"]


def test_nnx_module_state_is_the_params_dict():
    config = sae.SAEConfig(D, S)
    module = sae.SAEModule(config, rngs=nnx.Rngs(params=7))
    state = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    expected = sae.init_params(config, nnx.Rngs(params=7).params())
    assert set(state) == set(sae.PARAM_NAMES)
    for name in sae.PARAM_NAMES:
        np.testing.assert_array_equal(state[name], expected[name])
    x = jax.random.normal(jax.random.key(0), (3, D))
    np.testing.assert_allclose(module(x).x_hat, sae.forward(config, expected, x).x_hat, rtol=1e-6)
