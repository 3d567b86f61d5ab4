"""Rank SAE latents per concept class from their spatial-mean activations on a training split.

    python -m mammosae_jax.concepts --cache TRAIN_CACHE --sae SAE --label L \
        --score centered|mean|attribution [--head HEAD] --out DIR

Encodes every position of the split's images once (streamed, jit-compiled), keeps the per-image
mean latent vector, and scores latent j for class c as the class mean of that vector (``mean``, the
paper's formula), the class mean minus the overall mean (``centered``, how the released files
were made) or the centered score times the latent's effect on the head's class margin
(``attribution``, ours: the latents the head relies on; needs a head). Units are CSV rows
(default, as the reference) or images. Writes
``top_k_concepts_class={c}_{label}[_{suffix}].json`` per class (reference format) and
``class_means_{label}.png`` (class means of each class's top latents).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mammosae_jax.analysis.concept_data import ConceptError
from mammosae_jax.analysis.concept_ranking import rank_concepts
from mammosae_jax.analysis.evaluation import resolve_head
from mammosae_jax.analysis.heads import HeadError
from mammosae_jax.analysis.ranking import SCORES, RankingError, write_ranking
from mammosae_jax.viz.concept_figures import plot_class_means
from mammosae_jax.cli.options import positive_int
from cache.cli_errors import cli_main, print_error
from cache.lock import lock_output


@cli_main
def main(argv: list[str] | None = None) -> None:
    from cache import CacheError, open_cache

    from mammosae_jax.formats.common import FormatError
    from mammosae_jax.models.sae_io import load_sae

    p = argparse.ArgumentParser(prog="python -m mammosae_jax.concepts", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="feature cache folder with the training split")
    p.add_argument("--sae", required=True, help="SAE: run folder, .safetensors or reference .pt")
    p.add_argument("--label", required=True, help="Mass | Suspicious_Calcification | density")
    p.add_argument("--score", choices=SCORES, default="centered",
                   help="centered: class mean - overall mean (reproduces the released files, default); "
                        "mean: class mean (the paper's formula); attribution: centered x the latent's effect "
                        "on the head's class margin (needs a head)")
    p.add_argument("--head", help="--score attribution: concept head .safetensors (default: the cache's head)")
    p.add_argument("--per", choices=("row", "image"), default="row",
                   help="units: CSV rows (reference, default) or images (label = max over rows)")
    p.add_argument("--split", default="training", help="split to rank on (default: training)")
    p.add_argument("--suffix", default="", help="file name suffix, e.g. finetuned -> ..._{label}_finetuned.json")
    p.add_argument("--top", type=positive_int, default=10, help="latents per class in the figure and printout (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=2, help="images encoded per step (default 2)")
    p.add_argument("--out", required=True, help="output folder")
    a = p.parse_args(argv)
    try:
        lock_output(a.out)  # held until main returns
        cache = open_cache(a.cache)
        sae = load_sae(a.sae)
        head = resolve_head(cache, a.head, a.label)[0] if a.score == "attribution" else None
        ranking, stats = rank_concepts(cache, sae, a.label, score=a.score, per=a.per, split=a.split,
                                       batch_size=a.batch_size, head=head)
        paths = write_ranking(a.out, ranking, suffix=a.suffix)
        fig = Path(a.out) / f"class_means_{a.label}.png"
        plot_class_means(stats, ranking, fig, top=a.top)
        for c in range(ranking.n_classes):
            top = ", ".join(f"{j} ({ranking.importance_Cn[c, j]:.4g})" for j in ranking.order_Cn[c, : a.top])
            print(f"class {c} ({int(stats.counts_C[c])} {a.per}s): {top}")
        print("wrote " + ", ".join(str(x) for x in [*paths, fig]))
    except (ConceptError, RankingError, CacheError, FormatError, HeadError) as e:
        print_error(e)
        sys.exit(2)


if __name__ == "__main__":
    main()
