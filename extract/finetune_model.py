"""The downstream concept classifier of Mammo-CLIP: image encoder + one linear head on pooled features.

Layout, as Mammo-CLIP's `BreastClipClassifier` saves it (SPEC §2): the state dict holds
`image_encoder.<efficientnet_pytorch key>` and `classifier.classification_head.{weight,bias}`;
`logit_k = W_k · mean_hw(features) + b_k`, one logit per binary concept. The encoder's unused
`_fc` layer is not part of the file (the real downstream files have none either).

Modes, as Mammo-CLIP's `*_lp` / `*_ft` archs: ``linear-probe`` freezes every encoder parameter
(BatchNorm running statistics still update, since the whole model trains in train mode, as
Mammo-CLIP's LP checkpoints were made); ``fine-tune`` trains everything after the first
``freeze_blocks`` MBConv blocks (0 = the whole encoder, Mammo-CLIP's recipe; more = our partial
fine-tuning for CPU budgets). Frozen leading layers run without autograd, which is what makes
partial fine-tuning cheap.
"""
from __future__ import annotations

import math

import torch
from efficientnet_pytorch import EfficientNet

from extract.checkpoints import ENCODER_PREFIX, HEAD_PREFIX

MODES = ("linear-probe", "fine-tune")


class ConceptClassifier(torch.nn.Module):
    """EfficientNet encoder + linear head on the spatial mean of its last-layer map."""

    def __init__(self, encoder: EfficientNet, channels: int, n_concepts: int, mode: str, freeze_blocks: int = 0):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        n_blocks = len(encoder._blocks)
        if not 0 <= freeze_blocks <= n_blocks:
            raise ValueError(f"freeze_blocks must be in 0..{n_blocks} for this encoder, got {freeze_blocks}")
        self.image_encoder = encoder
        self.classifier = torch.nn.Module()
        self.classifier.classification_head = torch.nn.Linear(channels, n_concepts)
        self.mode = mode
        # linear probe: nothing of the encoder trains; -1 marks "the head conv is frozen too"
        self.frozen_blocks = n_blocks if mode == "linear-probe" else freeze_blocks
        for p in self.image_encoder.parameters():
            p.requires_grad_(False)
        for p in self.trainable_encoder_parameters():
            p.requires_grad_(True)

    def trainable_encoder_parameters(self) -> list[torch.nn.Parameter]:
        """Encoder parameters that receive gradients in this mode."""
        enc = self.image_encoder
        if self.mode == "linear-probe":
            return []
        modules: list[torch.nn.Module] = list(enc._blocks)[self.frozen_blocks:] + [enc._conv_head, enc._bn1]
        if self.frozen_blocks == 0:
            modules += [enc._conv_stem, enc._bn0]
        return [p for m in modules for p in m.parameters()]

    def features(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """`extract_features` (same maths and drop-connect schedule), frozen prefix without autograd."""
        enc = self.image_encoder
        n_blocks = len(enc._blocks)
        frozen_head = self.mode == "linear-probe"
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen_blocks == 0 and not frozen_head):
            x = enc._swish(enc._bn0(enc._conv_stem(x_BCHW)))
        for idx, block in enumerate(enc._blocks):
            rate = enc._global_params.drop_connect_rate
            rate = rate * float(idx) / n_blocks if rate else rate
            with torch.set_grad_enabled(torch.is_grad_enabled() and idx >= self.frozen_blocks and not frozen_head):
                x = block(x, drop_connect_rate=rate)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_head):
            return enc._swish(enc._bn1(enc._conv_head(x)))

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) = head(mean_hw(features))."""
        return self.classifier.classification_head(self.features(x_BCHW).mean(dim=(2, 3)))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self.trainable_encoder_parameters() + list(self.classifier.classification_head.parameters())


def mammoclip_state_dict(model: ConceptClassifier) -> dict[str, torch.Tensor]:
    """The state dict in Mammo-CLIP's downstream layout (no `_fc.*`, no BN batch counters dropped)."""
    state = {}
    for key, value in model.image_encoder.state_dict().items():
        if not key.startswith("_fc."):
            state[ENCODER_PREFIX + key] = value.detach().clone()
    head = model.classifier.classification_head
    state[HEAD_PREFIX + "weight"] = head.weight.detach().clone()
    state[HEAD_PREFIX + "bias"] = head.bias.detach().clone()
    return state


def warmup_cosine_multiplier(step: int, warmup_steps: int, total_steps: int) -> float:
    """Mammo-CLIP's schedule: linear warm-up from 0, then cos² decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return math.cos(min(1.0, progress) * math.pi / 2) ** 2


def positive_weights(labels_NK: torch.Tensor) -> torch.Tensor:
    """`pos_weight` of BCE-with-logits per concept: negatives / positives on the training images.

    Mammo-CLIP's `--weighted_BCE y` uses this ratio (15.57 for VinDr Mass, 37.30 for Suspicious
    Calcification). A concept without positives gets weight 1.
    """
    pos = labels_NK.float().sum(0)
    neg = labels_NK.shape[0] - pos
    return torch.where(pos > 0, neg / pos.clamp(min=1), torch.ones_like(pos))
