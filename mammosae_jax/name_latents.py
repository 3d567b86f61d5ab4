"""Name SAE latents with Mammo-CLIP's own text encoder (zero-shot concept labels).

    python -m mammosae_jax.name_latents --clip-checkpoint b5-model-best-epoch-7.tar \\
        --tokenizer Bio_ClinicalBERT/ --sae SAE --ranking DIR --label Suspicious_Calcification --top 20 --out DIR

Each latent's decoder direction is mapped into CLIP space by the image projection (linear part only,
see `mammosae_jax.latent_naming`) and compared by cosine with the embeddings of clinical prompts
(built-in set, or ``--prompts FILE``). The prompt embeddings come from the PyTorch text tower
(`extract.text_tower`), run once and cached as safetensors keyed by the sha256 of (checkpoint,
prompts, tokenizer, pooling, max length); later runs, or ``--embeddings FILE``, need no torch.

Writes ``latent_names.csv`` (latent, source, proj_norm, k, prompt, group, cosine),
``prompt_latents.csv`` (prompt, group, k, latent, cosine: the reverse search),
``latent_names.png`` (cosine heatmap, best prompt marked) and ``name_latents_summary.json``,
and prints a table of the top prompts per latent.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from extract.prompt_embeddings import (
    PromptEmbeddingError,
    PromptEmbeddings,
    cache_file,
    cache_key,
    file_sha256,
    read_prompt_embeddings,
    tokenizer_sha256,
)
from mammosae_jax.concept_data import save_figure, write_json
from mammosae_jax.latent_naming import (
    LatentNames,
    NamingError,
    PromptMatches,
    match_prompts,
    name_latents,
    similarity_table,
)
from mammosae_jax.prompts import PromptError, PromptSet, load_prompts

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
    from mammosae_jax.ranking import read_ranking

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
    from extract.checkpoints import CheckpointError
    from extract.text_tower import TextTowerError, compute_prompt_embeddings

    meta = {"key": key, "checkpoint_sha256": ckpt_sha, "checkpoint_name": Path(checkpoint).name,
            "tokenizer_sha256": tok_sha}
    try:
        emb = compute_prompt_embeddings(checkpoint, tokenizer, prompts.texts, prompts.groups, path, meta=meta,
                                        pooling=pooling, max_length=max_length, batch_size=batch_size)
    except (TextTowerError, CheckpointError) as e:
        raise NamingError(str(e)) from None
    return emb, path, True


def _write_csv(path: Path, header: Sequence[str], rows: list[Sequence]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


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


def plot_similarities(sim_LP: np.ndarray, latents: np.ndarray, emb: PromptEmbeddings, path: Path) -> None:
    """Heatmap of cosines (latents x prompts, prompts grouped), each latent's best prompt circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_lat, n_prompt = sim_LP.shape
    label_in = 0.055 * max(len(t) + len(g) for t, g in zip(emb.texts, emb.groups))  # rotated prompt labels
    fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * n_prompt + 3), 0.2 * n_lat + 1.5 + min(label_in, 3.0)),
                           layout="constrained")
    vmax = float(np.abs(sim_LP).max()) or 1.0
    im = ax.imshow(sim_LP, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    best_L = sim_LP.argmax(axis=1)
    ax.scatter(best_L, np.arange(n_lat), s=18, facecolors="none", edgecolors="k", linewidths=0.8)
    labels = [f"[{g}] {t}" if len(t) <= 40 else f"[{g}] {t[:37]}..." for t, g in zip(emb.texts, emb.groups)]
    ax.set_xticks(np.arange(n_prompt), labels, rotation=90, fontsize=6)
    ax.set_yticks(np.arange(n_lat), [str(int(j)) for j in latents], fontsize=6)
    for x in np.flatnonzero(np.array(emb.groups[1:]) != np.array(emb.groups[:-1])):
        ax.axvline(x + 0.5, color="0.3", lw=0.5)
    ax.set_xlabel("prompt")
    ax.set_ylabel("latent")
    ax.set_title("cosine(W_img · decoder direction, prompt embedding)")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mammosae_jax.name_latents", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("text side")
    src.add_argument("--clip-checkpoint", metavar="FILE", help="Mammo-CLIP pre-trained CLIP .tar (holds the text tower and projections)")
    src.add_argument("--tokenizer", metavar="DIR", help="local Bio_ClinicalBERT folder (vocab.txt; config.json if present)")
    src.add_argument("--embeddings", metavar="FILE", help="a prompt-embedding .safetensors from an earlier run (no torch needed)")
    src.add_argument("--prompts", metavar="FILE", help="JSON prompt file {group: [texts]} or [texts] (default: built-in clinical set)")
    src.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                     help=f"where prompt embeddings are cached (default: {default_cache_dir()})")
    src.add_argument("--pooling", choices=("eos", "bos", "mean"), default=None,
                     help="text pooling (default: the checkpoint's config, else eos as Mammo-CLIP)")
    src.add_argument("--max-length", type=int, default=None, metavar="N", help="token limit (default: the checkpoint's, else 256)")
    src.add_argument("--text-batch-size", type=int, default=32, metavar="N", help="prompts per text-tower batch (default 32)")
    sel = p.add_argument_group("latents")
    sel.add_argument("--sae", required=True, metavar="SAE", help="SAE: run folder, .safetensors or reference .pt")
    sel.add_argument("--latents", metavar="IDS", help="latent ids, e.g. 13867,42,100-110 (default: all, or --ranking)")
    sel.add_argument("--ranking", metavar="DIR", help="folder with top_k_concepts_class={c}_{label}[_{suffix}].json")
    sel.add_argument("--label", metavar="L", help="ranking label, e.g. Suspicious_Calcification (with --ranking)")
    sel.add_argument("--ranking-class", type=int, action="append", default=None, metavar="C",
                     help="ranking class to take latents from; repeat for several (default: every class)")
    sel.add_argument("--ranking-suffix", default=None, metavar="S", help="ranking file suffix (default: the only one present)")
    sel.add_argument("--top", type=int, default=20, metavar="N", help="latents taken from each ranking class (default 20)")
    out = p.add_argument_group("scoring and output")
    out.add_argument("--k", type=int, default=5, metavar="N", help="prompts reported per latent (default 5)")
    out.add_argument("--reverse-k", type=int, default=10, metavar="N", help="latents reported per prompt (default 10)")
    out.add_argument("--reverse-over", choices=("all", "selected"), default="all",
                     help="latents searched for each prompt: every SAE latent (default) or only the selected ones")
    out.add_argument("--include-projection-bias", action="store_true",
                     help="use W_img d + b_img instead of the linear part W_img d")
    out.add_argument("--center-prompts", action="store_true",
                     help="subtract the mean prompt embedding before comparing")
    out.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    return p


