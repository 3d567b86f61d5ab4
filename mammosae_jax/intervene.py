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
import csv
import io
import sys
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from cache.atomic import write_text_atomic
from mammosae_jax.concept_data import ConceptError, n_classes_of, save_figure, split_images, units, write_json
from mammosae_jax.evaluate import check_sae_dim, resolve_head
from mammosae_jax.heads import Head, HeadError, head_logits
from mammosae_jax.interventions import (
    DEFAULT_KS,
    MODES,
    ablation_effects,
    error_logits,
    exact_logits,
    fold_head,
    k_list,
    masked_logits,
    sweep_masks,
)
from mammosae_jax.latent_stats import stream_latent_means
from mammosae_jax.metrics import MetricsError, head_metrics, metrics_dict
from mammosae_jax.ranking import Ranking, RankingError, read_ranking, unit_weights


class InterventionResult(NamedTuple):
    label: str
    records: dict[str, list[dict]]  # mode -> one record per k
    reference: dict[str, dict]  # "raw", "sae": metrics without intervention
    ablation_nC: np.ndarray  # [n_latents, n_classes] mean logit change
    max_abs_diff_exact: float | None  # --exact: largest |identity - exact| logit difference


def headline(records_or_metrics: dict) -> str:
    return "aucroc" if "aucroc" in records_or_metrics else "macro_f1"


def run_interventions(cache, sae, head: Head, ranking: Ranking, label: str, *, ks=DEFAULT_KS, modes=MODES,
                      keep_error: bool = False, exact: bool = False, per: str = "row", split: str = "test",
                      batch_size: int = 2) -> InterventionResult:
    """Evaluate every (mode, k) on a split; optionally verify against the exact computation."""
    check_sae_dim(sae, cache)
    if ranking.n_latents != sae.config.n_latents:
        raise RankingError(f"the ranking covers {ranking.n_latents} latents but the SAE has {sae.config.n_latents}")
    ks = k_list(ks, sae.config.n_latents)
    images = split_images(cache, split)
    means, _ = stream_latent_means(cache, sae, images, batch_size=batch_size, desc=f"encoding {split}")
    folded = fold_head(sae.decode, sae.config.n_latents, head)
    extra = error_logits(means.zbar_Nn, means.xbar_NC, sae.decode, head) if keep_error else None
    masks, mode_of, k_of, size = sweep_masks(ranking, ks, modes)
    logits = np.asarray(masked_logits(jnp.asarray(means.zbar_Nn), jnp.asarray(masks), folded, extra))
    max_diff = None
    if exact:
        ref = exact_logits(cache, sae, head, masks, images, keep_error=keep_error, batch_size=batch_size)
        max_diff = float(np.abs(ref - logits).max())
        logits = ref
    u = units(cache, label, images, per)
    m = head_metrics(u.labels_U, logits[:, u.image_pos_U])
    records: dict[str, list[dict]] = {mode: [] for mode in modes}
    for i, (mode, k) in enumerate(zip(mode_of, k_of)):
        records[mode].append({"k": k, "n_latents_kept_or_removed": int(size[i]), **metrics_dict(m, i)})
    sae_only = np.asarray(masked_logits(jnp.asarray(means.zbar_Nn), jnp.ones((1, sae.config.n_latents)), folded))[0]
    reference = {
        "raw": metrics_dict(head_metrics(u.labels_U, head_logits(head, cache.pooled()[images])[u.image_pos_U])),
        "sae": metrics_dict(head_metrics(u.labels_U, sae_only[u.image_pos_U])),
    }
    weights = unit_weights(u.labels_U, u.image_pos_U, len(images), n_classes_of(label))
    ablation = ablation_effects(means.zbar_Nn, folded.u_nK, weights)
    return InterventionResult(label, records, reference, ablation, max_diff)


def plot_sweep(result: InterventionResult, path: Path) -> None:
    """Figure-2 style plot: headline metric against k (symlog axis, so k = 0 shows)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    key = headline(result.reference["raw"])
    for mode, recs in result.records.items():
        ax.plot([r["k"] for r in recs], [r[key] for r in recs], "o-", label=f"top-k {'activated' if mode == 'on' else 'deactivated'}")
    ax.axhline(result.reference["raw"][key], color="k", ls="--", lw=1, label=f"raw features ({result.reference['raw'][key]:.3f})")
    ax.axhline(result.reference["sae"][key], color="gray", ls=":", lw=1, label=f"SAE only ({result.reference['sae'][key]:.3f})")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("k (latents per class)")
    ax.set_ylabel(key)
    ax.set_title(f"{result.label}: top-k latent interventions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def write_ablation_csv(path: Path, ablation_nC: np.ndarray) -> None:
    """``latent, mean_dlogit_class=0, ...``, sorted by the effect on the last class (most negative first)."""
    order = np.argsort(ablation_nC[:, -1], kind="stable")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["latent", *(f"mean_dlogit_class={c}" for c in range(ablation_nC.shape[1]))])
    for j in order:
        w.writerow([int(j), *(f"{v:.6g}" for v in ablation_nC[j])])
    write_text_atomic(path, buf.getvalue())


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


def main(argv: list[str] | None = None) -> None:
    from cache import CacheError, open_cache

    from mammosae_jax.formats.common import FormatError
    from mammosae_jax.io import load_sae

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
    p.add_argument("--batch-size", type=int, default=2, help="images encoded per step (default 2)")
    p.add_argument("--out", required=True, help="output folder")
    a = p.parse_args(argv)
    try:
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
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
