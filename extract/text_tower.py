"""Mammo-CLIP's text tower, rebuilt offline from a CLIP checkpoint, to embed text prompts.

Mammo-CLIP (``breastclip/model/clip.py``) wraps a Hugging Face ``BertModel`` (Bio_ClinicalBERT) as
``text_encoder.text_encoder``, so a CLIP ``.tar`` stores its weights under
``model["text_encoder.text_encoder.<BertModel key>"]`` next to ``text_projection.projection`` and
``image_projection.projection`` (both ``nn.Linear``). ``encode_text`` takes the last hidden state
and pools it by the checkpoint's ``config.model.text_encoder.pooling``; the released configs say
``"eos"``: the hidden state of the last non-padding token, i.e. ``[SEP]`` (neither ``[CLS]`` nor
BERT's pooler). Text embedding = ``normalise(text_projection(pooled))``. The zero-shot evaluator
tokenises with ``padding="longest", truncation=True, max_length=256``; all of that is copied here.

The BERT shape comes from ``config.json`` in the tokenizer folder when there is one (a download of
Bio_ClinicalBERT has it), otherwise from the tensor shapes plus Bio_ClinicalBERT's documented
defaults (64-dim attention heads, GELU, LayerNorm eps 1e-12). Nothing is ever downloaded.

The checkpoint is read with `extract.checkpoints.safe_torch_load` (weights_only + omegaconf
allow-list); the result is written as a prompt-embedding file (`cache.prompt_embeddings`).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import BertConfig, BertModel, BertTokenizer

from extract.checkpoints import safe_torch_load
from cache.prompt_embeddings import PromptEmbeddings, tokenizer_problem, write_prompt_embeddings

TEXT_PREFIX = "text_encoder.text_encoder."
TEXT_PROJECTION = "text_projection.projection."
IMAGE_PROJECTION = "image_projection.projection."
POOLINGS = ("eos", "bos", "mean")
DEFAULT_POOLING = "eos"  # Mammo-CLIP's clip_b5_clinical.yaml / clip_b2_clinical.yaml
DEFAULT_MAX_LENGTH = 256  # base.text_max_length in Mammo-CLIP's configs and its zero-shot evaluator
HEAD_DIM = 64  # Bio_ClinicalBERT (BERT-base): 768 hidden / 12 heads
# Buffers older transformers versions saved in BertModel.state_dict(); recomputed, never needed.
_IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size")


class TextTowerError(Exception):
    """The text tower cannot be built or run; the message says which file and why."""


class ClipTextParts(NamedTuple):
    """What naming needs from a CLIP checkpoint."""

    bert_state: dict[str, torch.Tensor]  # BertModel keys (prefix stripped)
    text_proj_weight: torch.Tensor  # [E, H]
    text_proj_bias: torch.Tensor  # [E]
    image_proj_weight: torch.Tensor  # [E, C]
    image_proj_bias: torch.Tensor  # [E]
    pooling: str | None  # from the checkpoint config, None when absent
    max_length: int | None


def _plain_config(cfg: Any) -> Any:
    """The checkpoint's omegaconf config as plain dicts/lists (interpolations left unresolved)."""
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=False)
    return cfg


