"""Tiny Mammo-CLIP text-side fixtures: a WordPiece vocab, a BERT, a CLIP `.tar` in the real layout.

Key names are those of a real `transformers.BertModel` under `text_encoder.text_encoder.` (as
Mammo-CLIP's `HuggingfaceTextEncoder` stores it), plus `text_projection.projection.*`,
`image_projection.projection.*`, a few `image_encoder.*` tensors, `logit_scale` and an omegaconf
config with `model.text_encoder.pooling` and `base.text_max_length` (and an unresolved
interpolation, as the real configs have).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, NamedTuple

import torch
from omegaconf import OmegaConf
from transformers import BertConfig, BertModel

HIDDEN, LAYERS, HEADS, INTERMEDIATE, MAX_POS = 32, 2, 2, 64, 40
PROJ, D_IN = 16, 64
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class TinyClip(NamedTuple):
    bert: BertModel  # the reference model the checkpoint was made from (eval mode)
    text_proj_weight: torch.Tensor  # [PROJ, HIDDEN]
    text_proj_bias: torch.Tensor
    image_proj_weight: torch.Tensor  # [PROJ, D_IN]
    image_proj_bias: torch.Tensor


def words(texts: Iterable[str]) -> list[str]:
    """Lower-case words and punctuation of ``texts``, in first-appearance order."""
    seen: dict[str, None] = {}
    for t in texts:
        for w in re.findall(r"\w+|[^\w\s]", t.lower()):
            seen.setdefault(w, None)
    return list(seen)


def write_tokenizer(folder: Path, texts: Iterable[str], *, config: bool = True) -> int:
    """A Bio_ClinicalBERT-like folder: vocab.txt (+ config.json without model_type); returns vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + words(texts) + ["##s", "##ed"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    if config:
        (folder / "config.json").write_text(json.dumps({
            "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
            "hidden_size": HIDDEN, "initializer_range": 0.02, "intermediate_size": INTERMEDIATE,
            "max_position_embeddings": MAX_POS, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
            "type_vocab_size": 2, "vocab_size": len(vocab)}))
    return len(vocab)


def clip_config(pooling: str = "eos"):
    return OmegaConf.create({
        "base": {"data_dir": "/data", "text_max_length": 256, "output": {"checkpoint": "${base.data_dir}/ckpt"}},
        "model": {"text_encoder": {"source": "huggingface", "name": "emilyalsentzer/Bio_ClinicalBERT",
                                   "pooling": pooling},
                  "projection_head": {"name": "linear", "proj_dim": PROJ}},
    })


def make_tiny_clip(vocab_size: int, seed: int = 0, bias_scale: float = 3.0) -> TinyClip:
    """Random BERT (std 0.5 weights, so tokens really mix) and projections; image bias is large."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=INTERMEDIATE, max_position_embeddings=MAX_POS)
    bert = BertModel(config)
    with torch.no_grad():
        for name, p in bert.named_parameters():
            if "LayerNorm" not in name:
                p.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(seed + 1)
    return TinyClip(bert.eval(), torch.randn(PROJ, HIDDEN, generator=g), torch.randn(PROJ, generator=g),
                    torch.randn(PROJ, D_IN, generator=g), bias_scale * torch.randn(PROJ, generator=g))


def write_clip_tar(path: Path, clip: TinyClip, *, text: bool = True, pooling: str = "eos") -> None:
    """A CLIP `.tar` in Mammo-CLIP's layout; ``text=False`` drops the text tower (classifier-like)."""
    model: dict[str, torch.Tensor] = {
        "image_encoder._conv_stem.weight": torch.zeros(4, 3, 3, 3),
        "image_encoder._bn0.weight": torch.ones(4),
        "image_projection.projection.weight": clip.image_proj_weight.clone(),
        "image_projection.projection.bias": clip.image_proj_bias.clone(),
        "logit_scale": torch.tensor(2.6592),
    }
    if text:
        state = clip.bert.state_dict()
        model.update({f"text_encoder.text_encoder.{k}": v.clone() for k, v in state.items()})
        # Older transformers saved this buffer; real Mammo-CLIP files carry it.
        model["text_encoder.text_encoder.embeddings.position_ids"] = torch.arange(MAX_POS)[None]
        model["text_projection.projection.weight"] = clip.text_proj_weight.clone()
        model["text_projection.projection.bias"] = clip.text_proj_bias.clone()
    torch.save({"model": model, "optimizer": {}, "scheduler": {}, "config": clip_config(pooling), "epoch": 7,
                "train_loss": 1.5}, path)
