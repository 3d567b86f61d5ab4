"""Train / sweep option groups built on `cache.config_options` (flags from the config dataclasses)."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Iterable

from cache.config_options import add_config_options, add_field


def sae_config_from_args(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """An `SAEConfig` from parsed options: the variant's own knobs only (a relu SAE carries no k)."""
    from mammosae_jax.models.variants import get_variant
    from mammosae_jax.training.config import check_range

    unused = {"k"} if not get_variant(args.variant).uses_k else set()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if hasattr(args, f.name) and f.name not in unused}
    check_range("l1_coeff", given.get("l1_coeff"), (0, True, None, False), flag="--l1")
    return cls(**{**given, **values})


def at_least(minimum: int):
    """argparse type of a count flag (--top, --batch-size, ...): an integer >= `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int, non_negative_int = at_least(1), at_least(0)


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