def _config_get(cfg: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(cfg, dict) or key not in cfg:
            return None
        cfg = cfg[key]
    return cfg


def _projection(model: dict[str, torch.Tensor], prefix: str, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    weight, bias = model.get(prefix + "weight"), model.get(prefix + "bias")
    if weight is None or bias is None:
        raise TextTowerError(f"{path} has no '{prefix}weight' / '{prefix}bias': not a Mammo-CLIP CLIP checkpoint")
    if weight.ndim != 2 or tuple(bias.shape) != (weight.shape[0],):
        raise TextTowerError(f"{path}: '{prefix}weight' {tuple(weight.shape)} and bias {tuple(bias.shape)} "
                             f"are not [out, in] / [out]")
    return weight.float(), bias.float()


def read_clip_text_parts(path: str | os.PathLike) -> ClipTextParts:
    """BERT weights, both projections and the pooling settings of a CLIP ``.tar``."""
    path = Path(path)
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise TextTowerError(f"{path} is not a Mammo-CLIP checkpoint: expected a dict with a 'model' state dict")
    model = obj["model"]
    bert = {k[len(TEXT_PREFIX):]: v for k, v in model.items() if k.startswith(TEXT_PREFIX)}
    if not bert:
        raise TextTowerError(
            f"{path} has no text tower (no '{TEXT_PREFIX}*' tensors): give the pre-trained CLIP checkpoint "
            f"(e.g. b5-model-best-epoch-7.tar), not a downstream classifier")
    text_w, text_b = _projection(model, TEXT_PROJECTION, path)
    image_w, image_b = _projection(model, IMAGE_PROJECTION, path)
    if text_w.shape[0] != image_w.shape[0]:
        raise TextTowerError(f"{path}: text projection gives {text_w.shape[0]} dims, image projection "
                             f"{image_w.shape[0]}: they must share the embedding space")
    cfg = _plain_config(obj.get("config"))
    pooling = _config_get(cfg, "model", "text_encoder", "pooling")
    max_length = _config_get(cfg, "base", "text_max_length")
    return ClipTextParts(bert, text_w, text_b, image_w, image_b,
                         str(pooling) if pooling is not None else None,
                         int(max_length) if isinstance(max_length, int) else None)


def bert_shapes(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The BertConfig fields that tensor shapes determine (everything but the head count)."""
    try:
        vocab, hidden = state["embeddings.word_embeddings.weight"].shape
        positions = state["embeddings.position_embeddings.weight"].shape[0]
        token_types = state["embeddings.token_type_embeddings.weight"].shape[0]
        intermediate = state["encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as e:
        raise TextTowerError(f"the text tower lacks {TEXT_PREFIX}{e.args[0]}: not a BERT state dict") from None
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    if layers != list(range(len(layers))):
        raise TextTowerError(f"the text tower's encoder layers are {layers}, expected 0..{len(layers) - 1}")
    return dict(vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=len(layers),
                intermediate_size=int(intermediate), max_position_embeddings=int(positions),
                type_vocab_size=int(token_types))


def infer_bert_config(state: dict[str, torch.Tensor]) -> BertConfig:
    """A BertConfig from tensor shapes + Bio_ClinicalBERT defaults (heads of 64 dims, GELU)."""
    shapes = bert_shapes(state)
    hidden = shapes["hidden_size"]
    if hidden % HEAD_DIM:
        raise TextTowerError(f"cannot infer the number of attention heads for hidden size {hidden} "
                             f"(not a multiple of {HEAD_DIM}): put the model's config.json in the tokenizer folder")
    return BertConfig(**shapes, num_attention_heads=hidden // HEAD_DIM, hidden_act="gelu",
                      layer_norm_eps=1e-12, pad_token_id=0)


def resolve_bert_config(state: dict[str, torch.Tensor], tokenizer_dir: str | os.PathLike | None) -> BertConfig:
    """``config.json`` of the tokenizer folder if present (checked against the shapes), else inferred."""
    config_file = Path(tokenizer_dir) / "config.json" if tokenizer_dir is not None else None
    if config_file is None or not config_file.is_file():
        return infer_bert_config(state)
    try:
        d = json.loads(config_file.read_text())
        d = {k: v for k, v in d.items() if k not in ("model_type", "architectures", "transformers_version")}
        config = BertConfig(**d)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise TextTowerError(f"cannot read BERT config {config_file}: {e}") from None
    wrong = [f"{f}={getattr(config, f)} (weights: {v})" for f, v in bert_shapes(state).items()
             if getattr(config, f) != v]
    if wrong:
        raise TextTowerError(f"{config_file} does not match the checkpoint's text tower: {', '.join(wrong)}")
    if config.hidden_size % config.num_attention_heads:
        raise TextTowerError(f"{config_file}: hidden_size {config.hidden_size} is not a multiple of "
                             f"num_attention_heads {config.num_attention_heads}")
    return config


def build_text_tower(state: dict[str, torch.Tensor], config: BertConfig, source: str = "checkpoint") -> BertModel:
    """A BertModel in eval mode holding exactly ``state`` (old position_ids buffers tolerated)."""
    state = {k: v for k, v in state.items() if k not in _IGNORED_BUFFERS}
    model = BertModel(config, add_pooling_layer="pooler.dense.weight" in state)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]
    problems = [f"{what} {len(keys)}: {', '.join(keys[:4])}" + (", ..." if len(keys) > 4 else "")
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    if problems:
        raise TextTowerError(f"{source}: text tower does not fit a BertModel: " + "; ".join(problems))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def load_tokenizer(tokenizer_dir: str | os.PathLike, vocab_size: int | None = None) -> BertTokenizer:
    """The user's local Bio_ClinicalBERT tokenizer (offline); checks it fits the word embeddings."""
    d = Path(tokenizer_dir)
    problem = tokenizer_problem(d)
    if problem:
        raise TextTowerError(problem)
    try:
        tokenizer = BertTokenizer.from_pretrained(str(d), local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TextTowerError(f"cannot load the tokenizer in {d}: {first}") from None
    if vocab_size is not None and len(tokenizer) != vocab_size:
        raise TextTowerError(f"the tokenizer in {d} has {len(tokenizer)} tokens but the checkpoint's text tower "
                             f"has {vocab_size} word embeddings: is it Bio_ClinicalBERT's tokenizer?")
    return tokenizer


def pool(hidden_BTH: torch.Tensor, mask_BT: torch.Tensor, pooling: str) -> torch.Tensor:
    """Mammo-CLIP's ``encode_text`` pooling: ``eos`` (last real token), ``bos`` (first) or ``mean``."""
    if pooling == "eos":
        last_B = mask_BT.sum(dim=-1) - 1
        return hidden_BTH[torch.arange(hidden_BTH.shape[0]), last_B]
    if pooling == "bos":
        return hidden_BTH[:, 0]
    if pooling == "mean":
        m_BT1 = mask_BT.unsqueeze(-1).to(hidden_BTH.dtype)
        return (hidden_BTH * m_BT1).sum(dim=1) / m_BT1.sum(dim=1).clamp(min=1e-9)
    raise TextTowerError(f"unknown text pooling '{pooling}'; choose one of {', '.join(POOLINGS)}")


@torch.no_grad()
def embed_texts(model: BertModel, tokenizer: BertTokenizer, texts: Sequence[str], proj_weight: torch.Tensor,
                proj_bias: torch.Tensor, *, pooling: str = DEFAULT_POOLING, max_length: int = DEFAULT_MAX_LENGTH,
                batch_size: int = 32) -> np.ndarray:
    """Unit text embeddings ``[P, E]``: tokenise, BERT, pool, ``text_projection``, L2-normalise."""
    max_length = min(max_length, model.config.max_position_embeddings)
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc="embedding prompts", unit="batch"):
        batch = tokenizer(list(texts[start:start + batch_size]), padding="longest", truncation=True,
                          max_length=max_length, return_tensors="pt")
        hidden_BTH = model(**batch).last_hidden_state
        pooled_BH = pool(hidden_BTH, batch["attention_mask"], pooling)
        emb_BE = pooled_BH @ proj_weight.T + proj_bias
        out.append(emb_BE / emb_BE.norm(dim=1, keepdim=True))
    return torch.cat(out).numpy().astype(np.float32)


def compute_prompt_embeddings(checkpoint: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                              texts: Sequence[str], groups: Sequence[str], out_path: str | os.PathLike, *,
                              meta: dict[str, Any], pooling: str | None = None, max_length: int | None = None,
                              batch_size: int = 32) -> PromptEmbeddings:
    """Build the text tower, embed ``texts``, write the prompt-embedding file; return its content.

    ``pooling`` / ``max_length`` override the checkpoint's config (then Mammo-CLIP's defaults).
    """
    tokenizer_dir = Path(tokenizer_dir)
    problem = tokenizer_problem(tokenizer_dir)  # before reading a 1.5 GB checkpoint
    if problem:
        raise TextTowerError(problem)
    parts = read_clip_text_parts(checkpoint)
    pooling = pooling or parts.pooling or DEFAULT_POOLING
    if pooling not in POOLINGS:
        raise TextTowerError(f"unknown text pooling '{pooling}'; choose one of {', '.join(POOLINGS)}")
    max_length = max_length or parts.max_length or DEFAULT_MAX_LENGTH
    config = resolve_bert_config(parts.bert_state, tokenizer_dir)
    if parts.text_proj_weight.shape[1] != config.hidden_size:
        raise TextTowerError(f"{checkpoint}: text projection expects {parts.text_proj_weight.shape[1]} inputs, "
                             f"the text tower gives {config.hidden_size}")
    tokenizer = load_tokenizer(tokenizer_dir, config.vocab_size)
    model = build_text_tower(parts.bert_state, config, str(checkpoint))
    text_PE = embed_texts(model, tokenizer, texts, parts.text_proj_weight, parts.text_proj_bias,
                          pooling=pooling, max_length=max_length, batch_size=batch_size)
    full_meta = dict(meta, pooling=pooling, max_length=str(max_length), bert_config=json.dumps(
        {k: getattr(config, k) for k in (*_SHAPE_FIELDS, "num_attention_heads", "hidden_act", "layer_norm_eps")}))
    emb = PromptEmbeddings(tuple(texts), tuple(groups), text_PE, parts.image_proj_weight.numpy(),
                           parts.image_proj_bias.numpy(), full_meta)
    write_prompt_embeddings(out_path, emb)
    return emb


__all__ = ["ClipTextParts", "TextTowerError", "build_text_tower", "compute_prompt_embeddings", "embed_texts",
           "bert_shapes", "infer_bert_config", "load_tokenizer", "pool", "read_clip_text_parts", "resolve_bert_config"]
