"""Weight conversion: the reference .pt <-> ours <-> SAELens safetensors, safety and errors."""
from __future__ import annotations

import builtins
import json
import os
import pickle
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from helpers.reference_sae_data import REFERENCE_ORDER, ReferenceSAE, bits, make_reference_state_dict
from mammosae_jax.cli import convert as convert_cli
from mammosae_jax.formats.common import FormatError
from mammosae_jax.formats.reference_pt import read_reference_pt
from mammosae_jax.models.sae_io import SAE, load_sae, save_sae
from mammosae_jax.models.sae import SAEConfig

D, N = 12, 40  # tiny d_in, n_latents
REPO = Path(__file__).resolve().parents[1]


def _save_pt(path: Path, state: dict) -> Path:
    torch.save(state, path)
    return path


def _load_pt(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True, map_location="cpu")


def _assert_bitwise_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float32, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(bits(a[k]), bits(b[k])), k


# ---------------------------------------------------------------- round trips


def test_pt_to_ours_to_pt_is_bitwise_identical(tmp_path):
    src = make_reference_state_dict(D, N, seed=1)
    sae = load_sae(_save_pt(tmp_path / "ref.pt", src))
    assert (sae.d_in, sae.n_latents, sae.config.variant) == (D, N, "relu")
    save_sae(tmp_path / "back.pt", sae)
    out = _load_pt(tmp_path / "back.pt")
    assert list(out) == list(REFERENCE_ORDER)
    _assert_bitwise_same_state(src, out)
    # the three bias entries are one tensor, as in the reference module
    ptrs = {out[k].data_ptr() for k in ("tied_bias", "pre_encoder_bias._bias_reference",
                                         "post_decoder_bias._bias_reference")}
    assert len(ptrs) == 1


def test_pt_without_alias_keys_loads_and_is_written_with_all_six(tmp_path):
    src = make_reference_state_dict(D, N, seed=2, aliases=False)
    save_sae(tmp_path / "back.pt", load_sae(_save_pt(tmp_path / "ref.pt", src)))
    out = _load_pt(tmp_path / "back.pt")
    assert list(out) == list(REFERENCE_ORDER)
    for k in src:
        assert torch.equal(bits(src[k]), bits(out[k])), k
    assert torch.equal(out["pre_encoder_bias._bias_reference"], src["tied_bias"])
    assert torch.equal(out["post_decoder_bias._bias_reference"], src["tied_bias"])


def test_pt_to_safetensors_to_pt_is_bitwise_identical_via_cli(tmp_path, capsys):
    src = make_reference_state_dict(D, N, seed=3)
    _save_pt(tmp_path / "ref.pt", src)
    assert convert_cli.main([str(tmp_path / "ref.pt"), str(tmp_path / "exp" / "sae.safetensors")]) == 0
    assert convert_cli.main([str(tmp_path / "exp" / "sae.safetensors"), str(tmp_path / "back.pt")]) == 0
    out = capsys.readouterr().out
    assert f"d_in={D}, n_latents={N}, variant=relu" in out
    _assert_bitwise_same_state(src, _load_pt(tmp_path / "back.pt"))


def test_our_written_pt_loads_strictly_into_the_reference_module_and_matches_our_forward(tmp_path):
    rng = np.random.default_rng(0)
    src = make_reference_state_dict(D, N, seed=4)
    sae = load_sae(_save_pt(tmp_path / "ref.pt", src))
    save_sae(tmp_path / "ours.pt", sae)
    ref = ReferenceSAE(D, N)
    ref.load_state_dict(_load_pt(tmp_path / "ours.pt"), strict=True)
    x = rng.normal(size=(64, D)).astype(np.float32) + 0.3
    with torch.no_grad():
        z_ref = ref.encode(torch.from_numpy(x)).numpy()
        x_hat_ref = ref.decode(torch.from_numpy(z_ref)).numpy()
    z = np.asarray(sae.encode(x))
    assert (z_ref > 0).mean() > 0.2 and (z_ref == 0).mean() > 0.2  # ReLU is exercised both ways
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-5 * np.abs(z_ref).max())
    x_hat = np.asarray(sae.decode(z_ref))
    np.testing.assert_allclose(x_hat, x_hat_ref, rtol=1e-5, atol=1e-5 * np.abs(x_hat_ref).max())


# ---------------------------------------------------------------- SAELens export


