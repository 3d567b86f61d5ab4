"""SAELens layout: ``sae_weights.safetensors`` (W_enc, W_dec, b_enc, b_dec[, threshold]) + ``cfg.json``.

Tensor names and layout are SAELens's and ours: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, float32, and ``threshold [d_sae]`` for JumpReLU.
``cfg.json`` carries the SAELens 6 fields (``architecture``, ``d_in``, ``d_sae``, ``dtype``,
``device``, ``apply_b_dec_to_input``, ``normalize_activations``, ``k`` where relevant) and a
``metadata`` object with ``sae_lens_version`` (without it SAELens takes the file for a pre-6.0
config and drops ``metadata``) and our full ``SAEConfig`` under ``metadata.mammosae_jax``, so a
round trip is lossless and the config survives a SAELens load.

Variants map to SAELens architectures SAELens can load for inference: relu -> ``standard``,
topk -> ``topk``, jumprelu -> ``jumprelu`` (its per-latent threshold), batchtopk and matryoshka
with a learned inference threshold -> ``jumprelu`` with that threshold for every latent (what
SAELens's own ``save_inference_model`` makes of its BatchTopK); without one -> ``topk`` with
their k (SAELens's ``batchtopk`` is a training-only class). Foreign SAELens files are read too:
``apply_b_dec_to_input=false`` and ``rescale_acts_by_decoder_norm=true`` are folded into the
weights exactly (in real arithmetic); any other architecture or option is refused by name.

Only numpy, json and safetensors are imported here (no torch, no jax).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from cache.safetensors_np import write_stream
from mammosae_jax.formats.common import (FormatError, SAEWeights, atomic_path, validate_weights,
                                         warn_if_not_unit_norm)

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"  # the name SAELens fixes inside a folder (sae_lens/constants.py)
TENSOR_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
OUR_KEY = "mammosae_jax"  # metadata.mammosae_jax = {"format_version", "sae_config"}
FORMAT_VERSION = 1
#: metadata.sae_lens_version: the SAELens release whose format we write and test against (>= 6.0).
SAELENS_VERSION = "6.54.12"
READ_ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")
_ARCH_OF_VARIANT = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu",
                    "batchtopk": "topk", "matryoshka": "topk"}  # the last two: jumprelu once thresholded
_THRESHOLDED = ("batchtopk", "matryoshka")  # variants whose learned scalar threshold exports as JumpReLU
_DEFAULT_K = 32  # SAEConfig's default; only used when a foreign file has no k


def cfg_path_for(weights_path: str | os.PathLike) -> Path:
    """The ``cfg.json`` that belongs to a ``.safetensors`` file (same folder)."""
    return Path(weights_path).with_name(CFG_NAME)


def saelens_architecture(sae_config: Mapping[str, Any]) -> str:
    """The SAELens architecture an SAE of this ``SAEConfig`` dict is written as."""
    variant = sae_config["variant"]
    if variant not in _ARCH_OF_VARIANT:
        raise FormatError(f"variant {variant!r} has no SAELens architecture (known: {', '.join(_ARCH_OF_VARIANT)})")
    if variant in _THRESHOLDED and sae_config.get("threshold") is not None:
        return "jumprelu"
    return _ARCH_OF_VARIANT[variant]


def saelens_cfg(sae_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``cfg.json`` dict for an SAE whose ``SAEConfig.to_dict()`` is ``sae_config``."""
    arch = saelens_architecture(sae_config)
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
    if arch == "topk":
        cfg["k"] = int(sae_config["k"])
        cfg["rescale_acts_by_decoder_norm"] = False
    cfg["metadata"] = {"sae_lens_version": SAELENS_VERSION,
                       OUR_KEY: {"format_version": FORMAT_VERSION, "sae_config": dict(sae_config)}}
    return cfg


def write_saelens(weights_path: str | os.PathLike, w: SAEWeights, sae_config: Mapping[str, Any]) -> Path:
    """Write ``weights_path`` (.safetensors) and ``cfg.json`` beside it, each atomically.

    The same weights and config always give the same bytes (sorted safetensors header).
    """
    weights_path = Path(weights_path)
    w = validate_weights(w, str(weights_path))
    cfg = saelens_cfg(sae_config)
    tensors = {n: getattr(w, n) for n in TENSOR_NAMES}
    if cfg["architecture"] == "jumprelu":
        if sae_config["variant"] == "jumprelu":
            if w.threshold is None:
                raise FormatError(f"{weights_path}: a jumprelu SAE needs its 'threshold' tensor")
            tensors["threshold"] = w.threshold
        else:
            tensors["threshold"] = np.full((w.n_latents,), sae_config["threshold"], np.float32)
    header = {"format": "pt", OUR_KEY: str(FORMAT_VERSION)}  # "pt": what HF/SAELens loaders expect
    cfg_file = cfg_path_for(weights_path)
    with atomic_path(weights_path) as tmp_w, atomic_path(cfg_file) as tmp_c:
        with open(tmp_w, "wb") as f:
            write_stream(f, tensors, header)
        tmp_c.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
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


