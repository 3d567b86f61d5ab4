"""Both directions against the real SAELens (`make test-interop`; deselected from `make test`).

The SAELens half runs in its own venv (`.venv-interop`, or $MAMMOSAE_INTEROP_PYTHON) through
`saelens_side.py`, since sae-lens pins other versions of transformers than the main venv's.
"""
from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from mammosae_jax.models.sae import SAEConfig, init_params
from mammosae_jax.models.sae_io import SAE, load_sae, save_sae

pytestmark = pytest.mark.interop
REPO = Path(__file__).resolve().parents[2]
SIDE = Path(__file__).with_name("saelens_side.py")
D, N = 16, 48  # the side script's sizes
RTOL = 1e-5


def _interop_python() -> str:
    py = os.environ.get("MAMMOSAE_INTEROP_PYTHON", str(REPO / ".venv-interop" / "bin" / "python"))
    if not Path(py).is_file():
        pytest.fail(f"no interop Python at {py}: run `make test-interop` (it creates .venv-interop with sae-lens)")
    return py


def _saelens(tmp_path: Path, x: np.ndarray, load: dict | None = None, make: Path | None = None,
             jumprelu_grads: dict | None = None) -> Path:
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "saelens_out"
    job = {"x": str(tmp_path / "x.npy"), "out": str(out), "load": {k: str(v) for k, v in (load or {}).items()},
           "make": str(make) if make else None, "jumprelu_grads": jumprelu_grads}
    (tmp_path / "job.json").write_text(json.dumps(job))
    r = subprocess.run([_interop_python(), str(SIDE), str(tmp_path / "job.json")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _close(a, b, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(), 1e-12)
    assert np.abs(a - b).max() <= RTOL * scale, f"{what}: max diff {np.abs(a - b).max():.3g} vs scale {scale:.3g}"


def _params(variant: str, seed: int) -> dict:
    config = SAEConfig(D, N, variant=variant, k=5 if variant in ("topk", "batchtopk", "matryoshka") else None)
    p = {k: np.asarray(v) for k, v in init_params(config, jax.random.key(seed)).items()}
    rng = np.random.default_rng(seed)
    p.update(W_enc=rng.normal(0, 0.4, (D, N)).astype(np.float32), b_enc=rng.normal(0, 0.1, N).astype(np.float32),
             b_dec=rng.normal(0, 0.2, D).astype(np.float32))
    if variant == "jumprelu":
        p["threshold"] = rng.uniform(0, 0.6, N).astype(np.float32)
    return p


# ours -> (SAELens class, the variant whose rule SAELens's output must equal)
OURS = {
    "relu": ("StandardSAE", SAEConfig(D, N, variant="relu")),
    "topk": ("TopKSAE", SAEConfig(D, N, variant="topk", k=5)),
    "jumprelu": ("JumpReLUSAE", SAEConfig(D, N, variant="jumprelu")),
    "batchtopk_thresholded": ("JumpReLUSAE", SAEConfig(D, N, variant="batchtopk", k=5, threshold=0.3)),
    "batchtopk": ("TopKSAE", SAEConfig(D, N, variant="batchtopk", k=5)),
    "matryoshka_thresholded": ("JumpReLUSAE", SAEConfig(D, N, variant="matryoshka", k=5, threshold=0.3)),
    "matryoshka": ("TopKSAE", SAEConfig(D, N, variant="matryoshka", k=5)),
}


def test_our_run_folders_open_in_saelens_with_equal_outputs_and_our_metadata(tmp_path):
    x = np.random.default_rng(0).normal(0.1, 1.0, (64, D)).astype(np.float32)
    saes = {}
    for seed, (name, (_, config)) in enumerate(OURS.items()):
        saes[name] = SAE(config, _params(config.variant, seed))
        save_sae(tmp_path / "runs" / name, saes[name])
    out = _saelens(tmp_path, x, load={name: tmp_path / "runs" / name for name in OURS})
    for name, (cls, config) in OURS.items():
        info = json.loads((out / f"{name}.json").read_text())
        assert info["class"] == cls, name
        assert info["metadata"]["mammosae_jax"]["sae_config"] == config.to_dict(), name  # kept by SAELens
        got = np.load(out / f"{name}.npz")
        # without a threshold SAELens runs BatchTopK's per-token k (our topk rule); with one, the same JumpReLU
        rule = SAE(SAEConfig(D, N, variant="topk", k=5), saes[name].params) if cls == "TopKSAE" else saes[name]
        z = np.asarray(rule.encode(x))
        _close(got["z"], z, f"{name} encode")
        _close(got["x_hat"], np.asarray(rule.decode(z)), f"{name} decode")


def test_saelens_saved_models_open_in_ours_with_equal_outputs(tmp_path):
    x = np.random.default_rng(1).normal(0.1, 1.0, (64, D)).astype(np.float32)
    made = tmp_path / "made"
    out = _saelens(tmp_path, x, make=made)
    names = sorted(p.name for p in made.iterdir())
    assert names == sorted(["standard", "standard_no_b_dec_in", "topk", "topk_rescaled", "topk_rescaled_no_b_dec_in",
                            "jumprelu", "jumprelu_no_b_dec_in"])
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # their decoder rows are off unit norm on purpose
            sae = load_sae(made / name)
        ref = np.load(out / f"{name}.npz")
        z = np.asarray(sae.encode(x))
        _close(z, ref["z"], f"{name} encode")
        _close(np.asarray(sae.decode(z)), ref["x_hat"], f"{name} decode")
        if name.startswith("jumprelu"):
            assert sae.config.variant == "jumprelu" and len(np.unique(np.asarray(sae.params["threshold"]))) == N



def test_jumprelu_training_loss_and_gradients_equal_saelens_jumprelu_training_sae(tmp_path):
    """Ours averages the squared error over dims, SAELens sums it: with l0_coefficient = D·λ its
    loss and every gradient are exactly D times ours."""
    from safetensors.numpy import save_file

    from mammosae_jax.models.sae import loss

    lam, eps = 0.01, 0.3
    config = SAEConfig(D, N, variant="jumprelu", l1_coeff=lam, bandwidth=eps)
    p = _params("jumprelu", 7)
    save_file(p, str(tmp_path / "p.safetensors"))
    x = np.random.default_rng(2).normal(0.1, 1.0, (64, D)).astype(np.float32)
    out = _saelens(tmp_path, x, jumprelu_grads={"params": str(tmp_path / "p.safetensors"),
                                                  "l0_coefficient": lam * D, "bandwidth": eps})
    ref = np.load(out / "jumprelu_grads.npz")
    value, grads = jax.value_and_grad(lambda q: loss(config, q, x).loss)(p)
    _close(D * value, ref["loss"], "loss")
    assert np.abs(ref["grad_threshold"]).max() > 0  # the straight-through path is exercised
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        _close(D * np.asarray(grads[name]), ref[f"grad_{name}"], f"d loss / d {name}")
