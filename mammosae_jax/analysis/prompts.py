"""Clinical text prompts for naming SAE latents, and reading a user's own prompt file.

A prompt set is an ordered list of ``(group, text)`` pairs. The built-in set covers the concepts a
mammography latent is likely to encode: findings (mass, calcification), breast density, anatomy
(nipple, skin, pectoral muscle), the background outside the breast and acquisition artefacts.
Prompts are short, lower-case report-style sentences, the register of the text Mammo-CLIP was
trained on ("there is a mass in the right breast") and of its zero-shot prompts ("mass",
"no mass", "suspicious calcification").

A prompt file (``--prompts``) is JSON, either ``{"group": ["text", ...], ...}`` or a plain list of
texts (group ``"custom"``).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

DEFAULT_PROMPTS: dict[str, tuple[str, ...]] = {
    "mass": (
        "mass",
        "there is a mass in the breast",
        "an irregular spiculated mass",
        "a round circumscribed mass",
        "there is a suspicious mass in the upper outer breast",
    ),
    "calcification": (
        "suspicious calcification",
        "there are fine pleomorphic microcalcifications",
        "clustered microcalcifications in the breast",
        "benign coarse calcifications",
        "vascular calcifications",
    ),
    "density": (
        "the breasts are almost entirely fatty",
        "scattered areas of fibroglandular density",
        "the breasts are heterogeneously dense",
        "the breasts are extremely dense",
    ),
    "nipple": (
        "nipple",
        "nipple retraction",
        "the nipple in profile",
        "subareolar region behind the nipple",
    ),
    "skin": (
        "skin thickening",
        "skin retraction",
        "the skin line of the breast",
    ),
    "pectoral muscle": (
        "pectoral muscle",
        "the pectoralis muscle on the mediolateral oblique view",
        "axillary lymph node",
    ),
    "background": (
        "black background outside the breast",
        "the edge of the image",
        "fatty breast tissue",
    ),
    "artefacts": (
        "image artefact",
        "a skin marker",
        "a surgical clip",
        "the compression paddle",
        "text label burned into the image",
    ),
    "normal": (
        "no mass",
        "no suspicious calcification",
        "no evidence of malignancy",
        "normal mammogram",
    ),
}


class PromptError(ValueError):
    """A prompt file that cannot be used; the message says which file and why."""


class PromptSet(NamedTuple):
    """Prompts in a fixed order, each with the concept group it belongs to."""

    texts: tuple[str, ...]
    groups: tuple[str, ...]

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.texts)


def prompt_set(groups: Mapping[str, Sequence[str]], source: str = "prompts") -> PromptSet:
    """Flatten ``{group: [texts]}`` into a ``PromptSet``; texts must be non-empty and unique."""
    texts: list[str] = []
    names: list[str] = []
    for group, items in groups.items():
        if not isinstance(group, str) or not group.strip():
            raise PromptError(f"{source}: group names must be non-empty strings, got {group!r}")
        if isinstance(items, str) or not isinstance(items, Sequence):
            raise PromptError(f"{source}: group '{group}' must map to a list of prompt strings")
        for text in items:
            if not isinstance(text, str) or not text.strip():
                raise PromptError(f"{source}: group '{group}' holds {text!r}; prompts must be non-empty strings")
            texts.append(" ".join(text.split()))
            names.append(group)
    if not texts:
        raise PromptError(f"{source}: no prompts")
    dupes = sorted(t for t, n in Counter(texts).items() if n > 1)
    if dupes:
        raise PromptError(f"{source}: duplicate prompts: {', '.join(repr(t) for t in dupes[:5])}")
    return PromptSet(tuple(texts), tuple(names))


def default_prompts() -> PromptSet:
    """The built-in clinical prompt set."""
    return prompt_set(DEFAULT_PROMPTS, "built-in prompts")


def load_prompts(path: str | os.PathLike | None = None) -> PromptSet:
    """The prompts of a JSON file (``{group: [texts]}`` or ``[texts]``), or the built-in set."""
    if path is None:
        return default_prompts()
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt file not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PromptError(f"{path} is not valid JSON: {e}") from None
    if isinstance(obj, list):
        obj = {"custom": obj}
    if not isinstance(obj, dict):
        raise PromptError(f"{path}: expected {{\"group\": [prompts]}} or a list of prompts, got {type(obj).__name__}")
    return prompt_set(obj, str(path))


__all__ = ["DEFAULT_PROMPTS", "PromptError", "PromptSet", "default_prompts", "load_prompts", "prompt_set"]