def _check_tensor_names(arch: str, tensors: Mapping[str, Any], source: str) -> None:
    """FormatError unless `tensors` holds exactly the tensors of a SAELens `arch` save."""
    expected = set(TENSOR_NAMES) | ({"threshold"} if arch == "jumprelu" else set())
    if arch == "batchtopk" and "topk_threshold" in tensors:  # a SAELens BatchTopK training SAE's save
        expected.add("topk_threshold")
    missing = sorted(expected - set(tensors))
    if missing:
        raise FormatError(f"{source}: missing tensor(s) {', '.join(map(repr, missing))}")
    unexpected = sorted(set(tensors) - expected)
    if unexpected:
        raise FormatError(f"{source}: unexpected tensor(s) {', '.join(map(repr, unexpected))} for architecture {arch!r}")


def _fold_options(cfg: Mapping[str, Any], arch: str, w: SAEWeights, cfg_file: Path) -> SAEWeights:
    """Weights computing the same function with b_dec subtracted from the input and unit decoder rows."""
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise FormatError(f"{cfg_file}: normalize_activations={norm!r} is not supported; fold the scaling into the weights first")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise FormatError(f"{cfg_file}: reshape_activations={cfg['reshape_activations']!r} is not supported")
    if not cfg.get("apply_b_dec_to_input", True):
        # act(x W + b) = act((x - b_dec) W + (b + b_dec W)): fold so that b_dec is subtracted.
        # The pre-activations are unchanged, so a JumpReLU threshold is too.
        b_enc = w.b_enc.astype(np.float64) + w.b_dec.astype(np.float64) @ w.W_enc.astype(np.float64)
        w = w._replace(b_enc=b_enc.astype(np.float32))
    if arch in ("topk", "batchtopk") and cfg.get("rescale_acts_by_decoder_norm", False):
        # topk(pre · |d_i|) decoded with W_dec / |d_i|: scale the encoder up, the decoder to unit rows.
        norm_S = np.linalg.norm(w.W_dec.astype(np.float64), axis=1)
        w = w._replace(W_enc=(w.W_enc * norm_S[None, :]).astype(np.float32),
                       b_enc=(w.b_enc * norm_S).astype(np.float32),
                       W_dec=(w.W_dec / norm_S[:, None]).astype(np.float32))
    return w


def read_saelens(weights_path: str | os.PathLike) -> tuple[SAEWeights, dict[str, Any]]:
    """Read a SAELens-layout ``.safetensors`` + ``cfg.json``; return weights and an ``SAEConfig`` dict."""
    weights_path = Path(weights_path)
    source = str(weights_path)
    if not weights_path.is_file():
        raise FormatError(f"{source}: no such file")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise FormatError(f"{source}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    cfg_file = cfg_path_for(weights_path)
    cfg = _read_cfg(cfg_file, source)

    arch = _architecture(cfg)
    if arch not in READ_ARCHITECTURES:
        raise FormatError(f"{cfg_file}: SAELens architecture {arch!r} cannot be represented here "
                          f"(we read {', '.join(READ_ARCHITECTURES)})")
    _check_tensor_names(arch, tensors, source)
    w = validate_weights(SAEWeights(*(tensors[n] for n in TENSOR_NAMES), threshold=tensors.get("threshold")), source)
    for key, actual in (("d_in", w.d_in), ("d_sae", w.n_latents)):
        if key in cfg and int(cfg[key]) != actual:
            raise FormatError(f"{cfg_file}: {key}={cfg[key]} but the tensors have {key}={actual} ('W_enc' {w.W_enc.shape})")
    w = _fold_options(cfg, arch, w, cfg_file)
    if arch != "jumprelu":  # JumpReLU works with any decoder norm (SAELens's Gemma Scope files are not unit)
        warn_if_not_unit_norm(w.W_dec, source)

    metadata = cfg.get("metadata")
    ours = metadata.get(OUR_KEY) if isinstance(metadata, dict) else None
    config = (_our_config(ours, w, cfg_file) if ours is not None
              else _config_from_foreign(cfg, arch, w, tensors.get("topk_threshold"), cfg_file))
    return (w if config.get("variant") == "jumprelu" else w._replace(threshold=None)), config


def _our_config(ours: Any, w: SAEWeights, cfg_file: Path) -> dict[str, Any]:
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
    return sae_config


def _config_from_foreign(cfg: Mapping[str, Any], arch: str, w: SAEWeights,
                         topk_threshold: np.ndarray | None, cfg_file: Path) -> dict[str, Any]:
    """An ``SAEConfig`` dict for a SAELens file that we did not write."""
    out: dict[str, Any] = {"d_in": w.d_in, "n_latents": w.n_latents}
    if arch == "standard":
        return {**out, "variant": "relu"}
    if arch == "jumprelu":  # one threshold per latent, read as it is
        return {**out, "variant": "jumprelu"}
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if k is None:
        raise FormatError(f"{cfg_file}: architecture {arch!r} needs 'k'")
    if int(k) != k or not 0 < int(k) <= w.n_latents:
        raise FormatError(f"{cfg_file}: k={k} is not an integer in [1, d_sae={w.n_latents}]")
    out.update(variant=arch, k=int(k))
    if topk_threshold is not None:  # a BatchTopK training SAE's learned threshold (< 0: not learned yet)
        thr = float(np.asarray(topk_threshold, np.float64).reshape(-1)[0])
        out["threshold"] = thr if thr >= 0 else None
    return out
