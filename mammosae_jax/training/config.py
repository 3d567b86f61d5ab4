"""How an SAE is trained (the SAE itself is `mammosae_jax.models.sae.SAEConfig`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

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
        for name in ("batch_size", "checkpoint_every", "log_every", "keep_checkpoints", "prefetch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if (self.epochs or 1) <= 0 or (self.steps or 1) <= 0:
            raise ValueError("epochs / steps must be positive")
        if self.feed not in FEEDS:
            raise ValueError(f"feed must be one of {', '.join(FEEDS)}, got {self.feed!r}")
        if self.window_mb < 0:
            raise ValueError(f"window_mb must be >= 0, got {self.window_mb}")
        if not 0.0 < self.token_fraction <= 1.0:
            raise ValueError(f"token_fraction must be in (0, 1], got {self.token_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def dead_after_steps(self) -> int:
        """dead_after_tokens in steps (at least one)."""
        return max(1, -(-self.dead_after_tokens // self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**d)
