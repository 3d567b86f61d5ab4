"""Train / sweep option groups built on `cache.config_options` (flags from the config dataclasses)."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Iterable

from cache.config_options import add_config_options, add_field


def sae_config_from_args(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """An `SAEConfig` from parsed options: the variant's own knobs only (a relu SAE carries no k)."""
    from mammosae_jax.models.variants import get_variant

    unused = {"k"} if not get_variant(args.variant).uses_k else set()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if hasattr(args, f.name) and f.name not in unused}
    return cls(**{**given, **values})


STEPS_OR_EPOCHS = ("epochs", "steps")


def add_train_options(parser: Any, title: str, skip: Iterable[str] = ()) -> Any:
    """A group with every `TrainConfig` field but `skip` (exactly one of --epochs / --steps required); the group."""
    from mammosae_jax.training.config import FEEDS, TrainConfig

    g = parser.add_argument_group(title)
    n = g.add_mutually_exclusive_group(required=True)
    for name in STEPS_OR_EPOCHS:
        add_field(n, TrainConfig, name)
    add_config_options(g, TrainConfig, skip=(*STEPS_OR_EPOCHS, *skip), choices={"feed": FEEDS})
    return g
