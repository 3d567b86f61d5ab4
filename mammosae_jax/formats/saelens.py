"""SAELens-style export: ``*.safetensors`` (W_enc, W_dec, b_enc, b_dec) with ``cfg.json`` beside it.

Tensor names and layout are SAELens's and ours: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, float32. ``cfg.json`` carries the SAELens fields
(``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``,
``normalize_activations``, ``k`` where relevant) and our full ``SAEConfig`` under
``metadata.mammosae_jax`` (SAELens keeps ``metadata`` as free-form), so a round trip is lossless.

Variants map to SAELens architectures: relu -> ``standard``, topk -> ``topk``, batchtopk with a
learned inference threshold -> ``jumprelu`` plus a uniform ``threshold [d_sae]`` tensor (how
SAELens itself saves BatchTopK SAEs for inference), batchtopk without one -> ``batchtopk``.
Foreign SAELens files are read too: ``apply_b_dec_to_input=false`` and
``rescale_acts_by_decoder_norm=true`` are folded into the weights exactly (in real arithmetic).

Only numpy, json and safetensors are imported here (no torch, no jax).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from mammosae_jax.formats.common import (FormatError, SAEWeights, atomic_path, validate_weights,
                                         warn_if_not_unit_norm)

CFG_NAME = "cfg.json"
TENSOR_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
OUR_KEY = "mammosae_jax"  # metadata.mammosae_jax = {"format_version", "sae_config"}
FORMAT_VERSION = 1
_ARCH_OF_VARIANT = {"relu": "standard", "topk": "topk", "batchtopk": "batchtopk"}
_DEFAULT_K = 32  # SAEConfig's default; only used when a foreign file has no k


def cfg_path_for(weights_path: str | os.PathLike) -> Path:
    """The ``cfg.json`` that belongs to a ``.safetensors`` file (same folder)."""
    return Path(weights_path).with_name(CFG_NAME)


def saelens_cfg(sae_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``cfg.json`` dict for an SAE whose ``SAEConfig.to_dict()`` is ``sae_config``."""
    variant = sae_config["variant"]
    if variant not in _ARCH_OF_VARIANT:
        raise FormatError(f"variant {variant!r} has no SAELens architecture (known: {', '.join(_ARCH_OF_VARIANT)})")
    arch = _ARCH_OF_VARIANT[variant]
    if variant == "batchtopk" and sae_config.get("threshold") is not None:
        if sae_config["threshold"] < 0:  # JumpReLU also applies ReLU; equal only for thresholds >= 0
            raise FormatError(f"batchtopk threshold {sae_config['threshold']} < 0 has no SAELens JumpReLU equivalent")
        arch = "jumprelu"
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": int(sae_config["d_in"]),
        "d_sae": int(sae_config["n_latents"]),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if arch in ("topk", "batchtopk"):
        cfg["k"] = int(sae_config["k"])
        cfg["rescale_acts_by_decoder_norm"] = False
    cfg["metadata"] = {OUR_KEY: {"format_version": FORMAT_VERSION, "sae_config": dict(sae_config)}}
    return cfg


def write_saelens(weights_path: str | os.PathLike, w: SAEWeights, sae_config: Mapping[str, Any]) -> Path:
    """Write ``weights_path`` (.safetensors) and ``cfg.json`` beside it, each atomically."""
    weights_path = Path(weights_path)
    w = validate_weights(w, str(weights_path))
    cfg = saelens_cfg(sae_config)
    tensors = dict(w._asdict())
    if cfg["architecture"] == "jumprelu":
        tensors["threshold"] = np.full((w.n_latents,), sae_config["threshold"], np.float32)
    header = {"format": "pt", OUR_KEY: str(FORMAT_VERSION)}  # "pt": what HF/SAELens loaders expect
    cfg_file = cfg_path_for(weights_path)
    with atomic_path(weights_path) as tmp_w, atomic_path(cfg_file) as tmp_c:
        save_file(tensors, str(tmp_w), metadata=header)
        tmp_c.write_text(json.dumps(cfg, indent=2) + "\n")
    return cfg_file


