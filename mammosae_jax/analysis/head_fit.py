"""Fit a concept head on pooled training features: class-balanced logistic regression on
standardised features, folded back into ``logit = W @ pooled + b``; C chosen by patient-grouped
cross-validation. The command is `mammosae_jax.cli.fit_head`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from sklearn.linear_model import LogisticRegression

from mammosae_jax.analysis.concept_data import ConceptError, class_names_of, n_classes_of
from mammosae_jax.analysis.heads import Head, make_head


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


def check_classes(labels_N: np.ndarray, label: str) -> None:
    """ConceptError unless every class of `label` occurs (a one-class label cannot train a head)."""
    n_cls = n_classes_of(label)
    present = np.unique(np.asarray(labels_N, np.int64))
    if not np.array_equal(present, np.arange(n_cls)):
        raise ConceptError(f"fitting a '{label}' head needs every class 0..{n_cls - 1} in the training split, "
                           f"got {present.tolist()}")


def fit_head_arrays(pooled_NC: np.ndarray, labels_N: np.ndarray, label: str, config: FitConfig = FitConfig()) -> Head:
    """Fit a head on pooled features; returns W, b acting on the raw (unstandardised) features."""
    x = np.asarray(pooled_NC, np.float64)
    y = np.asarray(labels_N, np.int64)
    check_classes(y, label)
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
    check_classes(labels_N, label)
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
