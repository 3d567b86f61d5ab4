"""mammosae_jax: sparse autoencoders on Mammo-CLIP features, in JAX.

`SAE`, `load_sae` and `save_sae` are imported lazily from `mammosae_jax.models.sae_io`, so that
`import mammosae_jax` stays cheap (no jax until they are used, never torch).

Layout by job (docs/ARCHITECTURE.md): `models/` (the SAE), `formats/` (weight files), `training/`,
`analysis/` (concepts), `viz/` (figures), `demo/`, `cli/` (the commands; `python -m mammosae_jax`
lists them).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mammosae_jax.models.sae_io import SAE, load_sae, save_sae

_LAZY = {"SAE": "mammosae_jax.models.sae_io", "load_sae": "mammosae_jax.models.sae_io", "save_sae": "mammosae_jax.models.sae_io"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
