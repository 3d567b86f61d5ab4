"""Encoder: static same-padding (SPEC §2), head grid, local features, random-weight calibration."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from efficientnet_pytorch.utils import Conv2dStaticSamePadding

from helpers.encoder_data import one_torch_thread  # noqa: F401 (autouse)

from extract.calibration import calibrate_batchnorm, random_calibrated_encoder
from extract.encoder import (
    ARCHS, build_encoder, feature_grid, has_identity_skip, local_features, reinitialise, static_pads,
)


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) along one axis for an input of `size`."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def spec_pads(model, nominal: int) -> dict[str, tuple[int, int, int, int]]:
    """SPEC's pads: each conv padded for the nominal square size reduced by the strides before it.

    Walks the convs in forward order; squeeze-excitation convs see a 1x1 map.
    """
    pads = {}
    size = nominal
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.Conv2d):
            continue
        n = 1 if "_se_" in name else size
        ph = tf_same_pads(n, m.kernel_size[0], m.stride[0])
        pw = tf_same_pads(n, m.kernel_size[1], m.stride[1])
        pads[name] = (pw[0], pw[1], ph[0], ph[1])
        if "_se_" not in name:
            size = math.ceil(size / m.stride[0])
    return pads


@pytest.mark.parametrize("arch,nominal", [("b5", 456), ("b2", 260)])
def test_static_pads_are_specs_pads_whatever_the_input(arch, nominal):
    model = build_encoder(arch)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and not n.startswith("_fc")]
    assert all(isinstance(model.get_submodule(n), Conv2dStaticSamePadding) for n in convs)
    assert static_pads(model) == spec_pads(model, nominal)
    # The 1520x912 input gets the same pads (nothing depends on the input); TF dynamic SAME
    # padding would pad some convs differently at this size, which is why the grid is 48x29.
    h, w, dynamic_differs = 1520, 912, []
    for name, m in model.named_modules():
        if isinstance(m, Conv2dStaticSamePadding) and "_se_" not in name:
            ph, pw = tf_same_pads(h, m.kernel_size[0], m.stride[0]), tf_same_pads(w, m.kernel_size[1], m.stride[1])
            if (pw[0], pw[1], ph[0], ph[1]) != static_pads(model)[name]:
                dynamic_differs.append(name)
            h, w = math.ceil(h / m.stride[0]), math.ceil(w / m.stride[1])
    assert dynamic_differs, "static and dynamic padding should differ somewhere at 1520x912"


@pytest.mark.parametrize("arch", ["b5", "b2"])
def test_grid_at_full_size_is_48x29(arch):
    assert feature_grid(build_encoder(arch), 1520, 912) == (48, 29)


def test_small_input_grid_matches_forward_and_channels():
    model = build_encoder("b2")
    x = torch.randn(1, 3, 256, 160)
    with torch.no_grad():
        f = local_features(model, x)
    assert tuple(f.shape) == (1, ARCHS["b2"].channels, 8, 5)
    assert feature_grid(model, 256, 160) == (8, 5)
    assert feature_grid(model, 100, 70) == tuple(local_features(model, torch.randn(1, 3, 100, 70)).shape[2:])


def test_local_features_are_post_bn_post_swish_head():
    model = build_encoder("b2")
    random_calibrated_encoder(model, 0, torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0)))
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    captured = {}
    model._conv_head.register_forward_hook(lambda mod, inp, out: captured.setdefault("head", out))
    with torch.no_grad():
        f = local_features(model, x)
        bn = model._bn1
        y = F.batch_norm(captured["head"], bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    torch.testing.assert_close(f, y * torch.sigmoid(y), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_full_size_b5_forward_gives_48x29():
    model = build_encoder("b5")
    with torch.no_grad():
        f = local_features(model, torch.randn(1, 3, 1520, 912))
    assert tuple(f.shape) == (1, 2048, 48, 29)


def test_default_init_features_are_tiny_and_calibration_fixes_them():
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(6, 3, 64, 48, generator=gen)
    images[3:] = images[3:] ** 3  # different content statistics
    model = build_encoder("b2")
    with torch.no_grad():
        assert local_features(model, images[:2]).abs().mean() < 1e-8  # SPEC: ~1e-12
    report = random_calibrated_encoder(model, 5, images)
    assert report == (1, 6)
    assert not model.training and not any(m.training for m in model.modules())
    assert all(m.momentum == pytest.approx(0.01) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        f = local_features(model, images)
    pooled = f.mean(dim=(2, 3))
    assert 0.05 < f.abs().mean() < 5
    # pooled features differ between images by a meaningful amount
    dist = torch.cdist(pooled, pooled)
    assert dist[~torch.eye(6, dtype=bool)].min() > 1e-2 * pooled.norm(dim=1).mean()
    # deterministic for a seed, different across seeds
    again = build_encoder("b2")
    random_calibrated_encoder(again, 5, images)
    with torch.no_grad():
        torch.testing.assert_close(local_features(again, images), f, rtol=0, atol=0)
    other = build_encoder("b2")
    reinitialise(other, 6)
    assert (other._conv_head.weight - model._conv_head.weight).abs().max() > 1e-2


def test_zero_residual_gain_makes_every_skip_block_the_identity():
    images = torch.rand(4, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    model = build_encoder("b2")
    random_calibrated_encoder(model, 2, images)  # default residual_gain=0
    skips = [b for b in model._blocks if has_identity_skip(b)]
    assert 0 < len(skips) < len(model._blocks)
    assert all(float(b._bn2.weight.abs().max()) == 0.0 for b in skips)
    assert all(float(b._bn2.weight.min()) == 1.0 for b in model._blocks if not has_identity_skip(b))
    x = torch.randn(2, skips[0]._block_args.input_filters, 8, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(skips[0](x), x, rtol=0, atol=0)
    plain = build_encoder("b2")
    random_calibrated_encoder(plain, 2, images, residual_gain=1.0)
    assert all(float(b._bn2.weight.min()) == 1.0 for b in plain._blocks)
    with torch.no_grad():
        assert (local_features(plain, images) - local_features(model, images)).abs().max() > 1e-2


def test_calibrated_running_stats_are_cumulative_batch_statistics():
    model = build_encoder("b2")
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(2, 3, 32, 32, generator=gen) for _ in range(3)]
    calibrate_batchnorm(model, batches)
    with torch.no_grad():
        stem = torch.cat([model._conv_stem(b) for b in batches])  # (6, C, h, w)
    per_batch_var = torch.stack([s.var(dim=(0, 2, 3), unbiased=True) for s in stem.split(2)])
    torch.testing.assert_close(model._bn0.running_mean, stem.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model._bn0.running_var, per_batch_var.mean(0), rtol=1e-4, atol=1e-6)
    assert int(model._bn0.num_batches_tracked) == 3
