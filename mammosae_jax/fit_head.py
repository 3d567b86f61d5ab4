"""Fit a concept head on pooled training features (for caches made without a downstream checkpoint).

    python -m mammosae_jax.fit_head --cache CACHE --label Mass --out HEAD.safetensors [--C 1.0]

Class-balanced logistic regression (scikit-learn, lbfgs) on standardised pooled features of the
training split, image-level labels (max over the image's rows); density is 4-class multinomial.
The standardisation is folded back, so the saved head is a plain ``logit = W @ pooled + b`` on raw
pooled features, like the reference's heads.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from sklearn.linear_model import LogisticRegression

from mammosae_jax.concept_data import ConceptError, check_label, class_names_of, n_classes_of, split_images
from mammosae_jax.heads import Head, HeadError, head_logits, make_head, save_head
from mammosae_jax.metrics import MetricsError, head_metrics


@dataclass(frozen=True)
class FitConfig:
    """Logistic-regression settings."""

    C: float = 1.0
    """Inverse L2 strength on the standardised features."""
    max_iter: int = 2000
    """lbfgs iterations."""


class Standardised(NamedTuple):
    mean_C: np.ndarray
    scale_C: np.ndarray


def fit_head_arrays(pooled_NC: np.ndarray, labels_N: np.ndarray, label: str, config: FitConfig = FitConfig()) -> Head:
    """Fit a head on pooled features; returns W, b acting on the raw (unstandardised) features."""
    x = np.asarray(pooled_NC, np.float64)
    y = np.asarray(labels_N, np.int64)
    n_cls = n_classes_of(label)
    present = np.unique(y)
    if not np.array_equal(present, np.arange(n_cls)):
        raise ConceptError(f"fitting a '{label}' head needs every class 0..{n_cls - 1} in the training split, got {present.tolist()}")
    std = Standardised(x.mean(0), x.std(0))
    std = std._replace(scale_C=np.where(std.scale_C > 0, std.scale_C, 1.0))
    clf = LogisticRegression(C=config.C, class_weight="balanced", max_iter=config.max_iter)
    clf.fit((x - std.mean_C) / std.scale_C, y)
    w_KC = clf.coef_ / std.scale_C
    b_K = clf.intercept_ - w_KC @ std.mean_C
    return make_head(w_KC, b_K, label, class_names_of(label))


def _summary(name: str, labels, logits) -> str:
    try:
        m = head_metrics(labels, logits)
    except MetricsError as e:
        return f"{name}: metrics undefined ({e})"
    return f"{name}: " + ", ".join(f"{k}={float(v):.4f}" for k, v in m._asdict().items())


def main(argv: list[str] | None = None) -> None:
    from cache import CacheError, open_cache

    p = argparse.ArgumentParser(prog="python -m mammosae_jax.fit_head", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="feature cache folder (needs a 'training' split)")
    p.add_argument("--label", required=True, help="Mass | Suspicious_Calcification | density")
    p.add_argument("--out", required=True, help="output head file (.safetensors)")
    p.add_argument("--C", type=float, default=FitConfig.C, help="inverse L2 regularisation strength (default 1.0)")
    p.add_argument("--max-iter", type=int, default=FitConfig.max_iter, help="lbfgs iterations (default 2000)")
    p.add_argument("--train-split", default="training", help="split to fit on (default: training)")
    p.add_argument("--test-split", default="test", help="split to report on if present (default: test)")
    a = p.parse_args(argv)
    try:
        cache = open_cache(a.cache)
        check_label(cache, a.label)
        pooled = cache.pooled()
        labels = cache.labels[a.label].to_numpy(np.int64)
        train = split_images(cache, a.train_split)
        head = fit_head_arrays(pooled[train], labels[train], a.label, FitConfig(C=a.C, max_iter=a.max_iter))
        save_head(a.out, head)
        print(f"wrote {a.out}: '{a.label}' head, K={head.n_outputs}, C={head.dim}")
        print(_summary(f"{a.train_split} ({len(train)} images)", labels[train], head_logits(head, pooled[train])))
        if a.test_split in set(cache.splits):
            test = cache.split_indices(a.test_split)
            print(_summary(f"{a.test_split} ({len(test)} images)", labels[test], head_logits(head, pooled[test])))
    except (ConceptError, HeadError, CacheError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
