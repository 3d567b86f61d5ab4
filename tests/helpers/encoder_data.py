"""Shared helpers for the extraction tests: random-weight checkpoints in the real layouts.

Key names come from a real `efficientnet_pytorch` model, so the files look like Mammo-CLIP's
(SPEC §2): `image_encoder.<k>` without `_fc.*`, CLIP extras, an omegaconf config.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from extract.calibration import random_calibrated_encoder
from extract.encoder import build_encoder


ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
"""Environment for CLI subprocesses: one OpenMP thread (see `one_torch_thread`)."""


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run torch on one thread: on this shared 2-core machine OpenMP barriers of 2 threads spin
    behind other processes and a tiny B2 forward takes ~3.5 s instead of ~0.04 s (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def encoder_state(arch: str = "b2", seed: int = 0, calib: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A random-weight encoder state dict with BatchNorm calibrated on `calib` (default: noise), no `_fc.*`."""
    model = build_encoder(arch)
    if calib is None:
        calib = torch.rand(4, 3, 64, 48, generator=torch.Generator().manual_seed(seed + 1))
    random_calibrated_encoder(model, seed, calib)
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("_fc.")}


def clip_config():
    """An omegaconf config shaped like Mammo-CLIP's (nested dicts, lists, None, floats)."""
    return OmegaConf.create({
        "base": {"period": "train", "seed": 10, "amp": True, "resume": None},
        "model": {"image_encoder": {"name": "tf_efficientnet_b5_ns-detect", "pretrained": False},
                  "projection_head": {"proj_dim": 512}},
        "data_train": [{"name": "upmc"}, {"name": "vindr"}],
        "optimizer": {"config": {"lr": 5.0e-5, "weight_decay": 0.1}},
    })


def write_clip_tar(path: Path, state: dict[str, torch.Tensor], channels: int) -> None:
    """Save a CLIP `.tar` in the real layout (encoder, projections, a tiny text encoder)."""
    gen = torch.Generator().manual_seed(7)
    model = {f"image_encoder.{k}": v for k, v in state.items()}
    model.update({
        "image_projection.projection.weight": torch.randn(512, channels, generator=gen),
        "image_projection.projection.bias": torch.zeros(512),
        "text_encoder.embeddings.word_embeddings.weight": torch.randn(8, 4, generator=gen),
        "text_projection.projection.weight": torch.randn(512, 768, generator=gen),
        "text_projection.projection.bias": torch.zeros(512),
        "logit_scale": torch.tensor(2.6592),
    })
    torch.save({"model": model, "optimizer": {}, "scheduler": {}, "config": clip_config(),
                "epoch": 7, "train_loss": 1.25}, path)


def write_classifier_pth(path: Path, state: dict[str, torch.Tensor], weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Save a downstream classifier `.pth` (`image_encoder.*` + `classifier.classification_head.*`)."""
    model = {f"image_encoder.{k}": v for k, v in state.items()}
    model["classifier.classification_head.weight"] = weight
    model["classifier.classification_head.bias"] = bias
    torch.save({"model": model, "epoch": 3}, path)
