"""Top-k latent interventions (the paper's Figure 2), every (mode, k) in one vectorised call.

    python -m mammosae_jax.intervene --cache TEST_CACHE --sae SAE --ranking DIR --mode both --out DIR

T_k is the union over classes of each class's first k latents of the ranking; ``on`` keeps only
T_k, ``off`` removes it. Each image is encoded once; its mean latent vector then gives the head's
logit under any mask through the exact identity ``logit = (m * zbar) @ (W_dec @ W_cls.T) + c``.
``--exact`` instead decodes every position for every mask, pools and applies the head (the
reference's computation) and reports the largest difference from the identity.

Writes ``topk_{on|off}_{label}.json`` (records ``k, n_latents_kept_or_removed, aucroc, auprc,
precision, recall, f1``; density: ``accuracy, macro_f1``), ``topk_{label}.png`` (metric vs k with
the raw-feature and SAE-only values as reference lines), ``single_latent_ablation_{label}.csv``
(mean logit change per class when one latent is removed) and ``intervene_summary_{label}.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from mammosae_jax.analysis.concept_data import ConceptError, n_classes_of
from mammosae_jax.analysis.evaluation import resolve_head
from mammosae_jax.analysis.heads import HeadError
from mammosae_jax.analysis.interventions import DEFAULT_KS, MODES
from mammosae_jax.analysis.metrics import MetricsError
from mammosae_jax.analysis.ranking import RankingError, read_ranking

import numpy as np

from cache.atomic import write_csv_atomic
from mammosae_jax.analysis.concept_data import write_json
from mammosae_jax.analysis.intervention_run import InterventionResult, headline, run_interventions
from mammosae_jax.viz.concept_figures import plot_sweep
from mammosae_jax.cli.options import positive_int
from cache.cli_errors import cli_main, print_error
from cache.lock import lock_output


def write_ablation_csv(path: Path, ablation_nC: np.ndarray) -> None:
    """``latent, mean_dlogit_class=0, ...``, sorted by the effect on the last class (most negative first)."""
    order = np.argsort(ablation_nC[:, -1], kind="stable")
    write_csv_atomic(path, ["latent", *(f"mean_dlogit_class={c}" for c in range(ablation_nC.shape[1]))],
                     ([int(j), *(f"{v:.6g}" for v in ablation_nC[j])] for j in order))


def write_outputs(out: Path, result: InterventionResult, extra_summary: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for mode, recs in result.records.items():
        paths.append(out / f"topk_{mode}_{result.label}.json")
        write_json(paths[-1], recs)
    paths.append(out / f"topk_{result.label}.png")
    plot_sweep(result, paths[-1])
    paths.append(out / f"single_latent_ablation_{result.label}.csv")
    write_ablation_csv(paths[-1], result.ablation_nC)
    paths.append(out / f"intervene_summary_{result.label}.json")
    write_json(paths[-1], {"label": result.label, "reference": result.reference,
                           "max_abs_diff_exact": result.max_abs_diff_exact, **extra_summary})
    return paths


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise ConceptError(f"--k must be comma-separated integers, got '{text}'") from None
    if not ks or min(ks) < 0:
        raise ConceptError(f"--k needs one or more integers >= 0, got '{text}'")
    return ks


@cli_main
def main(argv: list[str] | None = None) -> None:
    from cache import CacheError, open_cache

    from mammosae_jax.formats.common import FormatError
    from mammosae_jax.models.sae_io import load_sae

    p = argparse.ArgumentParser(prog="python -m mammosae_jax.intervene", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="feature cache folder with the evaluation split")
    p.add_argument("--sae", required=True, help="SAE: run folder, .safetensors or reference .pt")
    p.add_argument("--head", help="concept head .safetensors (default: the head stored in the cache)")
    p.add_argument("--label", help="label column (default: the head's label)")
    p.add_argument("--ranking", required=True, help="folder with top_k_concepts_class={c}_{label}[_{suffix}].json")
    p.add_argument("--ranking-suffix", default=None, help="ranking file suffix (default: the only one present)")
    p.add_argument("--mode", choices=("on", "off", "both"), default="both", help="keep only T_k, remove T_k, or both")
    p.add_argument("--k", default=",".join(map(str, DEFAULT_KS)),
                   help="comma-separated k list, clipped to the SAE's latent count (default: the paper's 12 values)")
    p.add_argument("--keep-error", action="store_true", help="add back the pooled SAE error term (the reference dropped it)")
    p.add_argument("--exact", action="store_true", help="decode every position per mask (reference computation) and report the difference")
    p.add_argument("--per", choices=("row", "image"), default="row", help="metric units (default: row, reference parity)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--batch-size", type=positive_int, default=2, help="images encoded per step (default 2)")
    p.add_argument("--out", required=True, help="output folder")
    a = p.parse_args(argv)
    try:
        lock_output(a.out)  # held until main returns
        ks = _parse_ks(a.k)
        cache = open_cache(a.cache)
        head, label = resolve_head(cache, a.head, a.label)
        sae = load_sae(a.sae)
        ranking = read_ranking(a.ranking, label, suffix=a.ranking_suffix, n_latents=sae.config.n_latents,
                               n_classes=n_classes_of(label))
        modes = MODES if a.mode == "both" else (a.mode,)
        result = run_interventions(cache, sae, head, ranking, label, ks=ks, modes=modes, keep_error=a.keep_error,
                                   exact=a.exact, per=a.per, split=a.split, batch_size=a.batch_size)
        paths = write_outputs(Path(a.out), result, {"keep_error": a.keep_error, "exact": a.exact, "per": a.per,
                                                    "split": a.split, "ranking": str(a.ranking)})
        key = headline(result.reference["raw"])
        print(f"{label}: raw {key}={result.reference['raw'][key]:.4f}, SAE-only {key}={result.reference['sae'][key]:.4f}")
        for mode, recs in result.records.items():
            print(f"  {mode:>3}: " + "  ".join(f"k={r['k']}:{r[key]:.4f}" for r in recs))
        if result.max_abs_diff_exact is not None:
            print(f"  --exact: max |identity - exact| logit difference = {result.max_abs_diff_exact:.3g}")
        print("wrote " + ", ".join(str(x) for x in paths))
    except (ConceptError, HeadError, RankingError, MetricsError, CacheError, FormatError) as e:
        print_error(e)
        sys.exit(2)


if __name__ == "__main__":
    main()
