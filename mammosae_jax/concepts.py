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

import numpy as np

from mammosae_jax.concept_data import ConceptError, check_label, n_classes_of, split_images, units
from mammosae_jax.evaluate import check_sae_dim, resolve_head
from mammosae_jax.heads import Head, HeadError, check_head_dim
from mammosae_jax.interventions import fold_head
from mammosae_jax.latent_stats import stream_latent_means
from mammosae_jax.ranking import (
    SCORES,
    ClassMeans,
    Ranking,
    RankingError,
    class_means,
    class_scores,
    make_ranking,
    plot_class_means,
    unit_weights,
    write_ranking,
)


def rank_concepts(cache, sae, label: str, *, score: str = "centered", per: str = "row", split: str = "training",
                  batch_size: int = 2, head: Head | None = None) -> tuple[Ranking, ClassMeans]:
    """Ranking of every latent for every class of ``label``, and the class means behind it."""
    check_label(cache, label)
    check_sae_dim(sae, cache)
    u_nK = None
    if score == "attribution":
        if head is None:
            raise RankingError("--score attribution needs the concept head (--head, or one stored in the cache)")
        if head.label != label:
            raise RankingError(f"the head is for '{head.label}', not '{label}'")
        check_head_dim(head, sae.config.d_in, what="SAE's inputs")
        u_nK = np.asarray(fold_head(sae.decode, sae.config.n_latents, head).u_nK)
    images = split_images(cache, split)
    means, _ = stream_latent_means(cache, sae, images, batch_size=batch_size, desc=f"encoding {split}")
    u = units(cache, label, images, per)
    stats = class_means(means.zbar_Nn, unit_weights(u.labels_U, u.image_pos_U, len(images), n_classes_of(label)))
    return make_ranking(label, class_scores(stats, score, u_nK)), stats


def main(argv: list[str] | None = None) -> None:
    from cache import CacheError, open_cache

    from mammosae_jax.formats.common import FormatError
    from mammosae_jax.io import load_sae

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
    p.add_argument("--top", type=int, default=10, help="latents per class in the figure and printout (default 10)")
    p.add_argument("--batch-size", type=int, default=2, help="images encoded per step (default 2)")
    p.add_argument("--out", required=True, help="output folder")
    a = p.parse_args(argv)
    try:
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
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
