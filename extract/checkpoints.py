"""Safe loading of Mammo-CLIP encoder weights from the three real checkpoint layouts.

Layouts (SPEC §2):
- CLIP `.tar`: `{"model": {"image_encoder.<k>", "image_projection.*", "text_encoder.*", ...},
  "config": omegaconf DictConfig, "epoch", "optimizer", ...}`.
- classifier `.pth`: `{"model": {"image_encoder.<k>", "classifier.classification_head.{weight,bias}"}}`.
- ours, `.safetensors`: tensors `encoder.<k>` (+ `head.weight`, `head.bias`), JSON config in the
  metadata. Written by `python -m extract.convert_checkpoint`, read without any unpickling.

Torch files are only ever read with `torch.load(weights_only=True)`; the omegaconf classes the CLIP
config needs are allow-listed when omegaconf is installed. A pickle that would call anything else
(e.g. `os.system`) is refused before it runs.
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import re
import typing
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from cache.atomic import atomic_path
from extract.encoder import arch_for_channels

ENCODER_PREFIX = "image_encoder."
HEAD_PREFIX = "classifier.classification_head."
# Parts of a CLIP / classifier checkpoint that are not the image encoder and are ignored.
IGNORED_PREFIXES = ("text_encoder.", "text_projection.", "image_projection.", "logit_scale")
SAFETENSORS_FORMAT = "mammosae-jax/encoder"
TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin")  # a file so named must be a torch archive
SAFETENSORS_VERSION = "1"
CONCEPT_CLASS_NAMES = {1: ["negative", "positive"], 4: ["A", "B", "C", "D"]}


class CheckpointError(Exception):
    """A checkpoint cannot be used; the message says which file and why."""


class HeadWeights(NamedTuple):
    """A linear head on pooled features: logits = weight @ pooled + bias."""

    weight: torch.Tensor  # [K, C]
    bias: torch.Tensor  # [K]
    label: str
    class_names: list[str]


class EncoderCheckpoint(NamedTuple):
    """Encoder state dict (package key names), optional head, and where it came from."""

    encoder: dict[str, torch.Tensor]
    head: HeadWeights | None
    layout: str  # "clip" | "classifier" | "safetensors"
    meta: dict[str, Any]  # JSON-serialisable provenance (source layout, epoch, file name, ...)


def _omegaconf_globals() -> list[Any] | None:
    """The classes a pickled omegaconf DictConfig needs, or None when omegaconf is missing."""
    try:
        from omegaconf import DictConfig, ListConfig
        from omegaconf.base import ContainerMetadata, Metadata
        from omegaconf.nodes import AnyNode, BooleanNode, BytesNode, FloatNode, IntegerNode, StringNode
    except ImportError:
        return None
    return [
        DictConfig, ListConfig, ContainerMetadata, Metadata,
        AnyNode, StringNode, IntegerNode, FloatNode, BooleanNode, BytesNode,
        typing.Any, int, float, str, bool, bytes, dict, list, tuple, collections.defaultdict,
    ]  # fmt: skip


def safe_torch_load(path: str | os.PathLike) -> Any:
    """`torch.load(weights_only=True)` with the omegaconf allow-list; never executes pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    allowed = _omegaconf_globals()
    try:
        with torch.serialization.safe_globals(allowed or []):
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        match = re.search(r"GLOBAL ([\w.]+)", str(exc))
        name = match.group(1) if match else "an unknown object"
        if name.startswith("omegaconf.") and allowed is None:
            raise CheckpointError(
                f"{path} holds an omegaconf config: install omegaconf (pip install 'omegaconf>=2.3') "
                f"and rerun, or convert it once where omegaconf is installed with "
                f"`python -m extract.convert_checkpoint {path} OUT.safetensors`"
            ) from None
        raise CheckpointError(
            f"refusing to load {path}: its pickle references {name}, which is not an allowed type "
            f"(only tensors and plain config objects are loaded; nothing in the file was executed)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None


def guess_head_label(path: str | os.PathLike, n_classes: int) -> str:
    """Concept name for a classifier head, from the file name (density when K == 4)."""
    if n_classes == 4:
        return "density"
    name = Path(path).name.lower()
    if "calc" in name:
        return "Suspicious_Calcification"
    if "mass" in name:
        return "Mass"
    return "head"


def _split_torch_state(state: dict[str, Any]) -> tuple[dict, dict, list[str]]:
    """Split a CLIP/classifier `model` dict into encoder tensors, head tensors and unknown keys."""
    encoder, head, unknown = {}, {}, []
    for key, value in state.items():
        if key.startswith(ENCODER_PREFIX):
            encoder[key[len(ENCODER_PREFIX):]] = value
        elif key.startswith(HEAD_PREFIX):
            head[key[len(HEAD_PREFIX):]] = value
        elif not key.startswith(IGNORED_PREFIXES):
            unknown.append(key)
    return encoder, head, unknown


def _read_torch(path: Path, head_label: str | None) -> EncoderCheckpoint:
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise CheckpointError(f"{path} is not a Mammo-CLIP checkpoint: expected a dict with a 'model' state dict")
    encoder, head_sd, unknown = _split_torch_state(obj["model"])
    if unknown:
        raise CheckpointError(f"{path}: unexpected keys in 'model': {', '.join(sorted(unknown)[:8])}"
                              + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""))
    if not encoder:
        raise CheckpointError(f"{path} has no '{ENCODER_PREFIX}*' tensors in 'model'")
    head = None
    if head_sd:
        missing = sorted({"weight", "bias"} - set(head_sd))
        extra = sorted(set(head_sd) - {"weight", "bias"})
        if missing or extra:
            names = [HEAD_PREFIX + k for k in missing + extra]
            raise CheckpointError(f"{path}: classification head {'missing' if missing else 'unexpected'} "
                                  f"keys: {', '.join(names)}")
        weight, bias = head_sd["weight"].float(), head_sd["bias"].float()
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise CheckpointError(f"{path}: classification head shapes {tuple(weight.shape)} / "
                                  f"{tuple(bias.shape)} are not [K, C] / [K]")
        k = weight.shape[0]
        names = obj.get("label_names")
        if k > 1 and isinstance(names, list) and len(names) == k and "density" not in names:
            # a multi-label head of binary concepts (python -m extract.finetune --concepts A,B)
            head = HeadWeights(weight, bias, head_label or "+".join(map(str, names)), [str(n) for n in names])
        else:
            label = head_label or (names[0] if isinstance(names, list) and len(names) == 1 else None) \
                or guess_head_label(path, k)
            head = HeadWeights(weight, bias, label, CONCEPT_CLASS_NAMES.get(k, [str(i) for i in range(k)]))
    meta = {"layout": "classifier" if head is not None else "clip", "source_file": path.name}
    if isinstance(obj.get("epoch"), int):
        meta["epoch"] = obj["epoch"]
    return EncoderCheckpoint(encoder, head, meta["layout"], meta)


