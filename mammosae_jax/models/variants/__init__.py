"""The SAE variants, registered in one place.

Adding a variant = one new file implementing `base.Variant` + one line in `VARIANTS`.
"""
from __future__ import annotations

from mammosae_jax.models.variants.base import TrainForward, Variant
from mammosae_jax.models.variants.batchtopk import BATCHTOPK
from mammosae_jax.models.variants.jumprelu import JUMPRELU
from mammosae_jax.models.variants.matryoshka import MATRYOSHKA
from mammosae_jax.models.variants.relu import RELU
from mammosae_jax.models.variants.topk import TOPK

VARIANTS: dict[str, Variant] = {v.name: v for v in (RELU, TOPK, BATCHTOPK, JUMPRELU, MATRYOSHKA)}


def get_variant(name: str) -> Variant:
    """The registered variant called `name` (ValueError listing the known ones otherwise)."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown SAE variant {name!r}; known: {', '.join(VARIANTS)}") from None


__all__ = ["VARIANTS", "TrainForward", "Variant", "get_variant"]
