"""The SAE object, load_sae / save_sae on run folders and files, atomic writes, import hygiene."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import mammosae_jax
from mammosae_jax.formats import saelens
from mammosae_jax.formats.common import FormatError
from mammosae_jax.models.sae_io import SAE, detect_format, load_sae, save_sae
from mammosae_jax.models.sae import SAEConfig

D, N = 10, 24
REPO = Path(__file__).resolve().parents[1]


def _sae(variant: str = "relu", seed: int = 0, **kw) -> SAE:
    k = kw.pop("k", 4)
    config = SAEConfig(d_in=D, n_latents=N, variant=variant, k=None if variant == "relu" else k, **kw)
    rng = np.random.default_rng(seed)
    W_dec = rng.normal(size=(N, D))
    return SAE(config, {"W_enc": rng.normal(size=(D, N)).astype(np.float32) * 0.5,
                        "b_enc": rng.normal(size=N).astype(np.float32) * 0.1,
                        "W_dec": (W_dec / np.linalg.norm(W_dec, axis=1, keepdims=True)).astype(np.float32),
                        "b_dec": rng.normal(size=D).astype(np.float32)})


def _np_relu_forward(sae: SAE, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = {k: np.asarray(v, np.float64) for k, v in sae.params.items()}
    z = np.maximum((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0)
    return z, z @ p["W_dec"] + p["b_dec"]


def test_sae_object_attributes_and_forward_match_numpy():
    sae = _sae()
    assert (sae.d_in, sae.n_latents) == (D, N) and sae.config.variant == "relu"
    assert sorted(sae.params) == ["W_dec", "W_enc", "b_dec", "b_enc"]
    assert all(isinstance(v, jax.Array) and v.dtype == np.float32 for v in sae.params.values())
    x = np.random.default_rng(1).normal(size=(2, 3, D))  # float64 and extra leading dims
    z = np.asarray(sae.encode(x))
    assert z.shape == (2, 3, N) and z.dtype == np.float32
    z_ref, x_hat_ref = _np_relu_forward(sae, x.reshape(6, D))
    np.testing.assert_allclose(z.reshape(6, N), z_ref, rtol=1e-5, atol=1e-5)
    x_hat = np.asarray(sae.decode(z))
    assert x_hat.shape == (2, 3, D)
    np.testing.assert_allclose(x_hat.reshape(6, D), x_hat_ref, rtol=1e-5, atol=1e-5)
    assert repr(sae) == f"SAE(d_in={D}, n_latents={N}, variant='relu')"


def test_topk_sae_keeps_exactly_k_latents_per_token():
    sae = _sae("topk", k=3)
    x = np.random.default_rng(2).normal(size=(8, D)).astype(np.float32)
    z = np.asarray(sae.encode(x))
    p = {k: np.asarray(v, np.float64) for k, v in sae.params.items()}
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    top3 = np.sort(np.argsort(-pre, axis=1)[:, :3], axis=1)
    for i in range(8):
        nz = np.flatnonzero(z[i])
        assert set(nz) <= set(top3[i])
        np.testing.assert_allclose(z[i, top3[i]], np.maximum(pre[i, top3[i]], 0), rtol=1e-5, atol=1e-6)


def test_sae_rejects_params_that_do_not_match_the_config():
    good = _sae().params
    with pytest.raises(FormatError, match=f"SAE params are d_in={D}, n_latents={N} but the config says d_in={D}, n_latents={N + 1}"):
        SAE(SAEConfig(d_in=D, n_latents=N + 1), good)
    with pytest.raises(FormatError, match="SAE params lack b_dec"):
        SAE(SAEConfig(d_in=D, n_latents=N), {k: v for k, v in good.items() if k != "b_dec"})
    with pytest.raises(FormatError, match=r"'b_enc' has shape \(3,\), expected \(24,\)"):
        SAE(SAEConfig(d_in=D, n_latents=N), {**good, "b_enc": np.zeros(3, np.float32)})


def test_run_folder_round_trip_is_lossless(tmp_path):
    sae = _sae("batchtopk", seed=3, k=5, l1_coeff=2e-4, aux_k=6, aux_coeff=0.5, threshold=0.125, init="tied")
    written = save_sae(tmp_path / "run", sae)  # does not exist yet, no suffix: a folder
    assert written == tmp_path / "run" / "sae_weights.safetensors"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    back = load_sae(tmp_path / "run")
    assert back.config == sae.config
    for k in sae.params:
        np.testing.assert_array_equal(np.asarray(back.params[k]), np.asarray(sae.params[k]))
    # the same folder read as a plain .safetensors file
    assert load_sae(written).config == sae.config


def test_run_folder_without_weights_is_an_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(FormatError, match=r"run: no sae_weights\.safetensors \(or sae\.safetensors\) in this folder \(a training run writes it when it finishes\)$"):
        load_sae(tmp_path / "run")


def test_detect_format(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "a.PT").write_bytes(b"")
    (tmp_path / "b.safetensors").write_bytes(b"")
    (tmp_path / "c.npz").write_bytes(b"")
    assert detect_format(tmp_path / "d") == "run"
    assert detect_format(tmp_path / "a.PT") == "pt"
    assert detect_format(tmp_path / "b.safetensors") == "safetensors"
    assert detect_format(tmp_path / "new", for_writing=True) == "run"
    assert detect_format(tmp_path / "new.pth", for_writing=True) == "pt"
    with pytest.raises(FormatError, match="cannot tell the format"):
        detect_format(tmp_path / "c.npz")
    with pytest.raises(FormatError, match="no such file or folder"):
        detect_format(tmp_path / "new")


def test_a_failed_write_leaves_the_old_files_and_no_temp_files(tmp_path, monkeypatch):
    sae = _sae()
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"old weights")
    (tmp_path / "cfg.json").write_text("old cfg")

    def half_write(f, tensors, metadata):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(saelens, "write_stream", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_sae(target, sae)
    assert target.read_bytes() == b"old weights"
    assert (tmp_path / "cfg.json").read_text() == "old cfg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "w.safetensors"]


def test_a_failed_pt_write_leaves_nothing(tmp_path, monkeypatch):
    import torch

    def boom(obj, f):
        f.write(b"partial")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        save_sae(tmp_path / "x.pt", _sae())
    assert list(tmp_path.iterdir()) == []


def test_package_exports_are_lazy_and_the_same_objects():
    assert mammosae_jax.load_sae is load_sae and mammosae_jax.save_sae is save_sae and mammosae_jax.SAE is SAE
    assert {"SAE", "load_sae", "save_sae"} <= set(dir(mammosae_jax))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        mammosae_jax.nope  # noqa: B018


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})


def test_import_mammosae_jax_imports_neither_jax_nor_torch():
    r = _run_python("""
        import sys
        import mammosae_jax
        assert "jax" not in sys.modules and "torch" not in sys.modules, "eager import"
        mammosae_jax.load_sae
        assert "jax" in sys.modules and "torch" not in sys.modules
        print("ok")
    """, REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n"


def test_safetensors_path_works_with_torch_blocked(tmp_path):
    save_sae(tmp_path / "run", _sae())
    r = _run_python(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import mammosae_jax.models.sae_io as io
        from mammosae_jax.formats.common import FormatError
        sae = io.load_sae({str(tmp_path / "run")!r})
        z = np.asarray(sae.encode(np.ones((2, {D}), np.float32)))
        assert z.shape == (2, {N})
        io.save_sae({str(tmp_path / "copy.safetensors")!r}, sae)
        try:
            io.save_sae({str(tmp_path / "x.pt")!r}, sae)
        except FormatError as e:
            print(e)
        print(sys.modules["torch"] is None)
    """, REPO)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("the reference .pt format needs PyTorch, which is not importable here")
    assert lines[0].endswith("install it (`pip install torch`, the CPU build is enough) or use .safetensors")
    assert lines[1] == "True"
    assert load_sae(tmp_path / "copy.safetensors").config == SAEConfig(d_in=D, n_latents=N)


