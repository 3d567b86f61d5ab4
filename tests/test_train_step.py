"""The training step against a float64 NumPy implementation of SPEC §3, resampling, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mammosae_jax.models import sae
from mammosae_jax.training.config import TrainConfig
from mammosae_jax.training.mesh import make_data_parallel
from mammosae_jax.training.resample import resample_dead, token_losses
from mammosae_jax.training.state import init_state, make_optimizer
from mammosae_jax.training.step import make_train_step

D, S, B = 16, 64, 32


def numpy_reference_steps(P, xs, lr, l1, b1=0.9, b2=0.999, eps=1e-8):
    """SPEC §3 in float64 NumPy with hand-written gradients: loss, projection, Adam, renorm."""
    P = {k: np.array(v, np.float64) for k, v in P.items()}
    m = {k: np.zeros_like(v) for k, v in P.items()}
    v = {k: np.zeros_like(v) for k, v in P.items()}
    losses = []
    for t, x in enumerate(xs, start=1):
        x = np.asarray(x, np.float64)
        n, d = x.shape
        xc = x - P["b_dec"]
        pre = xc @ P["W_enc"] + P["b_enc"]
        z = np.maximum(pre, 0)
        err = z @ P["W_dec"] + P["b_dec"] - x
        losses.append(np.mean(err**2) + l1 * np.mean(np.abs(z).sum(1)))
        g_out = 2 * err / (n * d)  # d loss / d x_hat
        g_z = g_out @ P["W_dec"].T + l1 / n * (z > 0)
        g_pre = g_z * (pre > 0)
        g = {
            "W_dec": z.T @ g_out,
            "b_dec": g_out.sum(0) - (g_pre @ P["W_enc"].T).sum(0),
            "W_enc": xc.T @ g_pre,
            "b_enc": g_pre.sum(0),
        }
        unit = P["W_dec"] / np.linalg.norm(P["W_dec"], axis=1, keepdims=True)
        g["W_dec"] = g["W_dec"] - (g["W_dec"] * unit).sum(1, keepdims=True) * unit
        for k in P:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            P[k] = P[k] - lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
        P["W_dec"] /= np.linalg.norm(P["W_dec"], axis=1, keepdims=True)
    return P, m, v, losses


def _state(config, train, seed=0):
    state = init_state(config, make_optimizer(train), jax.random.key(seed))
    rng = np.random.default_rng(seed + 100)
    params = dict(state.params)
    params["b_dec"] = jnp.asarray(0.2 * rng.normal(size=config.d_in), jnp.float32)
    params["b_enc"] = jnp.asarray(0.1 * rng.normal(size=config.n_latents), jnp.float32)
    return state._replace(params=params)


def _batches(n, seed=5, batch=B):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch, D)).astype(np.float32) + 0.5 for _ in range(n)]


def test_three_steps_equal_float64_numpy_reference():
    config = sae.SAEConfig(D, S, l1_coeff=1e-2, init="tied")
    train = TrainConfig(lr=1e-2, steps=3, batch_size=B)
    state = _state(config, train)
    P0 = {k: np.array(v) for k, v in state.params.items()}  # copies: the step donates state
    xs = _batches(3)
    step = make_train_step(config, train)
    jax_losses = []
    for x in xs:
        state, metrics = step(state, jnp.asarray(x))
        jax_losses.append(float(metrics.loss))
    P, m, v, losses = numpy_reference_steps(P0, xs, train.lr, config.l1_coeff)
    np.testing.assert_allclose(jax_losses, losses, rtol=1e-5)
    adam = state.opt_state[0]
    for k in sae.PARAM_NAMES:
        np.testing.assert_allclose(state.params[k], P[k], rtol=2e-5, atol=2e-6, err_msg=k)
        # float32 moments: tolerance relative to each tensor's scale (cancellation in small entries)
        np.testing.assert_allclose(adam.mu[k], m[k], rtol=1e-4, atol=1e-5 * np.abs(m[k]).max(), err_msg=k)
        np.testing.assert_allclose(adam.nu[k], v[k], rtol=1e-4, atol=1e-5 * np.abs(v[k]).max(), err_msg=k)
    assert int(state.step) == 3 and int(adam.count) == 3


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), variant=st.sampled_from(["relu", "topk"]),
       scale=st.sampled_from([0.01, 1.0, 100.0]))
def test_decoder_rows_stay_unit_norm(seed, variant, scale):
    """Whatever the data scale (and so the effective step size), decoder rows end at unit norm."""
    config = sae.SAEConfig(D, S, variant=variant, k=None if variant == "relu" else 4)
    state = _state(config, TrainConfig(lr=0.1, steps=2, batch_size=8), seed)
    step = make_train_step(config, TrainConfig(lr=0.1, steps=1, batch_size=8, dead_after_tokens=80))
    rng = np.random.default_rng(seed)
    for _ in range(2):
        state, _ = step(state, jnp.asarray(scale * rng.normal(size=(8, D)), jnp.float32))
    np.testing.assert_allclose(np.linalg.norm(state.params["W_dec"], axis=1), 1.0, rtol=1e-5)


def test_resampling_touches_only_dead_latents_and_resets_exactly_their_moments():
    config = sae.SAEConfig(D, S, l1_coeff=1e-3, init="tied")
    train = TrainConfig(lr=1e-2, steps=3, batch_size=B)
    state = _state(config, train)
    step = make_train_step(config, train)
    for x in _batches(3):
        state, _ = step(state, jnp.asarray(x))
    dead = np.zeros(S, bool)
    dead[[1, 5, 17, 40, 63]] = True
    state = state._replace(fired_since_resample=jnp.asarray(~dead))
    before = jax.tree.map(np.array, state)
    x_pool = _batches(1, seed=9, batch=200)[0]
    losses = jax.jit(token_losses, static_argnums=0)(config, state.params, jnp.asarray(x_pool))
    new, n = jax.jit(resample_dead)(state, jnp.asarray(x_pool), losses, jax.random.key(3))
    assert int(n) == dead.sum()
    p0, p1 = before.params, new.params
    # untouched latents: bit-identical parameters and Adam moments
    np.testing.assert_array_equal(np.asarray(p1["W_dec"])[~dead], p0["W_dec"][~dead])
    np.testing.assert_array_equal(np.asarray(p1["W_enc"])[:, ~dead], p0["W_enc"][:, ~dead])
    np.testing.assert_array_equal(np.asarray(p1["b_enc"])[~dead], p0["b_enc"][~dead])
    np.testing.assert_array_equal(p1["b_dec"], p0["b_dec"])
    a0, a1 = before.opt_state[0], new.opt_state[0]
    for mom in ("mu", "nu"):
        m0, m1 = getattr(a0, mom), getattr(a1, mom)
        np.testing.assert_array_equal(np.asarray(m1["W_dec"])[~dead], m0["W_dec"][~dead])
        np.testing.assert_array_equal(np.asarray(m1["W_enc"])[:, ~dead], m0["W_enc"][:, ~dead])
        np.testing.assert_array_equal(m1["b_dec"], m0["b_dec"])
        assert np.all(np.asarray(m1["W_dec"])[dead] == 0) and np.all(np.asarray(m1["W_enc"])[:, dead] == 0)
        assert np.all(np.asarray(m1["b_enc"])[dead] == 0)
        assert np.abs(m0["W_dec"][dead]).sum() > 0  # they were nonzero before
    assert int(a1.count) == int(a0.count)
    # dead latents: decoder row = a distinct unit-norm input token, encoder = 0.2·mean alive norm
    units = x_pool / np.linalg.norm(x_pool, axis=1, keepdims=True)
    new_rows = np.asarray(p1["W_dec"])[dead]
    match = [np.flatnonzero(np.all(np.isclose(units, r, atol=1e-6), axis=1)) for r in new_rows]
    assert all(len(mt) == 1 for mt in match) and len({int(mt[0]) for mt in match}) == dead.sum()
    alive_norm = np.linalg.norm(p0["W_enc"][:, ~dead], axis=0).mean()
    np.testing.assert_allclose(np.asarray(p1["W_enc"])[:, dead], new_rows.T * 0.2 * alive_norm, rtol=1e-5)
    assert np.all(np.asarray(p1["b_enc"])[dead] == 0)
    assert not np.asarray(new.fired_since_resample).any()


def test_resampling_prefers_high_loss_tokens():
    """Tokens drawn ∝ loss²: a token with 10x the loss of the others is drawn almost surely."""
    x = np.ones((50, D), np.float32)
    losses = np.full(50, 0.1, np.float32)
    losses[7] = 1.0  # p(7 first) = 1 / (1 + 49·0.01) ≈ 0.67 for one dead latent
    config = sae.SAEConfig(D, S)
    state = _state(config, TrainConfig(steps=1))
    dead_one = np.ones(S, bool)
    dead_one[0] = False  # 63 dead would exhaust the pool; use one dead latent
    state = state._replace(fired_since_resample=jnp.asarray(dead_one))
    x[:, 0] = np.arange(50)  # make each token identifiable
    fn = jax.jit(resample_dead)
    picks = []
    for s in range(60):
        new, _ = fn(state, jnp.asarray(x), jnp.asarray(losses), jax.random.key(s))
        row = np.asarray(new.params["W_dec"])[0]
        picks.append(int(np.argmax(np.all(np.isclose(x / np.linalg.norm(x, axis=1, keepdims=True), row, atol=1e-6), axis=1))))
    frac = np.mean(np.asarray(picks) == 7)
    assert 0.45 < frac < 0.9, frac


@pytest.mark.parametrize("variant", ["relu", pytest.param("topk", marks=pytest.mark.slow)])
def test_data_parallel_over_four_devices_equals_one_device(variant):
    assert jax.device_count() == 4, "conftest provides 4 simulated CPU devices"
    config = sae.SAEConfig(D, S, variant=variant, k=None if variant == "relu" else 4, l1_coeff=1e-3)
    train = TrainConfig(lr=1e-2, steps=3, batch_size=B, dead_after_tokens=2 * B)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        dp = make_data_parallel(devices)
        state = dp.replicate(_state(config, train))
        step = make_train_step(config, train, dp.replicated)
        for x in _batches(3):
            state, metrics = step(state, dp.put_batch(x))
        assert state.params["W_enc"].sharding.is_fully_replicated
        results.append((jax.tree.map(np.asarray, state.params), float(metrics.loss)))
    (p1, l1), (p4, l4) = results
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    for k in sae.PARAM_NAMES:
        np.testing.assert_allclose(p4[k], p1[k], rtol=1e-5, atol=1e-6, err_msg=f"{variant} {k}")