def _read_cfg(cfg_file: Path, source: str) -> dict[str, Any]:
    if not cfg_file.is_file():
        raise FormatError(f"{source}: no {CFG_NAME} beside it ({cfg_file}); SAELens weights need their config")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{cfg_file}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise FormatError(f"{cfg_file}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _architecture(cfg: Mapping[str, Any]) -> str:
    if "architecture" in cfg:
        return str(cfg["architecture"])
    act = cfg.get("activation_fn_str", "relu")  # SAELens < 6 wrote no architecture
    return {"relu": "standard", "topk": "topk"}.get(act, str(act))


def read_saelens(weights_path: str | os.PathLike) -> tuple[SAEWeights, dict[str, Any]]:
    """Read a SAELens-layout ``.safetensors`` + ``cfg.json``; return weights and an ``SAEConfig`` dict."""
    weights_path = Path(weights_path)
    source = str(weights_path)
    if not weights_path.is_file():
        raise FormatError(f"{source}: no such file")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{source}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    cfg_file = cfg_path_for(weights_path)
    cfg = _read_cfg(cfg_file, source)

    arch = _architecture(cfg)
    if arch not in ("standard", "topk", "batchtopk", "jumprelu"):
        raise FormatError(f"{cfg_file}: architecture {arch!r} is not supported (standard, topk, batchtopk, jumprelu)")
    expected = set(TENSOR_NAMES) | ({"threshold"} if arch == "jumprelu" else set())
    missing = sorted(expected - set(tensors))
    if missing:
        raise FormatError(f"{source}: missing tensor(s) {', '.join(map(repr, missing))}")
    unexpected = sorted(set(tensors) - expected)
    if unexpected:
        raise FormatError(f"{source}: unexpected tensor(s) {', '.join(map(repr, unexpected))} for architecture {arch!r}")
    w = validate_weights(SAEWeights(*(tensors[n] for n in TENSOR_NAMES)), source)
    for key, actual in (("d_in", w.d_in), ("d_sae", w.n_latents)):
        if key in cfg and int(cfg[key]) != actual:
            raise FormatError(f"{cfg_file}: {key}={cfg[key]} but the tensors have {key}={actual} ('W_enc' {w.W_enc.shape})")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise FormatError(f"{cfg_file}: normalize_activations={norm!r} is not supported; fold the scaling into the weights first")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise FormatError(f"{cfg_file}: reshape_activations={cfg['reshape_activations']!r} is not supported")

    if not cfg.get("apply_b_dec_to_input", True):
        # act(x W + b) = act((x - b_dec) W + (b + b_dec W)): fold so that b_dec is subtracted.
        w = w._replace(b_enc=(w.b_enc.astype(np.float64) + w.b_dec.astype(np.float64) @ w.W_enc.astype(np.float64)).astype(np.float32))
    if arch in ("topk", "batchtopk") and cfg.get("rescale_acts_by_decoder_norm", False):
        # topk(pre · |d_i|) decoded with W_dec / |d_i|: scale the encoder up, the decoder to unit rows.
        norm_S = np.linalg.norm(w.W_dec.astype(np.float64), axis=1)
        w = SAEWeights(
            W_enc=(w.W_enc * norm_S[None, :]).astype(np.float32),
            b_enc=(w.b_enc * norm_S).astype(np.float32),
            W_dec=(w.W_dec / norm_S[:, None]).astype(np.float32),
            b_dec=w.b_dec,
        )
    warn_if_not_unit_norm(w.W_dec, source)

    metadata = cfg.get("metadata")
    ours = metadata.get(OUR_KEY) if isinstance(metadata, dict) else None
    if ours is not None:
        if not isinstance(ours, dict) or not isinstance(ours.get("sae_config"), dict):
            raise FormatError(f"{cfg_file}: metadata.{OUR_KEY} must be an object with a 'sae_config' object")
        version = ours.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise FormatError(f"{cfg_file}: written by a newer mammosae_jax (format_version {version!r}; "
                              f"this one reads up to {FORMAT_VERSION})")
        sae_config = dict(ours["sae_config"])
        for key, actual in (("d_in", w.d_in), ("n_latents", w.n_latents)):
            if sae_config.get(key) != actual:
                raise FormatError(f"{cfg_file}: metadata.{OUR_KEY}.sae_config.{key}={sae_config.get(key)} but the tensors have {actual}")
        return w, sae_config
    return w, _config_from_foreign(cfg, arch, w, tensors.get("threshold"), cfg_file)


def _config_from_foreign(cfg: Mapping[str, Any], arch: str, w: SAEWeights,
                         threshold: np.ndarray | None, cfg_file: Path) -> dict[str, Any]:
    """An ``SAEConfig`` dict for a SAELens file that we did not write."""
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    out: dict[str, Any] = {"d_in": w.d_in, "n_latents": w.n_latents}
    if arch == "standard":
        out["variant"] = "relu"
    elif arch in ("topk", "batchtopk"):
        if k is None:
            raise FormatError(f"{cfg_file}: architecture {arch!r} needs 'k'")
        if int(k) != k:
            raise FormatError(f"{cfg_file}: k={k} is not an integer")
        out.update(variant=arch, k=int(k))
    else:  # jumprelu: our batchtopk with its inference threshold, if the threshold is uniform
        thr = np.asarray(threshold, np.float32).reshape(-1)
        if thr.shape != (w.n_latents,):
            raise FormatError(f"{cfg_file}: 'threshold' has shape {np.shape(threshold)}, expected ({w.n_latents},)")
        if not (thr == thr[0]).all() or thr[0] < 0:
            raise FormatError(f"{cfg_file}: 'threshold' must be one non-negative value for all latents "
                              f"(got {thr.min():g}..{thr.max():g}); per-latent JumpReLU is not supported")
        out.update(variant="batchtopk", k=min(int(k) if k is not None else _DEFAULT_K, w.n_latents),
                   threshold=float(thr[0]))
    return out
