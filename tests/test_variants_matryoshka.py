"""Matryoshka BatchTopK: nested dictionary prefixes each reconstructing the input; loss and
gradients against a float64 numpy reference, export as SAELens loads it."""
import json

import jax
import numpy as np
import pytest

from mammosae_jax.models import sae
from mammosae_jax.models.sae_io import SAE, load_sae, save_sae
from mammosae_jax.models.variants.matryoshka import prefix_ends

D, S, B, K, P = 10, 48, 8, 5, 3


def test_prefix_ends_double_up_to_the_dictionary():
    assert prefix_ends(48, 3) == (12, 24, 48)
    assert prefix_ends(100, 4) == (13, 25, 50, 100)
    assert prefix_ends(48, 1) == (48,)
    assert prefix_ends(2, 5) == (1, 2)  # duplicates dropped
    with pytest.raises(ValueError, match="prefixes must be >= 1, got 0"):
        sae.SAEConfig(D, S, variant="matryoshka", prefixes=0)


def _setup(seed=0):
    config = sae.SAEConfig(D, S, variant="matryoshka", k=K, prefixes=P)
    rng = np.random.default_rng(seed)
    p = {k: np.asarray(v) for k, v in sae.init_params(config, jax.random.key(seed)).items()}
    p.update(W_enc=rng.normal(0, 0.5, (D, S)).astype(np.float32), b_enc=rng.normal(0, 0.1, S).astype(np.float32),
             b_dec=rng.normal(0, 0.1, D).astype(np.float32))
    return config, p, rng.normal(0.1, 1.0, (B, D)).astype(np.float32)


def _reference(p, x):
    P64 = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    pre = (x - P64["b_dec"]) @ P64["W_enc"] + P64["b_enc"]
    flat = np.maximum(pre, 0).reshape(-1)
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-flat, kind="stable")[: K * B]] = True
    keep = keep.reshape(B, S) & (pre > 0)
    z = np.where(keep, pre, 0)
    g_z, g_Wdec, g_bdec, losses = np.zeros_like(z), np.zeros_like(P64["W_dec"]), np.zeros(D), []
    ends = prefix_ends(S, P)
    for m in ends:
        x_hat = z[:, :m] @ P64["W_dec"][:m] + P64["b_dec"]
        losses.append(np.mean((x_hat - x) ** 2))
        g = 2 * (x_hat - x) / x.size / len(ends)
        g_Wdec[:m] += z[:, :m].T @ g
        g_bdec += g.sum(0)
        g_z[:, :m] += g @ P64["W_dec"][:m].T
    g_pre = g_z * keep
    grads = {"W_dec": g_Wdec, "W_enc": (x - P64["b_dec"]).T @ g_pre, "b_enc": g_pre.sum(0),
             "b_dec": g_bdec - P64["W_enc"] @ g_pre.sum(0)}
    return np.mean(losses), losses[-1], grads


def test_loss_and_gradients_match_float64():
    config, p, x = _setup()
    loss64, full_mse64, grads64 = _reference(p, x)
    out = jax.jit(lambda q: sae.loss(config, q, x))(p)
    grads = jax.jit(jax.grad(lambda q: sae.loss(config, q, x).loss))(p)
    np.testing.assert_allclose(out.loss, loss64, rtol=1e-5)
    np.testing.assert_allclose(out.mse, full_mse64, rtol=1e-5)  # the reported mse is the full dictionary's
    assert abs(float(out.loss) - float(out.mse)) > 0.1  # the prefixes change the objective
    for name, g64 in grads64.items():
        np.testing.assert_allclose(grads[name], g64, rtol=2e-4, atol=1e-6, err_msg=name)


def test_inference_and_export_are_batchtopk_s(tmp_path):
    config, p, x = _setup(1)
    thresholded = SAE(sae.SAEConfig(D, S, variant="matryoshka", k=K, prefixes=P, threshold=0.3), p)
    save_sae(tmp_path / "run", thresholded)
    cfg = json.loads((tmp_path / "run" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["metadata"]["mammosae_jax"]["sae_config"]["variant"] == "matryoshka"
    back = load_sae(tmp_path / "run")
    assert back.config == thresholded.config
    P64 = {k: np.asarray(v, np.float64) for k, v in p.items()}
    pre = (x - P64["b_dec"]) @ P64["W_enc"] + P64["b_enc"]
    np.testing.assert_allclose(np.asarray(back.encode(x)), np.where(pre > 0.3, pre, 0), rtol=1e-5, atol=1e-6)
    batch_rule = SAE(config, p)
    batchtopk = SAE(sae.SAEConfig(D, S, variant="batchtopk", k=K), p)
    np.testing.assert_array_equal(np.asarray(batch_rule.encode(x)), np.asarray(batchtopk.encode(x)))
