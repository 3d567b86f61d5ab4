"""Metrics against scikit-learn, including ties and degenerate inputs."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from mammosae_jax.analysis.metrics import (
    MetricsError,
    auroc,
    average_precision,
    binary_metrics,
    head_metrics,
    multiclass_metrics,
)


def _sklearn_binary(y, s):
    pred = (1 / (1 + np.exp(-s)) >= 0.5).astype(int)
    return (
        roc_auc_score(y, s),
        average_precision_score(y, s),
        precision_score(y, pred, zero_division=0),
        recall_score(y, pred, zero_division=0),
        f1_score(y, pred, zero_division=0),
    )


def test_binary_metrics_match_sklearn_on_many_vectors_with_ties():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.1).astype(int)
    y[:2] = [0, 1]
    # rounded scores create many ties; a column of equal scores is the k=0 intervention
    scores = np.round(rng.normal(size=(6, 300)) + y, 1)
    scores[0] = -0.3
    got = binary_metrics(y, scores)
    for i in range(len(scores)):
        want = _sklearn_binary(y, scores[i])
        np.testing.assert_allclose([m[i] for m in got], want, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(-3, 3)), min_size=2, max_size=40).filter(
        lambda v: len({a for a, _ in v}) == 2
    )
)
def test_auroc_and_ap_match_sklearn_property(pairs):
    y = np.array([a for a, _ in pairs])
    s = np.array([b for _, b in pairs], float) / 2
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_constant_scores_give_half_auroc_and_prevalence_auprc():
    y = np.array([0] * 97 + [1] * 3)
    m = binary_metrics(y, np.full(100, -2.0))
    assert m.aucroc == 0.5
    assert m.auprc == pytest.approx(0.03)
    assert (m.precision, m.recall, m.f1) == (0.0, 0.0, 0.0)  # nothing predicted positive


def test_single_class_labels_raise():
    with pytest.raises(MetricsError, match="need both classes; the 5 labels are all 1"):
        auroc(np.ones(5, int), np.arange(5.0))
    with pytest.raises(MetricsError, match="0/1"):
        auroc(np.array([0, 2, 1]), np.arange(3.0))
    with pytest.raises(MetricsError, match="NaN"):
        auroc(np.array([0, 1]), np.array([0.0, np.nan]))


def test_multiclass_matches_sklearn_including_absent_class():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=80)  # class 3 never present
    logits = rng.normal(size=(5, 80, 4)) + np.eye(4)[y] * 1.5
    got = multiclass_metrics(y, logits)
    for i in range(5):
        pred = logits[i].argmax(1)
        assert got.accuracy[i] == pytest.approx(accuracy_score(y, pred))
        want_f1 = f1_score(y, pred, labels=[0, 1, 2, 3], average="macro", zero_division=0)
        assert got.macro_f1[i] == pytest.approx(want_f1)


def test_head_metrics_dispatches_on_outputs():
    y = np.array([0, 1, 1, 0])
    logits = np.array([[-1.0], [2.0], [0.5], [0.1]])
    assert head_metrics(y, logits).aucroc == 1.0
    assert head_metrics(y, np.concatenate([-logits, logits], 1)).accuracy == 0.75
