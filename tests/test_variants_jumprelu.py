"""JumpReLU: per-latent thresholds, straight-through L0 penalty; loss, gradients and inference
against a float64 numpy reference of the equations in `models/variants/jumprelu.py`."""
import jax
import numpy as np
import pytest

from mammosae_jax.models import sae
from mammosae_jax.models.sae_io import SAE, load_sae, save_sae
from mammosae_jax.viz.heatmaps import latent_encoder

D, S, B = 12, 40, 16
LAMBDA, EPS = 0.02, 0.4


def _setup(seed=0):
    config = sae.SAEConfig(D, S, variant="jumprelu", l1_coeff=LAMBDA, bandwidth=EPS)
    params = sae.init_params(config, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    params = {**{k: np.asarray(v) for k, v in params.items()},
              "W_enc": rng.normal(0, 0.4, (D, S)).astype(np.float32),
              "b_enc": rng.normal(0, 0.1, S).astype(np.float32),
              "b_dec": rng.normal(0, 0.1, D).astype(np.float32),
              "threshold": rng.uniform(0.0, 0.8, S).astype(np.float32)}
    x = rng.normal(0.2, 1.0, (B, D)).astype(np.float32)
    return config, params, x


def _reference(p, x):
    """Loss and straight-through gradients in float64, written out by hand."""
    P = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    pre = (x - P["b_dec"]) @ P["W_enc"] + P["b_enc"]
    mask = pre > P["threshold"]
    z = pre * mask
    x_hat = z @ P["W_dec"] + P["b_dec"]
    mse = np.mean((x_hat - x) ** 2)
    l0 = np.mean(mask.sum(1))
    g_xhat = 2 * (x_hat - x) / x.size
    g_z = g_xhat @ P["W_dec"].T
    kernel = (np.abs((pre - P["threshold"]) / EPS) < 0.5) / EPS
    g_pre = g_z * mask
    grads = {
        "W_dec": z.T @ g_xhat,
        "threshold": -(P["threshold"] * kernel * g_z).sum(0) - LAMBDA / len(x) * kernel.sum(0),
        "W_enc": (x - P["b_dec"]).T @ g_pre,
        "b_enc": g_pre.sum(0),
        "b_dec": g_xhat.sum(0) - P["W_enc"] @ g_pre.sum(0),
    }
    return mse + LAMBDA * l0, mse, l0, z, grads, kernel


def test_loss_and_straight_through_gradients_match_float64():
    config, p, x = _setup()
    loss64, mse64, l064, _, grads64, kernel = _reference(p, x)
    assert kernel.sum() > 20  # the rectangle kernel is really exercised
    loss_out = jax.jit(lambda q: sae.loss(config, q, x))(p)
    grads = jax.jit(jax.grad(lambda q: sae.loss(config, q, x).loss))(p)
    np.testing.assert_allclose(loss_out.loss, loss64, rtol=1e-5)
    np.testing.assert_allclose(loss_out.mse, mse64, rtol=1e-5)
    np.testing.assert_allclose(loss_out.l0, l064, rtol=1e-6)
    np.testing.assert_allclose(loss_out.sparsity, LAMBDA * l064, rtol=1e-6)
    for name, g64 in grads64.items():
        np.testing.assert_allclose(grads[name], g64, rtol=2e-4, atol=2e-6, err_msg=name)


def test_inference_with_per_latent_thresholds_matches_float64_and_saelens_rule():
    config, p, x = _setup(1)
    p["threshold"][:5] = -0.3  # SAELens files may hold negative thresholds: ReLU still applies
    model = SAE(config, p)
    P = {k: np.asarray(v, np.float64) for k, v in p.items()}
    pre = (x - P["b_dec"]) @ P["W_enc"] + P["b_enc"]
    expected = np.where(pre > P["threshold"], np.maximum(pre, 0), 0)
    np.testing.assert_allclose(np.asarray(model.encode(x)), expected, rtol=1e-5, atol=1e-6)
    # the heatmaps (and every other consumer of sae.params) read the same thresholds
    chosen = [0, 3, 17, 39]
    np.testing.assert_allclose(latent_encoder(model, chosen)(x), expected[:, chosen], rtol=1e-5, atol=1e-6)


def test_training_step_keeps_the_threshold_non_negative_and_trains_it():
    from mammosae_jax.training.config import TrainConfig
    from mammosae_jax.training.state import init_state, make_optimizer
    from mammosae_jax.training.step import make_train_step

    config, p, x = _setup(2)
    tc = TrainConfig(steps=3, lr=0.05)
    state = init_state(config, make_optimizer(tc), jax.random.key(0))
    params = {k: jax.numpy.asarray(v) for k, v in p.items()}
    state = state._replace(params=params, opt_state=make_optimizer(tc).init(params))
    before = np.asarray(state.params["threshold"]).copy()
    step = make_train_step(config, tc)
    for _ in range(3):
        state, _ = step(state, jax.numpy.asarray(x))
    after = np.asarray(state.params["threshold"])
    assert (after >= 0).all() and np.abs(after - before).max() > 1e-3


def test_round_trip_keeps_per_latent_thresholds(tmp_path):
    config, p, x = _setup(3)
    save_sae(tmp_path / "run", SAE(config, p))
    back = load_sae(tmp_path / "run")
    assert back.config == config
    np.testing.assert_array_equal(np.asarray(back.params["threshold"]), p["threshold"])


def test_a_jumprelu_sae_without_threshold_is_refused():
    config, p, _ = _setup()
    del p["threshold"]
    with pytest.raises(ValueError, match="^jumprelu SAE params lack threshold$"):
        SAE(config, p)
