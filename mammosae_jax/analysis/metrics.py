"""Classification metrics for concept heads, exact and vectorised over many score vectors.

Binary: AUROC (headline), AUPRC (average precision, the step-wise sum used by scikit-learn),
precision / recall / F1 of the decision ``sigmoid(logit) >= 0.5`` (i.e. ``logit >= 0``), with 0
where a ratio has an empty denominator (scikit-learn's ``zero_division=0``).
Multi-class (density): accuracy of the argmax and macro F1 over the classes.

Every function accepts scores of shape ``(N,)`` or ``(M, N)`` (M score vectors on the same N
labels, e.g. one per intervention) and ties are handled exactly as scikit-learn does:

* AUROC is the Mann-Whitney statistic with mid-ranks, so all-equal scores give exactly 0.5.
* AUPRC sums ``(R_n - R_{n-1}) * P_n`` over the *distinct* thresholds, so all-equal scores give
  the positive rate.

Degenerate input: labels with a single class make AUROC/AUPRC undefined; these functions raise
``MetricsError`` (scikit-learn warns and returns NaN), so a sweep never reports a silent NaN.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata


class MetricsError(ValueError):
    """Labels or scores for which a metric is undefined."""


class BinaryMetrics(NamedTuple):
    """Binary metrics; fields are floats, or ``(M,)`` arrays for ``(M, N)`` scores."""

    aucroc: np.ndarray | float
    auprc: np.ndarray | float
    precision: np.ndarray | float
    recall: np.ndarray | float
    f1: np.ndarray | float


class MulticlassMetrics(NamedTuple):
    """Multi-class metrics; floats, or ``(M,)`` arrays for ``(M, N, K)`` logits."""

    accuracy: np.ndarray | float
    macro_f1: np.ndarray | float


def _binary_labels(labels: np.ndarray) -> np.ndarray:
    y_N = np.asarray(labels)
    if y_N.ndim != 1:
        raise MetricsError(f"labels must be 1-D, got shape {y_N.shape}")
    if not np.isin(y_N, (0, 1)).all():
        raise MetricsError(f"binary labels must be 0/1, got values {np.unique(y_N)[:10].tolist()}")
    n_pos = int(y_N.sum())
    if n_pos == 0 or n_pos == len(y_N):
        raise MetricsError(
            f"AUROC/AUPRC need both classes; the {len(y_N)} labels are all {int(y_N[0]) if len(y_N) else '-'}"
        )
    return y_N.astype(bool)


def _as_2d(scores: np.ndarray, n: int) -> tuple[np.ndarray, bool]:
    s = np.asarray(scores, dtype=np.float64)
    single = s.ndim == 1
    s_MN = s[None] if single else s
    if s_MN.ndim != 2 or s_MN.shape[1] != n:
        raise MetricsError(f"scores must have shape (N,) or (M, N) with N={n}, got {np.shape(scores)}")
    if not np.isfinite(s_MN).all():
        raise MetricsError("scores contain NaN or inf")
    return s_MN, single


def _unwrap(x: np.ndarray, single: bool):
    return float(x[0]) if single else x


def auroc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray | float:
    """Area under the ROC curve (mid-rank Mann-Whitney form; equals ``roc_auc_score``)."""
    y_N = _binary_labels(labels)
    s_MN, single = _as_2d(scores, len(y_N))
    ranks_MN = rankdata(s_MN, method="average", axis=1)
    n_pos = int(y_N.sum())
    n_neg = len(y_N) - n_pos
    u_M = ranks_MN[:, y_N].sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    return _unwrap(u_M / (n_pos * n_neg), single)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> np.ndarray | float:
    """Average precision over distinct thresholds (equals ``average_precision_score``)."""
    y_N = _binary_labels(labels)
    s_MN, single = _as_2d(scores, len(y_N))
    n = len(y_N)
    order_MN = np.argsort(-s_MN, axis=1, kind="stable")
    s_sorted = np.take_along_axis(s_MN, order_MN, axis=1)
    y_sorted = y_N[order_MN]
    tp_MN = np.cumsum(y_sorted, axis=1)
    precision_MN = tp_MN / np.arange(1, n + 1)
    # Every member of a tie group is scored with the precision at the group's last position
    # (the threshold equal to their score); find that position with a reversed running min.
    is_end = np.ones_like(s_sorted, dtype=bool)
    is_end[:, :-1] = s_sorted[:, 1:] != s_sorted[:, :-1]
    end_idx = np.where(is_end, np.arange(n), n)
    end_idx = np.minimum.accumulate(end_idx[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(precision_MN, end_idx, axis=1)
    ap_M = (y_sorted * precision_at_end).sum(axis=1) / y_N.sum()
    return _unwrap(ap_M, single)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def threshold_metrics(labels: np.ndarray, logits: np.ndarray):
    """Precision, recall and F1 of ``logit >= 0`` (``sigmoid >= 0.5``); 0 for empty denominators."""
    y_N = np.asarray(labels).astype(bool)
    s_MN, single = _as_2d(logits, len(y_N))
    pred_MN = s_MN >= 0.0
    tp = (pred_MN & y_N).sum(axis=1)
    n_pred = pred_MN.sum(axis=1)
    n_pos = y_N.sum()
    precision = _ratio(tp, n_pred)
    recall = _ratio(tp, np.full_like(tp, n_pos))
    f1 = _ratio(2 * tp, n_pred + n_pos)
    return tuple(_unwrap(v.astype(np.float64), single) for v in (precision, recall, f1))


def binary_metrics(labels: np.ndarray, logits: np.ndarray) -> BinaryMetrics:
    """All binary metrics of logits ``(N,)`` or ``(M, N)`` against 0/1 labels ``(N,)``."""
    precision, recall, f1 = threshold_metrics(labels, logits)
    return BinaryMetrics(
        aucroc=auroc(labels, logits),
        auprc=average_precision(labels, logits),
        precision=precision,
        recall=recall,
        f1=f1,
    )


def multiclass_metrics(labels: np.ndarray, logits: np.ndarray, n_classes: int | None = None) -> MulticlassMetrics:
    """Accuracy and macro F1 of ``argmax(logits)`` for logits ``(N, K)`` or ``(M, N, K)``.

    Macro F1 averages over the ``K`` classes; a class that is neither present nor predicted scores
    F1 = 0 (scikit-learn's ``labels=range(K)``, ``zero_division=0``).
    """
    y_N = np.asarray(labels).astype(np.int64)
    z = np.asarray(logits, dtype=np.float64)
    single = z.ndim == 2
    z_MNK = z[None] if single else z
    if z_MNK.ndim != 3 or z_MNK.shape[1] != len(y_N):
        raise MetricsError(f"logits must have shape (N, K) or (M, N, K) with N={len(y_N)}, got {z.shape}")
    k = n_classes or z_MNK.shape[2]
    if y_N.min(initial=0) < 0 or y_N.max(initial=0) >= k:
        raise MetricsError(f"labels must lie in 0..{k - 1}, got {np.unique(y_N).tolist()}")
    pred_MN = z_MNK.argmax(axis=2)
    accuracy = (pred_MN == y_N).mean(axis=1)
    pred_KMN = pred_MN[None] == np.arange(k)[:, None, None]
    true_KN = y_N[None] == np.arange(k)[:, None]
    tp_KM = (pred_KMN & true_KN[:, None, :]).sum(axis=2)
    denom_KM = pred_KMN.sum(axis=2) + true_KN.sum(axis=1)[:, None]
    f1_KM = _ratio(2 * tp_KM, denom_KM)
    return MulticlassMetrics(_unwrap(accuracy, single), _unwrap(f1_KM.mean(axis=0), single))


def head_metrics(labels: np.ndarray, logits: np.ndarray) -> BinaryMetrics | MulticlassMetrics:
    """Metrics for a head's logits ``(..., N, K)``: binary when ``K == 1``, multi-class otherwise."""
    z = np.asarray(logits)
    if z.shape[-1] == 1:
        return binary_metrics(labels, z[..., 0])
    return multiclass_metrics(labels, z)


def metrics_dict(m: BinaryMetrics | MulticlassMetrics, index: int | None = None) -> dict[str, float]:
    """Plain-float dict of one set of metrics (``index`` selects one of M vectorised results)."""
    return {k: float(v if index is None else v[index]) for k, v in m._asdict().items()}
