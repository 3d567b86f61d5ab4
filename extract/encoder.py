"""The Mammo-CLIP image encoder: lukemelas EfficientNet B5/B2, built offline.

Mammo-CLIP uses `efficientnet_pytorch` (not timm). Every convolution pads with *static* TF "same"
padding computed for the architecture's nominal image size (456 for B5, 260 for B2), whatever the
real input size; this fixes the 48x29 head grid at 1520x912 and is kept on purpose (SPEC §2).
The local features are `extract_features(x)` = swish(bn1(conv_head(...))), shape (B, C, H', W').
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from efficientnet_pytorch import EfficientNet
from efficientnet_pytorch.utils import Conv2dStaticSamePadding


@dataclass(frozen=True)
class EncoderArch:
    """One supported encoder architecture."""

    key: str  # "b5" | "b2", the CLI name
    model_name: str  # efficientnet_pytorch name
    image_size: int  # nominal size the static padding is computed for
    channels: int  # channels of the head output (local feature dimension)


ARCHS: dict[str, EncoderArch] = {
    "b5": EncoderArch("b5", "efficientnet-b5", 456, 2048),
    "b2": EncoderArch("b2", "efficientnet-b2", 260, 1408),
}


def get_arch(key: str) -> EncoderArch:
    """Look up an architecture by its CLI name ("b5" or "b2")."""
    try:
        return ARCHS[key]
    except KeyError:
        raise ValueError(f"unknown encoder architecture {key!r}; choose one of {sorted(ARCHS)}") from None


def arch_for_channels(channels: int) -> EncoderArch | None:
    """The architecture whose head has `channels` output channels, or None."""
    return next((a for a in ARCHS.values() if a.channels == channels), None)


def build_encoder(key: str) -> EfficientNet:
    """Build the encoder with the package's default init, in eval mode; never downloads weights."""
    arch = get_arch(key)
    model = EfficientNet.from_name(arch.model_name, image_size=arch.image_size)
    stem = model._conv_stem
    if not isinstance(stem, Conv2dStaticSamePadding):  # pragma: no cover - guards a package change
        raise RuntimeError("efficientnet_pytorch built dynamic padding; static padding is required")
    return model.eval()


def local_features(model: EfficientNet, x_BCHW: torch.Tensor) -> torch.Tensor:
    """Last-layer local features (B, C, H', W'): post-BN, post-swish head output."""
    return model.extract_features(x_BCHW)


def _conv_out(size: int, conv: Conv2dStaticSamePadding, axis: int) -> int:
    """Output length of a static-padded conv along one axis (0 = height, 1 = width)."""
    pad = conv.static_padding.padding if isinstance(conv.static_padding, torch.nn.ZeroPad2d) else (0, 0, 0, 0)
    before, after = (pad[2], pad[3]) if axis == 0 else (pad[0], pad[1])
    k, s, d = conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis]
    return (size + before + after - d * (k - 1) - 1) // s + 1


def feature_grid(model: EfficientNet, height: int, width: int) -> tuple[int, int]:
    """Head grid (H', W') for an input of height x width, without running the network.

    Only the stem and the depthwise convolutions change the spatial size (the rest are 1x1).
    """
    convs = [model._conv_stem] + [block._depthwise_conv for block in model._blocks]
    h, w = height, width
    for conv in convs:
        h, w = _conv_out(h, conv, 0), _conv_out(w, conv, 1)
    return h, w


def static_pads(model: EfficientNet) -> dict[str, tuple[int, int, int, int]]:
    """(left, right, top, bottom) zero padding of every static-padded conv, by module name."""
    pads: dict[str, tuple[int, int, int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv2dStaticSamePadding):
            p = module.static_padding
            pads[name] = tuple(p.padding) if isinstance(p, torch.nn.ZeroPad2d) else (0, 0, 0, 0)
    return pads


def has_identity_skip(block: torch.nn.Module) -> bool:
    """True for an MBConv block whose output is ``input + branch`` (stride 1, same channels)."""
    args = block._block_args
    stride = args.stride[0] if isinstance(args.stride, (list, tuple)) else args.stride
    return bool(block.id_skip) and int(stride) == 1 and args.input_filters == args.output_filters


@torch.no_grad()
def reinitialise(model: EfficientNet, seed: int, residual_gain: float = 1.0) -> None:
    """Deterministic fresh weights from `seed` (TF-EfficientNet style: conv He-normal fan-out).

    BatchNorm affine parameters become (1, 0); running statistics are left for calibration.
    ``residual_gain`` scales the last BatchNorm's gamma of every block with an identity skip:
    0 is the "zero-gamma" init (each such block starts as the identity), 1 the plain init.
    """
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_out = module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, torch.nn.Linear):
            bound = 1.0 / module.in_features**0.5
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * 2 * bound - bound)
            module.bias.zero_()
    if residual_gain != 1.0:
        for block in model._blocks:
            if has_identity_skip(block):
                block._bn2.weight.fill_(residual_gain)
