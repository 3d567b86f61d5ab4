"""Name SAE latents with Mammo-CLIP's own text encoder (zero-shot concept labels).

    python -m mammosae_jax.name_latents --clip-checkpoint b5-model-best-epoch-7.tar \\
        --tokenizer Bio_ClinicalBERT/ --sae SAE --ranking DIR --label Suspicious_Calcification --top 20 --out DIR

Each latent's decoder direction is mapped into CLIP space by the image projection (linear part only,
see `mammosae_jax.analysis.naming`) and compared by cosine with the embeddings of clinical prompts
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
import sys
from pathlib import Path

import numpy as np

from cache.prompt_embeddings import PromptEmbeddingError
from mammosae_jax.analysis.concept_data import write_json
from mammosae_jax.analysis.naming import NamingError, match_prompts, name_latents, similarity_table
from mammosae_jax.analysis.prompts import PromptError, load_prompts

FIGURE_MAX_LATENTS = 40

from mammosae_jax.viz.concept_figures import plot_similarities
from cache.atomic import write_csv_atomic as write_csv
from mammosae_jax.analysis.naming_run import (Selection, default_cache_dir, format_table, matches_rows, names_rows,
                                              parse_latent_ids, prompt_embeddings, select_from_ranking)
from mammosae_jax.cli.options import positive_int
from cache.cli_errors import cli_main, print_error
from cache.lock import lock_output


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
    sel.add_argument("--top", type=positive_int, default=20, metavar="N", help="latents taken from each ranking class (default 20)")
    out = p.add_argument_group("scoring and output")
    out.add_argument("--k", type=positive_int, default=5, metavar="N", help="prompts reported per latent (default 5)")
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
    from mammosae_jax.models.sae_io import load_sae

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
    write_csv(out / "latent_names.csv", ["latent", "source", "proj_norm", "k", "prompt", "group", "cosine"],
               names_rows(names, selection.sources, emb))
    write_csv(out / "prompt_latents.csv", ["prompt", "group", "k", "latent", "cosine"], matches_rows(matches, emb))
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


@cli_main
def main(argv: list[str] | None = None) -> None:
    from mammosae_jax.formats.common import FormatError
    from mammosae_jax.analysis.ranking import RankingError

    a = build_parser().parse_args(argv)
    try:
        lock_output(a.out)  # held until main returns
        run(a)
    except (NamingError, PromptError, PromptEmbeddingError, FormatError, RankingError) as e:
        print_error(e)
        sys.exit(2)


if __name__ == "__main__":
    main()
