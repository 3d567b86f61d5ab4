"""Fit a concept head on pooled training features (for caches made without a downstream checkpoint).

    python -m mammosae_jax.fit_head --cache CACHE --label Mass --out HEAD.safetensors [--C auto|1.0]

Class-balanced logistic regression (scikit-learn, lbfgs) on standardised pooled features of the
training split, image-level labels (max over the image's rows); density is 4-class multinomial.
The standardisation is folded back, so the saved head is a plain ``logit = W @ pooled + b`` on raw
pooled features, like the reference's heads. ``--C auto`` (the default) picks the regularisation
strength by cross-validation on the training split, folds grouped by patient so that no patient is
on both sides (AUROC for binary labels, accuracy for density).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from mammosae_jax.analysis.concept_data import ConceptError, check_label, split_images
from mammosae_jax.analysis.heads import HeadError, head_logits, save_head
from mammosae_jax.analysis.metrics import MetricsError, head_metrics

from mammosae_jax.analysis.head_fit import C_GRID, FitConfig, cross_validated_scores, fit_head_arrays
from cache.cli_errors import cli_main, print_error
from cache.lock import lock_output


def _parse_C(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--C takes 'auto' or a positive number, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--C must be positive, got {value}")
    return value


def _summary(name: str, labels, logits) -> str:
    try:
        m = head_metrics(labels, logits)
    except MetricsError as e:
        return f"{name}: metrics undefined ({e})"
    return f"{name}: " + ", ".join(f"{k}={float(v):.4f}" for k, v in m._asdict().items())


@cli_main
def main(argv: list[str] | None = None) -> None:
    from cache import CacheError, open_cache

    p = argparse.ArgumentParser(prog="python -m mammosae_jax.fit_head", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="feature cache folder (needs a 'training' split)")
    p.add_argument("--label", required=True, help="Mass | Suspicious_Calcification | density")
    p.add_argument("--out", required=True, help="output head file (.safetensors)")
    p.add_argument("--C", type=_parse_C, default=None,
                   help=f"inverse L2 strength on standardised features, or 'auto' (default): the best of {list(C_GRID)} "
                        "by patient-grouped 5-fold cross-validation on the training split")
    p.add_argument("--max-iter", type=int, default=FitConfig.max_iter, help="lbfgs iterations (default 2000)")
    p.add_argument("--train-split", default="training", help="split to fit on (default: training)")
    p.add_argument("--test-split", default="test", help="split to report on if present (default: test)")
    a = p.parse_args(argv)
    try:
        lock_output(a.out, is_file=True)  # held until main returns
        cache = open_cache(a.cache)
        check_label(cache, a.label)
        pooled = cache.pooled()
        labels = cache.labels[a.label].to_numpy(np.int64)
        train = split_images(cache, a.train_split)
        C = a.C
        if C is None:
            groups = np.asarray(cache.labels["patient_id"])[train]
            scores = cross_validated_scores(pooled[train], labels[train], groups, a.label, max_iter=a.max_iter)
            C = max(scores, key=scores.get)
            print("cross-validated C: " + ", ".join(f"{c:g} -> {v:.4f}" for c, v in scores.items()) + f"; chose {C:g}")
        head = fit_head_arrays(pooled[train], labels[train], a.label, FitConfig(C=C, max_iter=a.max_iter))
        save_head(a.out, head)
        print(f"wrote {a.out}: '{a.label}' head, K={head.n_outputs}, C={head.dim}")
        print(_summary(f"{a.train_split} ({len(train)} images)", labels[train], head_logits(head, pooled[train])))
        if a.test_split in set(cache.splits):
            test = cache.split_indices(a.test_split)
            print(_summary(f"{a.test_split} ({len(test)} images)", labels[test], head_logits(head, pooled[test])))
    except (ConceptError, HeadError, CacheError) as e:
        print_error(e)
        sys.exit(2)


if __name__ == "__main__":
    main()
