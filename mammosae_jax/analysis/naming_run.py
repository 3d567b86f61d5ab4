"""Name latents: choose them, get the prompts' embeddings, write the tables and the figure. The
maths is in `analysis.naming`; the command is `mammosae_jax.cli.name_latents`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from cache.prompt_embeddings import (
    PromptEmbeddings,
    cache_file,
    cache_key,
    file_sha256,
    read_prompt_embeddings,
    tokenizer_sha256,
)
from mammosae_jax.analysis.naming import LatentNames, NamingError, PromptMatches
from mammosae_jax.analysis.prompts import PromptSet

FIGURE_MAX_LATENTS = 40


class Selection(NamedTuple):
    """Latents to name and where each came from (``given`` or ``class=c rank=r``)."""

    latents: np.ndarray
    sources: list[str]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mammosae-jax/prompt-embeddings`` (``~/.cache`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "mammosae-jax" / "prompt-embeddings"


def parse_latent_ids(text: str) -> np.ndarray:
    """``"3,17,100-103"`` -> ``[3, 17, 100, 101, 102, 103]`` (order kept, duplicates dropped)."""
    ids: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, sep, hi = part.partition("-")
            ids.extend(range(int(lo), int(hi) + 1) if sep else [int(part)])
    except ValueError:
        raise NamingError(f"--latents '{text}': expected comma-separated ids or ranges like 3,17,100-110") from None
    if not ids:
        raise NamingError(f"--latents '{text}' names no latent")
    return np.array(list(dict.fromkeys(ids)), np.int64)


def select_from_ranking(directory: str, label: str, n_latents: int, top: int, classes: Sequence[int] | None,
                        suffix: str | None = None) -> Selection:
    """Each requested class's first ``top`` latents of a ranking, in class order, without repeats."""
    from mammosae_jax.analysis.ranking import read_ranking

    ranking = read_ranking(directory, label, suffix=suffix, n_latents=n_latents)
    classes = list(range(ranking.n_classes)) if classes is None else list(classes)
    bad = [c for c in classes if not 0 <= c < ranking.n_classes]
    if bad:
        raise NamingError(f"ranking for '{label}' has classes 0..{ranking.n_classes - 1}, not {bad}")
    seen: dict[int, str] = {}
    for c in classes:
        for r, j in enumerate(ranking.order_Cn[c, :top].tolist()):
            seen.setdefault(int(j), f"class={c} rank={r}")
    return Selection(np.array(list(seen), np.int64), list(seen.values()))


def prompt_embeddings(prompts: PromptSet, *, checkpoint: str | None, tokenizer: str | None,
                      embeddings: str | None, cache_dir: Path, pooling: str | None = None,
                      max_length: int | None = None, batch_size: int = 32) -> tuple[PromptEmbeddings, Path, bool]:
    """The prompts' embeddings: from ``embeddings``, the cache, or the text tower (then cached).

    Returns ``(embeddings, file, computed_now)``. torch is imported only when computing.
    """
    if embeddings is not None:
        emb = read_prompt_embeddings(embeddings)
        return emb, Path(embeddings), False
    if checkpoint is None or tokenizer is None:
        raise NamingError("give --clip-checkpoint and --tokenizer (or --embeddings FILE from an earlier run)")
    if not Path(checkpoint).is_file():
        raise NamingError(f"CLIP checkpoint not found: {checkpoint}")
    tok_sha = tokenizer_sha256(tokenizer)  # checks the folder before hashing a 1.5 GB checkpoint
    ckpt_sha = file_sha256(checkpoint, progress=True)
    key = cache_key(ckpt_sha, prompts.texts, tok_sha, pooling, max_length)
    path = cache_file(cache_dir, key)
    if path.is_file():
        emb = read_prompt_embeddings(path)
        if emb.meta.get("key") == key and emb.texts == prompts.texts:
            return emb, path, False
    meta = {"key": key, "checkpoint_sha256": ckpt_sha, "checkpoint_name": Path(checkpoint).name,
            "tokenizer_sha256": tok_sha}
    run_text_tower(checkpoint, tokenizer, prompts, meta, path, pooling=pooling, max_length=max_length,
                   batch_size=batch_size)
    return read_prompt_embeddings(path), path, True


def run_text_tower(checkpoint: str, tokenizer: str, prompts: PromptSet, meta: dict, out: Path, *,
                   pooling: str | None, max_length: int | None, batch_size: int) -> None:
    """Embed the prompts with `python -m extract.embed_prompts` (torch stays out of this process)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "prompts.json"
        spec.write_text(json.dumps({"texts": list(prompts.texts), "groups": list(prompts.groups), "meta": meta}))
        argv = [sys.executable, "-m", "extract.embed_prompts", "--checkpoint", str(checkpoint), "--tokenizer",
                str(tokenizer), "--prompts", str(spec), "--out", str(out), "--batch-size", str(batch_size),
                *(["--pooling", pooling] if pooling else []), *(["--max-length", str(max_length)] if max_length else [])]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    if proc.returncode != 0:
        raise NamingError(errors[-1].removeprefix("error: ") if errors else
                          f"the text tower failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    sys.stderr.write(proc.stderr)


def names_rows(names: LatentNames, sources: list[str], emb: PromptEmbeddings) -> list[list]:
    """Long-format rows: one per (latent, k)."""
    return [[int(j), sources[i], f"{names.proj_norm_L[i]:.6f}", r + 1, emb.texts[p], emb.groups[p],
             f"{names.cosine_LK[i, r]:.6f}"]
            for i, j in enumerate(names.latents_L) for r, p in enumerate(names.prompt_LK[i])]


def matches_rows(matches: PromptMatches, emb: PromptEmbeddings) -> list[list]:
    """Long-format rows: one per (prompt, k)."""
    return [[emb.texts[p], emb.groups[p], r + 1, int(j), f"{matches.cosine_PK[p, r]:.6f}"]
            for p in range(len(emb.texts)) for r, j in enumerate(matches.latent_PK[p])]


def format_table(names: LatentNames, emb: PromptEmbeddings, top: int = 3, width: int = 38) -> str:
    """Plain-text table: latent, |W_img d|, and its best ``top`` prompts with cosines."""
    def cell(p: int, c: float) -> str:
        text = emb.texts[p] if len(emb.texts[p]) <= width - 10 else emb.texts[p][:width - 13] + "..."
        return f"{text} ({c:+.3f})".ljust(width)

    top = min(top, names.prompt_LK.shape[1])
    lines = [f"{'latent':>7}  {'kept':>5}  " + "".join(f"#{r + 1} prompt (cos)".ljust(width) for r in range(top))]
    for i, j in enumerate(names.latents_L):
        lines.append(f"{int(j):>7}  {names.proj_norm_L[i]:>5.2f}  "
                     + "".join(cell(int(names.prompt_LK[i, r]), float(names.cosine_LK[i, r])) for r in range(top)))
    return "\n".join(line.rstrip() for line in lines)


