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


C_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)


def cross_validated_scores(pooled_NC: np.ndarray, labels_N: np.ndarray, groups_N: np.ndarray, label: str,
                           grid: tuple[float, ...] = C_GRID, folds: int = 5, max_iter: int = 2000) -> dict[float, float]:
    """Patient-grouped k-fold score of each C (AUROC for binary labels, accuracy for density)."""
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels_N, np.int64)
    n_groups = len(np.unique(groups_N))
    if n_groups < 2:
        raise ConceptError("choosing C by cross-validation needs images of at least 2 patients; pass --C")
    cv = GroupKFold(min(folds, n_groups))
    scores = {}
    for C in grid:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter))
        if n_classes_of(label) == 2:
            p = cross_val_predict(model, pooled_NC, y, groups=groups_N, cv=cv, method="decision_function")
            scores[C] = float(roc_auc_score(y, p))
        else:
            p = cross_val_predict(model, pooled_NC, y, groups=groups_N, cv=cv)
            scores[C] = float(accuracy_score(y, p))
    return scores


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
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
