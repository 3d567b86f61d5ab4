"""The prompt-embedding cache file: what the text tower computes once and the JAX naming reads.

One safetensors file per (checkpoint, prompts, tokenizer, pooling, max length), named
``prompt_embeddings_<key[:16]>.safetensors`` where ``key`` is the sha256 of those inputs
(`cache_key`). numpy only (`safetensors_np`): the text tower (extract/) writes it, the JAX naming reads it.

=============================  ==============  ===============================================
tensor                         shape           meaning
=============================  ==============  ===============================================
``text_embeddings``            [P, E] float32  prompt embeddings after ``text_projection``,
                                               L2-normalised (Mammo-CLIP's ``encode_text`` path)
``image_projection.weight``    [E, C] float32  the CLIP image projection (C = 2048 for B5)
``image_projection.bias``      [E] float32     its bias
=============================  ==============  ===============================================

Metadata (all strings): ``format``, ``format_version``, ``key``, ``prompts`` and ``groups``
(JSON lists), ``checkpoint_sha256``, ``checkpoint_name``, ``tokenizer_sha256``, ``pooling``,
``max_length``, ``bert_config`` (JSON).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
from .safetensors_np import SafetensorsFormatError, read_tensors, write_tensors

FORMAT = "mammosae-jax/prompt-embeddings"
FORMAT_VERSION = "1"
#: Files of a tokenizer folder that change how text is tokenised (config.json: the BERT shape).
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")
_CHUNK = 1 << 22


class PromptEmbeddingError(ValueError):
    """A prompt-embedding file that is missing, unreadable or of another format."""


class PromptEmbeddings(NamedTuple):
    """Unit prompt embeddings and the image projection they live with."""

    texts: tuple[str, ...]
    groups: tuple[str, ...]
    text_PE: np.ndarray  # [P, E] unit rows
    image_proj_EC: np.ndarray  # [E, C]
    image_proj_bias_E: np.ndarray  # [E]
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        """Input width C of the image projection (the SAE's d_in must equal it)."""
        return int(self.image_proj_EC.shape[1])


def file_sha256(path: str | os.PathLike, progress: bool = False) -> str:
    """sha256 of a file, read in 4 MiB chunks (a progress bar for big files when ``progress``)."""
    from tqdm.auto import tqdm  # only when hashing (tqdm is not a dependency of reading)

    h = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"hashing {Path(path).name}",
                                     disable=not progress or size < (64 << 20)) as bar:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def tokenizer_problem(tokenizer_dir: str | os.PathLike) -> str | None:
    """Why ``tokenizer_dir`` is not a usable BERT tokenizer folder, or None when it looks fine."""
    d = Path(tokenizer_dir)
    if not d.is_dir():
        return (f"tokenizer folder not found: {d} "
                f"(give a local copy of Bio_ClinicalBERT, the folder holding its vocab.txt)")
    if not (d / "vocab.txt").is_file() and not (d / "tokenizer.json").is_file():
        return f"{d} has no vocab.txt or tokenizer.json: not a BERT tokenizer folder"
    return None


def tokenizer_sha256(tokenizer_dir: str | os.PathLike) -> str:
    """sha256 over the tokenizer folder's relevant files (name + content), in a fixed order."""
    problem = tokenizer_problem(tokenizer_dir)
    if problem:
        raise PromptEmbeddingError(problem)
    d = Path(tokenizer_dir)
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (d / name).is_file():
            h.update(f"{name}\0{file_sha256(d / name)}\0".encode())
    return h.hexdigest()


def cache_key(checkpoint_sha256: str, texts: Sequence[str], tokenizer_hash: str, pooling: str | None = None,
              max_length: int | None = None) -> str:
    """sha256 naming one set of embeddings: any change of input gives another file.

    ``None`` settings mean "as the checkpoint's config says", which its sha256 already fixes.
    """
    payload = {"format_version": FORMAT_VERSION, "checkpoint": checkpoint_sha256, "prompts": list(texts),
               "tokenizer": tokenizer_hash, "pooling": pooling, "max_length": max_length}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_file(cache_dir: str | os.PathLike, key: str) -> Path:
    """Where the embeddings for ``key`` live in ``cache_dir``."""
    return Path(cache_dir) / f"prompt_embeddings_{key[:16]}.safetensors"


def write_prompt_embeddings(path: str | os.PathLike, emb: PromptEmbeddings) -> Path:
    """Write atomically (temp file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "text_embeddings": np.ascontiguousarray(emb.text_PE, np.float32),
        "image_projection.weight": np.ascontiguousarray(emb.image_proj_EC, np.float32),
        "image_projection.bias": np.ascontiguousarray(emb.image_proj_bias_E, np.float32),
    }
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in emb.meta.items()}
    meta.update(format=FORMAT, format_version=FORMAT_VERSION,
                prompts=json.dumps(list(emb.texts)), groups=json.dumps(list(emb.groups)))
    write_tensors(path, tensors, meta)
    return path


def read_prompt_embeddings(path: str | os.PathLike) -> PromptEmbeddings:
    """Read and check a file written by `write_prompt_embeddings`."""
    path = Path(path)
    if not path.is_file():
        raise PromptEmbeddingError(f"prompt-embedding file not found: {path}")
    try:
        tensors, meta = read_tensors(path)
    except (SafetensorsFormatError, OSError, ValueError) as e:
        raise PromptEmbeddingError(f"cannot read {path}: {e}") from None
    if meta.get("format") != FORMAT:
        raise PromptEmbeddingError(f"{path} is not a prompt-embedding file (format {meta.get('format')!r}, "
                                   f"expected {FORMAT!r})")
    missing = [k for k in ("text_embeddings", "image_projection.weight", "image_projection.bias") if k not in tensors]
    if missing:
        raise PromptEmbeddingError(f"{path}: missing tensors {', '.join(missing)}")
    try:
        texts, groups = tuple(json.loads(meta.pop("prompts"))), tuple(json.loads(meta.pop("groups")))
    except (KeyError, json.JSONDecodeError) as e:
        raise PromptEmbeddingError(f"{path}: metadata lacks a readable prompt list ({e})") from None
    text_PE, w_EC = tensors["text_embeddings"], tensors["image_projection.weight"]
    b_E = tensors["image_projection.bias"]
    if text_PE.shape != (len(texts), w_EC.shape[0]) or b_E.shape != (w_EC.shape[0],) or len(groups) != len(texts):
        raise PromptEmbeddingError(f"{path}: inconsistent shapes: text_embeddings {text_PE.shape} for "
                                   f"{len(texts)} prompts, image_projection {w_EC.shape} / {b_E.shape}")
    return PromptEmbeddings(texts, groups, text_PE, w_EC, b_E, meta)


__all__ = ["FORMAT", "PromptEmbeddingError", "PromptEmbeddings", "cache_file", "cache_key", "file_sha256",
           "read_prompt_embeddings", "tokenizer_problem", "tokenizer_sha256", "write_prompt_embeddings"]
