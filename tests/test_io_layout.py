"""What the files we write look like on disk (the name SAELens fixes, the older name, permissions,
byte-identical rewrites) and SAELens-made files we read (per-latent JumpReLU, folded options)."""
from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from mammosae_jax.formats.common import FormatError
from mammosae_jax.models.sae import SAEConfig
from mammosae_jax.models.sae_io import LEGACY_RUN_WEIGHTS, RUN_WEIGHTS, SAE, load_sae, save_sae

D, N = 10, 24
X = np.random.default_rng(5).normal(size=(32, D)).astype(np.float32)


def _tensors(seed=0, unit=True):
    rng = np.random.default_rng(seed)
    W_dec = rng.normal(size=(N, D))
    if unit:
        W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    return {"W_enc": (rng.normal(size=(D, N)) * 0.5).astype(np.float32), "b_enc": (rng.normal(size=N) * 0.1).astype(np.float32),
            "W_dec": W_dec.astype(np.float32), "b_dec": rng.normal(size=D).astype(np.float32)}


def test_run_folders_use_saelens_file_name_and_older_folders_still_load(tmp_path):
    sae = SAE(SAEConfig(D, N, variant="topk", k=3), _tensors())
    assert save_sae(tmp_path / "run", sae) == tmp_path / "run" / "sae_weights.safetensors" == tmp_path / "run" / RUN_WEIGHTS
    shutil.copytree(tmp_path / "run", tmp_path / "old")
    (tmp_path / "old" / RUN_WEIGHTS).rename(tmp_path / "old" / LEGACY_RUN_WEIGHTS)
    assert LEGACY_RUN_WEIGHTS == "sae.safetensors"
    old = load_sae(tmp_path / "old")
    assert old.config == sae.config
    np.testing.assert_array_equal(np.asarray(old.encode(X)), np.asarray(sae.encode(X)))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_ordinary_permissions_from_the_umask(tmp_path, umask, mode):
    sae = SAE(SAEConfig(D, N), _tensors())
    old = os.umask(umask)
    try:
        save_sae(tmp_path / "run", sae)
        save_sae(tmp_path / "x.safetensors", sae)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*(tmp_path / "run").iterdir(), tmp_path / "x.safetensors"]}
    assert modes == {"cfg.json": mode, RUN_WEIGHTS: mode, "x.safetensors": mode}


def test_the_same_sae_always_gives_the_same_bytes(tmp_path):
    thr = np.linspace(0, 1, N).astype(np.float32)
    sae = SAE(SAEConfig(D, N, variant="jumprelu"), {**_tensors(), "threshold": thr})
    for name in ("a", "b"):
        save_sae(tmp_path / name, sae)
    for f in (RUN_WEIGHTS, "cfg.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    data = (tmp_path / "a" / RUN_WEIGHTS).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(header["__metadata__"])


def _foreign(tmp_path, arch, tensors, **cfg):
    folder = tmp_path / arch
    folder.mkdir()
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"architecture": arch, "d_in": D, "d_sae": N, "dtype": "float32",
                                                 "metadata": {"sae_lens_version": "6.54.12"}, **cfg}))
    return folder


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens_jumprelu_with_per_latent_thresholds_equals_float64_reference(tmp_path, apply_b_dec):
    t = {**_tensors(1, unit=False), "threshold": np.random.default_rng(2).uniform(-0.2, 0.8, N).astype(np.float32)}
    sae = load_sae(_foreign(tmp_path, "jumprelu", t, apply_b_dec_to_input=apply_b_dec))
    assert sae.config.variant == "jumprelu"
    t64 = {k: v.astype(np.float64) for k, v in t.items()}
    pre = ((X - t64["b_dec"]) if apply_b_dec else X) @ t64["W_enc"] + t64["b_enc"]
    z = np.where(pre > t64["threshold"], np.maximum(pre, 0), 0)
    np.testing.assert_allclose(np.asarray(sae.encode(X)), z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.decode(z)), z @ t64["W_dec"] + t64["b_dec"], rtol=1e-5, atol=1e-5)


def test_saelens_batchtopk_training_save_keeps_its_threshold(tmp_path):
    t = {**_tensors(3), "topk_threshold": np.array(0.25, np.float32)}
    sae = load_sae(_foreign(tmp_path, "batchtopk", t, k=4))
    assert (sae.config.variant, sae.config.k, sae.config.threshold) == ("batchtopk", 4, 0.25)


@pytest.mark.parametrize("arch", ["gated", "matryoshka_batchtopk", "temporal"])
def test_architectures_we_cannot_represent_are_refused_by_name(tmp_path, arch):
    with pytest.raises(FormatError, match=rf"cfg\.json: SAELens architecture '{arch}' cannot be represented here"):
        load_sae(_foreign(tmp_path, arch, _tensors()))
