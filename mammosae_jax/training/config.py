"""How an SAE is trained (the SAE itself is `mammosae_jax.models.sae.SAEConfig`)."""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

# Allowed range of every numeric field: (low, low inclusive, high, high inclusive); None = unbounded.
RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "lr": (0, False, None, False), "b1": (0, True, 1, False), "b2": (0, True, 1, False),
    "eps": (0, False, None, False), "batch_size": (1, True, None, False), "epochs": (1, True, None, False),
    "steps": (1, True, None, False), "token_fraction": (0, False, 1, True),
    "resample_every_epochs": (0, True, None, False), "resample_stop_epochs": (0, True, None, False),
    "resample_tokens": (1, True, None, False), "dead_after_tokens": (1, True, None, False),
    "threshold_ema": (0, True, 1, True), "val_fraction": (0, True, 1, False),
    "val_max_tokens": (1, True, None, False), "dense_above": (0, False, 1, True),
    "checkpoint_every": (1, True, None, False), "keep_checkpoints": (1, True, None, False),
    "log_every": (1, True, None, False), "prefetch": (1, True, None, False), "window_mb": (0, True, None, False),
}


def check_range(name: str, value: float | None, rule: tuple[float | None, bool, float | None, bool],
                flag: str | None = None) -> None:
    """ValueError naming the flag (`--token-fraction`) unless `value` is finite and inside `rule`."""
    if value is None or not isinstance(value, numbers.Real):
        return  # e.g. a traced lr in the sweep's vmapped optimiser: the sweep checked the grid's values
    low, low_in, high, high_in = rule
    ok = not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or value > low or (low_in and value == low))
    ok = ok and (high is None or value < high or (high_in and value == high))
    if not ok:
        lo = "" if low is None else f"{'>=' if low_in else '>'} {low}"
        hi = "" if high is None else f"{'<=' if high_in else '<'} {high}"
        want = " and ".join(x for x in (lo, hi) if x)
        raise ValueError(f"{flag or '--' + name.replace('_', '-')} must be a finite number {want}, got {value!r}")

FEEDS = ("device", "stream")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule, data and bookkeeping settings of one run."""

    lr: float = 5e-4
    """Adam learning rate (constant)."""
    b1: float = 0.9
    """Adam β1."""
    b2: float = 0.999
    """Adam β2."""
    eps: float = 1e-8
    """Adam ε."""
    batch_size: int = 4096
    """Global batch in tokens (split over processes and devices)."""
    epochs: int | None = None
    """Epochs over the training tokens (exactly one of epochs / steps)."""
    steps: int | None = None
    """Total optimiser steps (exactly one of epochs / steps)."""
    token_fraction: float = 1.0
    """Fraction of each image's positions drawn per epoch (the reference used 0.25)."""
    seed: int = 0
    """Seeds init, token sampling, patient split and resampling."""
    resample_every_epochs: int = 10
    """relu: resample dead latents after every this many epochs (0 = never)."""
    resample_stop_epochs: int = 11
    """relu: no resampling once fewer than this many epochs remain."""
    resample_tokens: int = 20_000
    """relu: tokens drawn to pick new dictionary vectors."""
    dead_after_tokens: int = 10_000_000
    """A latent silent for this many training tokens counts as dead (AuxK, dead fraction)."""
    threshold_ema: float = 0.99
    """batchtopk: EMA factor of the inference threshold."""
    val_fraction: float = 0.05
    """Fraction of the training split's *patients* held out for validation."""
    val_max_tokens: int = 200_000
    """Cap on validation tokens per evaluation."""
    dense_above: float = 0.1
    """A latent firing on more than this fraction of validation tokens counts as dense."""
    checkpoint_every: int = 1000
    """Save a checkpoint every this many steps (and always at the end)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk."""
    log_every: int = 100
    """Write a metrics line every this many steps."""
    prefetch: int = 2
    """Batches prepared ahead of the device by the loader thread (feed stream)."""
    feed: str = "device"
    """Training batches: device (the host reads windows as stored, the device shuffles, casts and batches) or stream (host-shuffled float32 batches)."""
    window_mb: float = 0.0
    """feed device: MiB of tokens per shuffle window (0 = 1/8 of the device memory, at most 4096; 256 on CPU)."""

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of epochs or steps")
        for name, rule in RANGES.items():
            check_range(name, getattr(self, name), rule)
        if self.feed not in FEEDS:
            raise ValueError(f"feed must be one of {', '.join(FEEDS)}, got {self.feed!r}")

    def dead_after_steps(self) -> int:
        """dead_after_tokens in steps (at least one)."""
        return max(1, -(-self.dead_after_tokens // self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**d)