def test_safetensors_export_has_saelens_names_shapes_and_cfg(tmp_path):
    src = make_reference_state_dict(D, N, seed=5)
    sae = load_sae(_save_pt(tmp_path / "ref.pt", src))
    written = save_sae(tmp_path / "exp" / "weights.safetensors", sae)
    assert written == tmp_path / "exp" / "weights.safetensors"
    with safe_open(str(written), framework="np") as f:
        assert sorted(f.keys()) == ["W_dec", "W_enc", "b_dec", "b_enc"]
        t = {k: f.get_tensor(k) for k in f.keys()}
        assert f.metadata()["format"] == "pt"
    assert {k: v.shape for k, v in t.items()} == {"W_enc": (D, N), "W_dec": (N, D), "b_enc": (N,), "b_dec": (D,)}
    assert all(v.dtype == np.float32 for v in t.values())
    np.testing.assert_array_equal(t["W_enc"], src["encoder._weight"][0].numpy().T)
    np.testing.assert_array_equal(t["W_dec"], src["decoder._weight"][0].numpy().T)
    np.testing.assert_array_equal(t["b_dec"], src["tied_bias"][0].numpy())
    np.testing.assert_array_equal(t["b_enc"], src["encoder._bias"][0].numpy())
    cfg = json.loads((tmp_path / "exp" / "cfg.json").read_text())
    assert cfg["architecture"] == "standard"
    assert (cfg["d_in"], cfg["d_sae"]) == (D, N)
    assert cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none"
    assert (cfg["dtype"], cfg["device"]) == ("float32", "cpu")
    assert "k" not in cfg
    assert cfg["metadata"]["mammosae_jax"]["sae_config"] == sae.config.to_dict()
    assert not [p for p in (tmp_path / "exp").iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("variant, threshold, arch", [
    ("topk", None, "topk"), ("batchtopk", None, "topk"), ("batchtopk", 0.25, "jumprelu"),
    ("matryoshka", None, "topk"), ("matryoshka", 0.25, "jumprelu")])
def test_safetensors_round_trip_of_sparse_variants_keeps_config_and_behaviour(tmp_path, variant, threshold, arch):
    rng = np.random.default_rng(1)
    base = load_sae(_save_pt(tmp_path / "ref.pt", make_reference_state_dict(D, N, seed=6)))
    config = SAEConfig(d_in=D, n_latents=N, variant=variant, k=None if variant == "relu" else 5, l1_coeff=1e-4, aux_k=7,
                       threshold=threshold, init="tied")
    sae = SAE(config, base.params)
    save_sae(tmp_path / "v.safetensors", sae)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == arch
    if arch in ("topk", "batchtopk"):
        assert cfg["k"] == 5 and cfg["rescale_acts_by_decoder_norm"] is False
    if arch == "jumprelu":
        with safe_open(str(tmp_path / "v.safetensors"), framework="np") as f:
            np.testing.assert_array_equal(f.get_tensor("threshold"), np.full(N, 0.25, np.float32))
    back = load_sae(tmp_path / "v.safetensors")
    assert back.config == config
    x = rng.normal(size=(16, D)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(back.encode(x)), np.asarray(sae.encode(x)))


def _numpy_saelens_encode(t: dict, cfg: dict, x: np.ndarray) -> np.ndarray:
    """SAELens's inference encode, written from its documented equations (float64)."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    sae_in = x - t["b_dec"] if cfg.get("apply_b_dec_to_input", True) else x
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    if cfg["architecture"] == "standard":
        return np.maximum(pre, 0)
    if cfg.get("rescale_acts_by_decoder_norm"):
        pre = pre * np.linalg.norm(t["W_dec"], axis=1)
    z = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=1)[:, : cfg["k"]]
    np.put_along_axis(z, idx, np.maximum(np.take_along_axis(pre, idx, 1), 0), 1)
    return z


def _numpy_saelens_decode(t: dict, cfg: dict, z: np.ndarray) -> np.ndarray:
    t = {k: v.astype(np.float64) for k, v in t.items()}
    if cfg.get("rescale_acts_by_decoder_norm"):
        z = z / np.linalg.norm(t["W_dec"], axis=1)
    return z @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("arch, extra", [
    ("standard", {"apply_b_dec_to_input": False}),
    ("topk", {"k": 4, "rescale_acts_by_decoder_norm": True}),
    ("topk", {"k": 4, "rescale_acts_by_decoder_norm": False}),
])
def test_foreign_saelens_files_load_with_equal_outputs(tmp_path, arch, extra):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(2)
    t = {"W_enc": rng.normal(size=(D, N)).astype(np.float32),
         "b_enc": rng.normal(size=N).astype(np.float32) * 0.1,
         "W_dec": (rng.normal(size=(N, D)) * rng.uniform(0.5, 2, size=(N, 1))).astype(np.float32),
         "b_dec": rng.normal(size=D).astype(np.float32)}
    if not extra.get("rescale_acts_by_decoder_norm"):
        t["W_dec"] /= np.linalg.norm(t["W_dec"], axis=1, keepdims=True)
    cfg = {"architecture": arch, "d_in": D, "d_sae": N, "dtype": "float32", "device": "cpu",
           "normalize_activations": "none", "metadata": {"hook_name": "blocks.3.hook_resid_post"}, **extra}
    save_file(t, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)  # a SAELens folder (sae_weights.safetensors) loads too
    assert sae.config.variant == {"standard": "relu", "topk": "topk"}[arch]
    x = rng.normal(size=(32, D)).astype(np.float32)
    z_ref = _numpy_saelens_encode(t, cfg, x)
    x_hat_ref = _numpy_saelens_decode(t, cfg, z_ref)
    z = np.asarray(sae.encode(x))
    x_hat = np.asarray(sae.decode(z))
    np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-4 * np.abs(z_ref).max())
    np.testing.assert_allclose(x_hat, x_hat_ref, rtol=1e-4, atol=1e-4 * np.abs(x_hat_ref).max())


# ---------------------------------------------------------------- safety


class _WritesMarker:
    """Unpickling this object opens (creates) a marker file: arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_the_malicious_payload_is_live_when_unpickled_unsafely(tmp_path):
    marker = tmp_path / "marker"
    data = pickle.dumps({"x": _WritesMarker(marker)})
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=data, check=True)
    assert marker.exists()  # so the refusals below are meaningful


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_pickle_that_would_execute_code_is_refused_without_executing(tmp_path, how):
    marker = tmp_path / "marker"
    state = {**make_reference_state_dict(D, N), "encoder._bias": _WritesMarker(marker)}
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save(state, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(state, f)
    assert not marker.exists()
    with pytest.raises(FormatError, match=r"evil\.pt: refused to unpickle"):
        load_sae(path)
    assert not marker.exists()


def test_truncated_and_empty_pt_give_clear_errors(tmp_path):
    good = _save_pt(tmp_path / "good.pt", make_reference_state_dict(D, N))
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("trunc.pt", "empty.pt"):
        with pytest.raises(FormatError, match=rf"{name}: not a readable PyTorch checkpoint \(truncated or corrupt\?\)"):
            load_sae(tmp_path / name)


# ---------------------------------------------------------------- layout errors name the key


def _err(tmp_path: Path, state) -> str:
    with pytest.raises(FormatError) as e:
        read_reference_pt(_save_pt(tmp_path / "bad.pt", state))
    return str(e.value)


def test_wrong_shapes_name_the_key(tmp_path):
    s = make_reference_state_dict(D, N)
    s["encoder._weight"] = torch.zeros(1, N, D + 1)
    assert _err(tmp_path, s).endswith(
        f"key 'encoder._weight' has shape (1, {N}, {D + 1}), expected (1, {N}, {D}) = (1, n_latents, d_in) "
        f"(d_in={D} from 'tied_bias', n_latents={N} from 'encoder._bias')")
    s = make_reference_state_dict(D, N)
    s["decoder._weight"] = s["decoder._weight"].transpose(1, 2).contiguous()
    assert f"key 'decoder._weight' has shape (1, {N}, {D}), expected (1, {D}, {N})" in _err(tmp_path, s)
    s = make_reference_state_dict(D, N)
    s["tied_bias"] = s["tied_bias"][0]
    assert f"key 'tied_bias' has shape ({D},), expected (1, d_in)" in _err(tmp_path, s)


def test_missing_unexpected_and_half_alias_keys(tmp_path):
    s = make_reference_state_dict(D, N)
    del s["encoder._bias"]
    assert _err(tmp_path, s).endswith("missing key(s) 'encoder._bias'")
    s = make_reference_state_dict(D, N)
    s["encoder.scale"] = torch.ones(1)
    assert "unexpected key(s) 'encoder.scale'" in _err(tmp_path, s)
    s = make_reference_state_dict(D, N)
    del s["post_decoder_bias._bias_reference"]
    assert "missing key 'post_decoder_bias._bias_reference' (alias keys come both or neither" in _err(tmp_path, s)
    assert "expected a bare state_dict" in _err(tmp_path, [torch.zeros(2)])


def test_unequal_alias_nan_and_integer_tensors_name_the_key(tmp_path):
    s = make_reference_state_dict(D, N)
    s["post_decoder_bias._bias_reference"] = s["tied_bias"].clone()
    s["post_decoder_bias._bias_reference"][0, 3] += 0.5
    assert ("key 'post_decoder_bias._bias_reference' differs from 'tied_bias' (max abs difference 0.5)"
            in _err(tmp_path, s))
    s = make_reference_state_dict(D, N)
    s["encoder._bias"] = s["encoder._bias"].clone()
    s["encoder._bias"][0, 0] = float("nan")
    assert _err(tmp_path, s).endswith("key 'encoder._bias' contains NaN or infinite values")
    s = make_reference_state_dict(D, N)
    s["encoder._bias"] = torch.zeros(1, N, dtype=torch.int64)
    assert _err(tmp_path, s).endswith("key 'encoder._bias' has dtype torch.int64, expected float32")


def test_decoder_norm_warning_only_when_off_by_more_than_1e_3(tmp_path):
    s = make_reference_state_dict(D, N)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_reference_pt(_save_pt(tmp_path / "unit.pt", s))  # no warning
    s["decoder._weight"] = s["decoder._weight"].clone()
    s["decoder._weight"][0, :, 7] *= 1.0005  # within tolerance
    s["decoder._weight"][0, :, 9] *= 1.01
    with pytest.warns(UserWarning, match=r"1 of 40 decoder vectors are off unit norm by more than 0\.001 \(worst: latent 9, norm 1\.01"):
        read_reference_pt(_save_pt(tmp_path / "off.pt", s))


def test_only_relu_saes_are_written_as_reference_pt(tmp_path):
    base = load_sae(_save_pt(tmp_path / "ref.pt", make_reference_state_dict(D, N)))
    topk = SAE(SAEConfig(d_in=D, n_latents=N, variant="topk", k=4), base.params)
    with pytest.raises(FormatError, match="holds only ReLU SAEs, this one is 'topk'"):
        save_sae(tmp_path / "topk.pt", topk)
    assert not (tmp_path / "topk.pt").exists()


# ---------------------------------------------------------------- safetensors errors


def _saelens_export(tmp_path: Path) -> Path:
    sae = load_sae(_save_pt(tmp_path / "ref.pt", make_reference_state_dict(D, N)))
    return save_sae(tmp_path / "e" / "w.safetensors", sae)


def test_safetensors_errors(tmp_path):
    from safetensors.numpy import load_file, save_file

    w = _saelens_export(tmp_path)
    cfg_file = w.with_name("cfg.json")
    good_cfg = cfg_file.read_text()
    data = w.read_bytes()
    w.write_bytes(data[: len(data) - 50])
    with pytest.raises(FormatError, match=r"w\.safetensors: not a readable safetensors file \(truncated or corrupt\?\)"):
        load_sae(w)
    w.write_bytes(data)
    t = load_file(str(w))
    save_file({k: v for k, v in t.items() if k != "b_enc"}, str(w))
    with pytest.raises(FormatError, match=r"w\.safetensors: missing tensor\(s\) 'b_enc'"):
        load_sae(w)
    save_file({**t, "W_dec": t["W_dec"][:, :-1].copy()}, str(w))
    with pytest.raises(FormatError, match=rf"'W_dec' has shape \({N}, {D - 1}\), expected \({N}, {D}\)"):
        load_sae(w)
    w.write_bytes(data)
    cfg_file.write_text(json.dumps({**json.loads(good_cfg), "d_sae": N + 1}))
    with pytest.raises(FormatError, match=rf"cfg\.json: d_sae={N + 1} but the tensors have d_sae={N}"):
        load_sae(w)
    cfg_file.write_text(json.dumps({**json.loads(good_cfg), "architecture": "gated"}))
    with pytest.raises(FormatError, match=r"cfg\.json: SAELens architecture 'gated' cannot be represented here \(we read standard, topk, batchtopk, jumprelu\)$"):
        load_sae(w)
    cfg_file.unlink()
    with pytest.raises(FormatError, match=r"w\.safetensors: no cfg\.json beside it"):
        load_sae(w)


# ---------------------------------------------------------------- CLI


def test_cli_help_and_error_exit_codes(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "mammosae_jax.convert", "--help"], cwd=REPO, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0
    assert "SRC" in r.stdout and "DST" in r.stdout and "--from-hub" in r.stdout and "--force" in r.stdout
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "mammosae_jax.convert", "--from-hub", str(tmp_path / "o.pt")],
                       cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 2
    assert time.monotonic() - t0 < 30  # no retry loop
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: HF_HUB_OFFLINE is set")
    assert "https://huggingface.co/KKNakka/MammoSAE/resolve/main/sparse_autoencoder_final.pt" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o.pt").exists()


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert convert_cli.main([str(tmp_path / "missing.pt"), str(tmp_path / "o.safetensors")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing.pt'}: no such file or folder\n"
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert convert_cli.main([str(tmp_path / "weights.bin"), str(tmp_path / "o.pt")]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    _save_pt(tmp_path / "ref.pt", make_reference_state_dict(D, N))
    (tmp_path / "o.pt").write_bytes(b"keep me")
    assert convert_cli.main([str(tmp_path / "ref.pt"), str(tmp_path / "o.pt")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'o.pt'} exists; pass --force to overwrite it\n"
    assert (tmp_path / "o.pt").read_bytes() == b"keep me"
    assert convert_cli.main([str(tmp_path / "ref.pt"), str(tmp_path / "o.pt"), "--force"]) == 0
    _assert_bitwise_same_state(_load_pt(tmp_path / "ref.pt"), _load_pt(tmp_path / "o.pt"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "cfg.json").write_text("belongs to another SAE")
    assert convert_cli.main([str(tmp_path / "ref.pt"), str(tmp_path / "other" / "new.safetensors")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'other' / 'cfg.json'} exists; pass --force to overwrite it\n"
    assert not (tmp_path / "other" / "new.safetensors").exists()
    with pytest.raises(SystemExit) as e:
        convert_cli.main([])
    assert e.value.code == 2


def test_cli_prints_decoder_norm_warnings(tmp_path, capsys):
    s = make_reference_state_dict(D, N)
    s["decoder._weight"] = s["decoder._weight"] * 2
    _save_pt(tmp_path / "ref.pt", s)
    assert convert_cli.main([str(tmp_path / "ref.pt"), str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {tmp_path / 'ref.pt'}: 40 of 40 decoder vectors are off unit norm")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["cfg.json", "sae_weights.safetensors"]


# ---------------------------------------------------------------- Hub


def test_from_hub_offline_uses_the_local_hub_cache_or_says_where_to_put_the_file(tmp_path, monkeypatch, capsys):
    from mammosae_jax.formats import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_reachable", lambda host, timeout_s: False)  # no network, whatever the machine
    cache = tmp_path / "hf"
    with pytest.raises(FormatError) as e:
        hub.fetch_from_hub(cache_dir=cache)
    msg = str(e.value)
    assert msg.startswith("cannot reach huggingface.co (offline?) and sparse_autoencoder_final.pt is not in the local Hub cache; ")
    assert "download https://huggingface.co/KKNakka/MammoSAE/resolve/main/sparse_autoencoder_final.pt" in msg
    # a copy in the Hub cache layout (refs/main -> snapshots/<rev>/file) is used offline
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / "models--KKNakka--MammoSAE"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(rev)
    (repo_dir / "snapshots" / rev).mkdir(parents=True)
    src = make_reference_state_dict(D, N, seed=9)
    _save_pt(repo_dir / "snapshots" / rev / "sparse_autoencoder_final.pt", src)
    assert hub.fetch_from_hub(cache_dir=cache) == repo_dir / "snapshots" / rev / "sparse_autoencoder_final.pt"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert convert_cli.main(["--from-hub", str(tmp_path / "pub.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    save_sae(tmp_path / "pub.pt", load_sae(tmp_path / "pub.safetensors"))
    _assert_bitwise_same_state(src, _load_pt(tmp_path / "pub.pt"))


# ---------------------------------------------------------------- property: any shape round-trips


@settings(max_examples=12, deadline=None)
@given(d_in=st.integers(1, 9), n_latents=st.integers(1, 17), seed=st.integers(0, 2**16), aliases=st.booleans())
def test_any_shape_round_trips_pt_safetensors_pt_bitwise(tmp_path_factory, d_in, n_latents, seed, aliases):
    from mammosae_jax.formats.reference_pt import state_dict_from_weights, weights_from_state_dict
    from mammosae_jax.formats.saelens import read_saelens, write_saelens

    d = tmp_path_factory.mktemp("prop")
    src = make_reference_state_dict(d_in, n_latents, seed, aliases=aliases)
    w = weights_from_state_dict(src)
    write_saelens(d / "x.safetensors", w, SAEConfig(d_in=d_in, n_latents=n_latents).to_dict())
    w2, config = read_saelens(d / "x.safetensors")
    assert (config["d_in"], config["n_latents"]) == (d_in, n_latents)
    out = state_dict_from_weights(w2)
    for k in src:
        assert torch.equal(bits(src[k]), bits(out[k])), k
