"""Random-weight encoder that still carries image content: re-initialise, then calibrate BatchNorm.

A default-initialised EfficientNet in eval mode shrinks the signal at every layer (running
variance 1, conv gain < 1) and its head output is ~1e-12. Re-estimating every BatchNorm's running
statistics on real images (cumulative average, a few train-mode passes without gradients) makes
each layer unit-scale again, so the features are O(1) and differ between images.

Calibrate on ONE batch. Measured here (B2, random weights): with several small batches the
cumulative statistics do not match what eval mode sees (train mode removes the between-batch
spread at every layer, eval mode does not), the mismatch compounds through ~80 BatchNorms and
the eval features blow up to ~1e3-1e4. One train-mode pass over a single batch makes every
layer's running statistics exactly the statistics of its eval-mode input on that batch.

Residual branches start at zero (``residual_gain=0``, the "zero-gamma" init). Measured on 240
phantoms at 384x224 (B5, 64 calibration images): with the plain init the random network is
chaotic (the largest pooled mean-square is ~1e4x the median, dense breasts blow up) and lesion
positions are smeared away; with zero-gamma the ratio is 28x, and the cross-validated pooled-head
AUROC rises from 0.74 to 0.83 (calcification) and 0.81 to 0.85 (mass).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
from efficientnet_pytorch import EfficientNet

from extract.encoder import reinitialise

RANDOM_WEIGHTS_LABEL = "random (not Mammo-CLIP)"


class CalibrationReport(NamedTuple):
    """What calibration saw: number of batches and images used."""

    n_batches: int
    n_images: int


def calibration_indices(n_images: int, n_calib: int) -> list[int]:
    """Evenly spread images for BatchNorm calibration (the same on every rank)."""
    k = max(1, min(n_calib, n_images))
    return sorted(set(np.linspace(0, n_images - 1, k).round().astype(int).tolist()))


@torch.no_grad()
def calibrate_batchnorm(model: EfficientNet, batches: Iterable[torch.Tensor]) -> CalibrationReport:
    """Replace every BatchNorm's running statistics by their cumulative average over `batches`.

    Pass a single batch (see the module docstring); several batches are averaged cumulatively
    (momentum=None). Only the BatchNorm layers are put in train mode, so drop-connect stays off
    and the result is deterministic. The model is returned to eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved_momentum = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all calibration batches
        m.train()
    n_batches = n_images = 0
    try:
        for x_BCHW in batches:
            model.extract_features(x_BCHW)
            n_batches += 1
            n_images += int(x_BCHW.shape[0])
    finally:
        for m, momentum in zip(norms, saved_momentum):
            m.momentum = momentum
        model.eval()
    if n_batches == 0:
        raise ValueError("BatchNorm calibration needs at least one batch of images")
    return CalibrationReport(n_batches, n_images)


def random_calibrated_encoder(model: EfficientNet, seed: int, x_NCHW: torch.Tensor,
                              residual_gain: float = 0.0) -> CalibrationReport:
    """Re-initialise `model` deterministically from `seed`; calibrate BatchNorm on one batch.

    ``residual_gain`` (see ``reinitialise``) defaults to 0: the residual branches start at zero,
    so only the first block of each stage, the stem and the head transform the image.
    """
    reinitialise(model, seed, residual_gain)
    return calibrate_batchnorm(model, [x_NCHW])