def _read_safetensors(path: Path) -> EncoderCheckpoint:
    try:
        tensors = load_file(path, device="cpu")
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from None
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(f"{path} is not a mammosae-jax encoder file (metadata format "
                              f"{metadata.get('format')!r}, expected {SAFETENSORS_FORMAT!r})")
    config = json.loads(metadata.get("config", "{}"))
    encoder = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    unknown = sorted(k for k in tensors if not k.startswith(("encoder.", "head.")))
    if unknown:
        raise CheckpointError(f"{path}: unexpected tensors: {', '.join(unknown)}")
    head = None
    if "head.weight" in tensors or "head.bias" in tensors:
        if not ("head.weight" in tensors and "head.bias" in tensors):
            raise CheckpointError(f"{path}: head needs both head.weight and head.bias")
        head = HeadWeights(tensors["head.weight"], tensors["head.bias"],
                           config.get("head_label", "head"), list(config.get("head_class_names", [])))
    return EncoderCheckpoint(encoder, head, "safetensors", config)


def read_checkpoint(path: str | os.PathLike, head_label: str | None = None) -> EncoderCheckpoint:
    """Read any of the three layouts (chosen by content: torch files are zip archives)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); the download or copy did not finish")
    with open(path, "rb") as f:
        magic = f.read(2)
    torch_file = magic in (b"PK", b"\x80\x02")
    if not torch_file and path.suffix in TORCH_SUFFIXES:
        raise CheckpointError(f"{path} is not a torch checkpoint (it starts with neither a zip nor a pickle "
                              "header); the file is damaged or not a Mammo-CLIP checkpoint")
    if path.suffix == ".safetensors" or not torch_file:
        return _read_safetensors(path)
    return _read_torch(path, head_label)


def infer_arch(ckpt: EncoderCheckpoint, source: str) -> str:
    """"b5" or "b2", from the number of head channels in the checkpoint."""
    weight = ckpt.encoder.get("_conv_head.weight")
    if weight is None:
        raise CheckpointError(f"{source} does not fit the encoder: missing 1: _conv_head.weight")
    arch = arch_for_channels(int(weight.shape[0]))
    if arch is None:
        raise CheckpointError(f"{source}: a {weight.shape[0]}-channel head is neither B5 (2048) nor B2 (1408)")
    return arch.key


def checkpoint_arch(ckpt: EncoderCheckpoint, source: str, requested: str | None) -> str:
    """The checkpoint's architecture; CheckpointError when `requested` (--arch) names another one."""
    arch = infer_arch(ckpt, source)
    if requested is not None and requested != arch:
        raise CheckpointError(f"{source} holds an EfficientNet-{arch.upper()} encoder but --arch {requested} "
                              f"was given; drop --arch or pass --arch {arch}")
    return arch


