"""The `SAE` object and loading/saving it in every supported format.

=====================  ==================================================================
path                   format
=====================  ==================================================================
a folder               run folder: ``sae_weights.safetensors`` + ``cfg.json`` inside: what
                       SAELens's ``SAE.load_from_disk`` opens (``sae.safetensors``, the name
                       older runs wrote, is read too)
``*.safetensors``      SAELens layout, ``cfg.json`` beside it
``*.pt`` / ``*.pth``   the published reference PyTorch state_dict (needs torch)
=====================  ==================================================================

torch is imported only when a ``.pt`` file is read or written.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mammosae_jax.models import sae as sae_lib
from mammosae_jax.formats import saelens
from mammosae_jax.formats.common import FormatError, SAEWeights, validate_weights
from mammosae_jax.models.sae import PARAM_NAMES, THRESHOLD, SAEConfig, param_names

Format = Literal["run", "safetensors", "pt"]
RUN_WEIGHTS = saelens.WEIGHTS_NAME  # SAELens fixes it (sae_lens/constants.py)
LEGACY_RUN_WEIGHTS = "sae.safetensors"  # what run folders held before; still read
_RUN_WEIGHTS_ALIASES = (RUN_WEIGHTS, LEGACY_RUN_WEIGHTS)
_PT_SUFFIXES = (".pt", ".pth")


def _encode_z(config: SAEConfig, params: sae_lib.Params, x: jax.Array) -> jax.Array:
    lead = x.shape[:-1]
    z_BS = sae_lib.encode(config, params, x.reshape(-1, x.shape[-1])).z
    return z_BS.reshape(*lead, config.n_latents)


def _decode(config: SAEConfig, params: sae_lib.Params, z: jax.Array) -> jax.Array:
    return sae_lib.decode(config, params, z)


class SAE:
    """An SAE ready for inference: its config, its params and jit-compiled encode / decode.

    ``encode`` and ``decode`` accept any leading shape (``(..., d_in)`` -> ``(..., n_latents)``);
    inputs are cast to float32. A jumprelu SAE's params include its per-latent ``threshold``,
    which every consumer of ``params`` (interventions, heatmaps, naming) passes to ``encode``.
    """

    def __init__(self, config: SAEConfig, params: Mapping[str, Any]) -> None:
        missing = [n for n in param_names(config) if n not in params]
        if missing:
            raise FormatError(f"{config.variant} SAE params lack {', '.join(missing)}")
        threshold = np.asarray(params[THRESHOLD]) if THRESHOLD in param_names(config) else None
        w = validate_weights(SAEWeights(*(np.asarray(params[n]) for n in PARAM_NAMES), threshold=threshold),
                             "SAE params")
        if (w.d_in, w.n_latents) != (config.d_in, config.n_latents):
            raise FormatError(f"SAE params are d_in={w.d_in}, n_latents={w.n_latents} "
                              f"but the config says d_in={config.d_in}, n_latents={config.n_latents}")
        self.config = config
        self.params: sae_lib.Params = {n: jnp.asarray(a) for n, a in w.present().items()}
        self._encode = jax.jit(functools.partial(_encode_z, config))
        self._decode = jax.jit(functools.partial(_decode, config))

    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def n_latents(self) -> int:
        return self.config.n_latents

    def encode(self, x: Any) -> jax.Array:
        """Latents z (..., n_latents) of inputs x (..., d_in), by the variant's inference rule."""
        return self._encode(self.params, jnp.asarray(x, jnp.float32))

    def decode(self, z: Any) -> jax.Array:
        """Reconstruction x̂ = z @ W_dec + b_dec."""
        return self._decode(self.params, jnp.asarray(z, jnp.float32))

    def weights(self) -> SAEWeights:
        """The params as float32 numpy arrays."""
        thr = self.params.get(THRESHOLD)
        return SAEWeights(*(np.asarray(self.params[n]) for n in PARAM_NAMES),
                          threshold=None if thr is None else np.asarray(thr))

    def __repr__(self) -> str:
        return f"SAE(d_in={self.d_in}, n_latents={self.n_latents}, variant={self.config.variant!r})"


def detect_format(path: str | os.PathLike, *, for_writing: bool = False) -> Format:
    """Which format ``path`` names: by its suffix, or ``run`` for a folder.

    For writing, a path that does not exist yet and has no suffix is taken as a folder.
    """
    p = Path(path)
    if not for_writing and not p.exists():
        raise FormatError(f"{p}: no such file or folder")
    if p.is_dir():
        return "run"
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in _PT_SUFFIXES:
        return "pt"
    if for_writing and not p.exists() and not suffix:
        return "run"
    raise FormatError(f"{p}: cannot tell the format; expected a run folder, a .safetensors file or a .pt file")


def _config_from_dict(d: Mapping[str, Any], source: str) -> SAEConfig:
    try:
        return SAEConfig.from_dict(dict(d))
    except (TypeError, ValueError) as e:
        raise FormatError(f"{source}: invalid SAE config: {e}") from None


def _reference_config(d_in: int, n_latents: int) -> SAEConfig:
    """The reference SAE's config (ReLU: no k)."""
    return SAEConfig(d_in=d_in, n_latents=n_latents, variant="relu")


def _run_weights(run: Path) -> Path:
    for name in _RUN_WEIGHTS_ALIASES:
        if (run / name).is_file():
            return run / name
    raise FormatError(f"{run}: no {RUN_WEIGHTS} (or {LEGACY_RUN_WEIGHTS}) in this folder "
                      f"(a training run writes it when it finishes)")


def load_sae(path: str | os.PathLike) -> SAE:
    """Load an SAE from a run folder, a SAELens ``.safetensors`` (+ cfg.json) or a reference ``.pt``."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "pt":
        from mammosae_jax.formats.reference_pt import read_reference_pt

        w = read_reference_pt(p)
        return SAE(_reference_config(w.d_in, w.n_latents), w.present())
    weights_path = _run_weights(p) if fmt == "run" else p
    w, config_dict = saelens.read_saelens(weights_path)
    return SAE(_config_from_dict(config_dict, str(saelens.cfg_path_for(weights_path))), w.present())


def save_sae(path: str | os.PathLike, sae: SAE) -> Path:
    """Write ``sae`` in the format named by ``path`` (atomically); return the weights file written.

    A folder gets ``sae_weights.safetensors`` + ``cfg.json``; ``x.safetensors`` gets ``cfg.json`` beside
    it; ``x.pt`` gets the reference state_dict (ReLU SAEs only: the reference code has no other).
    """
    p = Path(path)
    fmt = detect_format(p, for_writing=True)
    w = sae.weights()
    if fmt == "pt":
        if sae.config.variant != "relu":
            raise FormatError(f"{p}: the reference .pt format holds only ReLU SAEs, this one is "
                              f"{sae.config.variant!r}; save it as .safetensors instead")
        from mammosae_jax.formats.reference_pt import write_reference_pt

        write_reference_pt(p, w)
        return p
    weights_path = p / RUN_WEIGHTS if fmt == "run" else p
    saelens.write_saelens(weights_path, w, sae.config.to_dict())
    return weights_path


__all__ = ["SAE", "FormatError", "detect_format", "load_sae", "save_sae"]