def run(a: argparse.Namespace) -> dict:
    """Everything `main` does, raising on bad input; returns the summary written to JSON."""
    from mammosae_jax.io import load_sae

    if a.latents and a.ranking:
        raise NamingError("give --latents or --ranking, not both")
    if a.ranking and not a.label:
        raise NamingError("--ranking needs --label (e.g. --label Suspicious_Calcification)")
    if a.k < 1 or a.reverse_k < 1 or a.top < 1:
        raise NamingError("--k, --reverse-k and --top must be at least 1")
    if a.embeddings and a.prompts:
        raise NamingError("--embeddings already fixes the prompts; drop --prompts")
    prompts = load_prompts(a.prompts)
    sae = load_sae(a.sae)
    W_dec_NC = np.asarray(sae.params["W_dec"])
    n = W_dec_NC.shape[0]
    if a.ranking:
        selection = select_from_ranking(a.ranking, a.label, n, a.top, a.ranking_class, a.ranking_suffix)
    elif a.latents:
        ids = parse_latent_ids(a.latents)
        selection = Selection(ids, ["given"] * len(ids))
    else:
        selection = Selection(np.arange(n), ["all"] * n)
    emb, emb_path, computed = prompt_embeddings(
        prompts, checkpoint=a.clip_checkpoint, tokenizer=a.tokenizer, embeddings=a.embeddings,
        cache_dir=a.cache_dir or default_cache_dir(), pooling=a.pooling, max_length=a.max_length,
        batch_size=a.text_batch_size)
    opts = dict(include_bias=a.include_projection_bias, center=a.center_prompts)
    names = name_latents(W_dec_NC, emb, selection.latents, k=a.k, **opts)
    candidates = selection.latents if a.reverse_over == "selected" else None
    matches = match_prompts(W_dec_NC, emb, candidates, k=a.reverse_k, **opts)

    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "latent_names.csv", ["latent", "source", "proj_norm", "k", "prompt", "group", "cosine"],
               names_rows(names, selection.sources, emb))
    _write_csv(out / "prompt_latents.csv", ["prompt", "group", "k", "latent", "cosine"], matches_rows(matches, emb))
    shown = selection.latents[:FIGURE_MAX_LATENTS]
    plot_similarities(similarity_table(W_dec_NC, emb, shown, **opts), shown, emb, out / "latent_names.png")
    summary = {
        "sae": str(a.sae), "n_latents": n, "d_in": int(W_dec_NC.shape[1]), "n_named": int(len(selection.latents)),
        "n_prompts": len(emb.texts), "embeddings_file": str(emb_path), "embeddings_computed_now": computed,
        "embedding_key": emb.meta.get("key"), "pooling": emb.meta.get("pooling"),
        "include_projection_bias": a.include_projection_bias, "center_prompts": a.center_prompts,
        "reverse_over": a.reverse_over, "ranking": a.ranking, "label": a.label,
        "top_prompt": {str(int(j)): emb.texts[int(names.prompt_LK[i, 0])] for i, j in enumerate(names.latents_L)},
        "mean_proj_norm": float(names.proj_norm_L.mean()),
    }
    write_json(out / "name_latents_summary.json", summary)
    print(format_table(names, emb))
    how = "given" if a.embeddings else "computed" if computed else "cached"
    print(f"prompt embeddings: {emb_path} ({how})")
    print(f"wrote {out / 'latent_names.csv'}, {out / 'prompt_latents.csv'}, {out / 'latent_names.png'}, "
          f"{out / 'name_latents_summary.json'}")
    return summary


def main(argv: list[str] | None = None) -> None:
    from mammosae_jax.formats.common import FormatError
    from mammosae_jax.ranking import RankingError

    a = build_parser().parse_args(argv)
    try:
        run(a)
    except (NamingError, PromptError, PromptEmbeddingError, FormatError, RankingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
