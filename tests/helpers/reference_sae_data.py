"""Test helpers for the weight-conversion tests: the reference SAE layout, written from SPEC §3.

Independent of mammosae_jax: a PyTorch module whose state_dict has exactly the six published keys
(three of them the same tensor) and whose forward runs on the 3-D component-axis tensors.
"""
from __future__ import annotations

import torch
from torch import nn

REFERENCE_ORDER = (
    "tied_bias",
    "pre_encoder_bias._bias_reference",
    "encoder._weight",
    "encoder._bias",
    "decoder._weight",
    "post_decoder_bias._bias_reference",
)


class _Holder(nn.Module):
    """A module that only registers named parameters (so state_dict keys match the reference)."""

    def __init__(self, **params: nn.Parameter) -> None:
        super().__init__()
        for name, p in params.items():
            self.register_parameter(name, p)


class ReferenceSAE(nn.Module):
    """z = ReLU((x - b) W_encᵀ + b_enc), x̂ = z W_decᵀ + b, with a leading component axis of 1."""

    def __init__(self, d_in: int, n_latents: int) -> None:
        super().__init__()
        self.tied_bias = nn.Parameter(torch.zeros(1, d_in))
        self.pre_encoder_bias = _Holder(_bias_reference=self.tied_bias)
        self.encoder = _Holder(_weight=nn.Parameter(torch.zeros(1, n_latents, d_in)),
                               _bias=nn.Parameter(torch.zeros(1, n_latents)))
        self.decoder = _Holder(_weight=nn.Parameter(torch.zeros(1, d_in, n_latents)))
        self.post_decoder_bias = _Holder(_bias_reference=self.tied_bias)

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        x_BCD = x_BD[:, None, :] - self.pre_encoder_bias._bias_reference
        pre_BCN = torch.einsum("bcd,cnd->bcn", x_BCD, self.encoder._weight) + self.encoder._bias
        return torch.relu(pre_BCN)[:, 0, :]

    def decode(self, z_BN: torch.Tensor) -> torch.Tensor:
        x_BCD = torch.einsum("bcn,cdn->bcd", z_BN[:, None, :], self.decoder._weight)
        return (x_BCD + self.post_decoder_bias._bias_reference)[:, 0, :]


def make_reference_state_dict(d_in: int, n_latents: int, seed: int = 0, *,
                              aliases: bool = True) -> dict[str, torch.Tensor]:
    """A random float32 state_dict in the published layout (aliases are the tied_bias tensor)."""
    g = torch.Generator().manual_seed(seed)
    tied = torch.randn(1, d_in, generator=g) * 0.5
    dec = torch.randn(1, d_in, n_latents, generator=g)
    dec = dec / dec.norm(dim=1, keepdim=True)  # unit-norm dictionary columns
    state = {
        "tied_bias": tied,
        "pre_encoder_bias._bias_reference": tied,
        "encoder._weight": torch.randn(1, n_latents, d_in, generator=g) * 0.3,
        "encoder._bias": torch.randn(1, n_latents, generator=g) * 0.1,
        "decoder._weight": dec,
        "post_decoder_bias._bias_reference": tied,
    }
    if not aliases:
        del state["pre_encoder_bias._bias_reference"], state["post_decoder_bias._bias_reference"]
    return state


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw int32 bit patterns of a float32 tensor (for bitwise comparisons)."""
    assert t.dtype == torch.float32
    return t.contiguous().view(torch.int32)