def test_cfg_json_of_a_newer_or_broken_config_is_a_clear_error(tmp_path):
    save_sae(tmp_path / "run", _sae())
    cfg_file = tmp_path / "run" / "cfg.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["metadata"]["mammosae_jax"]["sae_config"]["colour"] = "blue"
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match=r"cfg\.json: invalid SAE config: unknown SAEConfig field\(s\): colour"):
        load_sae(tmp_path / "run")
    cfg["metadata"]["mammosae_jax"] = {"format_version": 2, "sae_config": _sae().config.to_dict()}
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match=r"written by a newer mammosae_jax \(format_version 2; this one reads up to 1\)"):
        load_sae(tmp_path / "run")
    cfg_file.write_text("{not json")
    with pytest.raises(FormatError, match=r"cfg\.json: not valid JSON"):
        load_sae(tmp_path / "run")


def test_a_negative_batchtopk_threshold_exports_as_the_jumprelu_it_equals(tmp_path):
    # inference is ReLU(pre) where pre > threshold, SAELens's JumpReLU, for any sign of the threshold
    sae = _sae("batchtopk", threshold=-0.1)
    save_sae(tmp_path / "run", sae)
    cfg = json.loads((tmp_path / "run" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    x = np.random.default_rng(0).normal(size=(32, D)).astype(np.float32)
    p64 = {k: np.asarray(v, np.float64) for k, v in sae.params.items()}
    pre = (x - p64["b_dec"]) @ p64["W_enc"] + p64["b_enc"]
    expected = np.where(pre > -0.1, np.maximum(pre, 0.0), 0.0)
    np.testing.assert_allclose(np.asarray(load_sae(tmp_path / "run").encode(x)), expected, rtol=1e-5, atol=1e-6)