def check_encoder_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise unless `state` fits `model` exactly, except for `_fc.*` and BN batch counters."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state
               and not k.startswith("_fc.") and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            problems.append(f"{what} {len(keys)}: {', '.join(keys[:5])}" + (", ..." if len(keys) > 5 else ""))
    if problems:
        raise CheckpointError(f"{source} does not fit the encoder: " + "; ".join(problems))


def check_weight_values(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """Refuse integer tensors where the encoder has float ones (a cast checkpoint) and NaN/inf weights."""
    wrong = [f"{k} {state[k].dtype} (expected {v.dtype})" for k, v in expected.items()
             if k in state and v.is_floating_point() and not state[k].is_floating_point()]
    if wrong:
        raise CheckpointError(f"{source} holds non-float encoder weights ({len(wrong)}: {', '.join(wrong[:3])}"
                              + (", ..." if len(wrong) > 3 else "") + "); it was cast or damaged: use the "
                              "original checkpoint")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source} has NaN/inf encoder weights ({len(bad)}: {', '.join(bad[:3])}); "
                              "use an undamaged checkpoint")


def load_encoder_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly check, then load `state` into `model` (dtype cast to the model's)."""
    check_encoder_state(model, state, source)
    check_weight_values(state, model.state_dict(), source)
    model.load_state_dict(state, strict=False)


def write_safetensors(path: str | os.PathLike, ckpt: EncoderCheckpoint, arch: str) -> None:
    """Write encoder (+ head) and a JSON config atomically as our safetensors layout."""
    path = Path(path)
    tensors = {f"encoder.{k}": v.detach().contiguous() for k, v in ckpt.encoder.items()}
    config = dict(ckpt.meta, arch=arch, converted_from=ckpt.layout)
    if ckpt.head is not None:
        tensors["head.weight"] = ckpt.head.weight.detach().float().contiguous()
        tensors["head.bias"] = ckpt.head.bias.detach().float().contiguous()
        config.update(head_label=ckpt.head.label, head_class_names=ckpt.head.class_names)
    metadata = {"format": SAFETENSORS_FORMAT, "format_version": SAFETENSORS_VERSION,
                "config": json.dumps(config, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
