"""Class-wise latent scores and the reference ranking file format."""
import json

import numpy as np
import pytest

from helpers.figure_data import assert_png_drawn, record_figures
from mammosae_jax.viz import concept_figures
from mammosae_jax.viz.concept_figures import plot_class_means
from mammosae_jax.analysis.ranking import (
    RankingError,
    class_margins,
    class_means,
    class_scores,
    make_ranking,
    rank_positions,
    read_ranking,
    unit_weights,
    write_ranking,
)
from helpers.shared_data import REFERENCE, needs_reference

LABEL = "Suspicious_Calcification"


def _rows_fixture(seed=0):
    rng = np.random.default_rng(seed)
    zbar = rng.exponential(size=(7, 12)).astype(np.float32) * (rng.random((7, 12)) < 0.5)
    row_to_image = np.array([0, 0, 1, 2, 3, 3, 3, 4, 5, 6, 6])
    row_label = np.array([0, 1, 0, 1, 0, 0, 1, 0, 0, 1, 0])
    return zbar, row_to_image, row_label


def test_row_scores_equal_explicit_per_row_means():
    zbar, row_to_image, row_label = _rows_fixture()
    stats = class_means(zbar, unit_weights(row_label, row_to_image, len(zbar), 2))
    per_row = zbar[row_to_image].astype(np.float64)  # the reference materialised one vector per row
    for c in (0, 1):
        want_mean = per_row[row_label == c].mean(0)
        np.testing.assert_allclose(class_scores(stats, "mean")[c], want_mean, rtol=1e-12)
        np.testing.assert_allclose(class_scores(stats, "centered")[c], want_mean - per_row.mean(0), rtol=1e-10, atol=1e-12)


def test_image_units_use_max_label_per_image():
    zbar, row_to_image, row_label = _rows_fixture(1)
    image_label = np.zeros(len(zbar), int)
    np.maximum.at(image_label, row_to_image, row_label)
    stats = class_means(zbar, unit_weights(image_label, np.arange(len(zbar)), len(zbar), 2))
    np.testing.assert_allclose(stats.means_Cn[1], zbar[image_label == 1].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(stats.counts_C, [np.sum(image_label == 0), np.sum(image_label == 1)])


def test_centered_binary_scores_have_the_released_ratio():
    """For two classes, centered score_0 = -p/(1-p) * score_1 with p the positive rate."""
    zbar, row_to_image, row_label = _rows_fixture(2)
    s = class_scores(class_means(zbar, unit_weights(row_label, row_to_image, len(zbar), 2)), "centered")
    p = row_label.mean()
    np.testing.assert_allclose(s[0], -p / (1 - p) * s[1], atol=1e-12)


def test_attribution_is_the_class_excess_of_each_latents_logit_contribution():
    zbar, row_to_image, row_label = _rows_fixture(3)
    u = np.random.default_rng(3).normal(size=(zbar.shape[1], 1))
    stats = class_means(zbar, unit_weights(row_label, row_to_image, len(zbar), 2))
    got = class_scores(stats, "attribution", u)
    contrib = zbar[row_to_image].astype(np.float64) * u[:, 0]  # latent j's logit contribution, per row
    np.testing.assert_allclose(got[1], contrib[row_label == 1].mean(0) - contrib.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[0], -(contrib[row_label == 0].mean(0) - contrib.mean(0)), rtol=1e-10, atol=1e-12)


def test_attribution_margins_of_a_multiclass_head():
    u = np.array([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 4.0]])
    np.testing.assert_allclose(class_margins(u, 4), [[-2, -1, 0, 3], [-1, -1, -1, 3]])
    with pytest.raises(RankingError, match="4 logits but the label has 2 classes"):
        class_margins(u, 2)
    stats = class_means(np.ones((2, 2)), np.eye(2))
    with pytest.raises(RankingError, match="needs the concept head"):
        class_scores(stats, "attribution")


def test_absent_class_and_bad_labels_are_refused():
    zbar, row_to_image, _ = _rows_fixture()
    with pytest.raises(RankingError, match=r"no units of class \[1\]"):
        class_means(zbar, unit_weights(np.zeros(len(row_to_image), int), row_to_image, len(zbar), 2))
    with pytest.raises(RankingError, match=r"labels must lie in 0..1"):
        unit_weights(np.array([0, 2]), np.array([0, 1]), 2, 2)
    with pytest.raises(RankingError, match="unknown score 'median'"):
        class_scores(class_means(zbar, np.ones((2, len(zbar)))), "median")


def test_write_read_round_trip_with_and_without_suffix(tmp_path):
    imp = np.array([[0.5, 2.0, 0.5, -1.0], [0.0, -3.0, 1.0, 1.0]], np.float32)
    ranking = make_ranking("Mass", imp)
    np.testing.assert_array_equal(ranking.order_Cn, [[1, 0, 2, 3], [2, 3, 0, 1]])  # ties keep index order
    np.testing.assert_array_equal(rank_positions(ranking), [[1, 0, 2, 3], [2, 3, 0, 1]])
    paths = write_ranking(tmp_path / "a", ranking)
    assert [p.name for p in paths] == ["top_k_concepts_class=0_Mass.json", "top_k_concepts_class=1_Mass.json"]
    assert json.loads(paths[0].read_text())[0] == {"rank": 0, "index": 1, "importance": 2.0}
    back = read_ranking(tmp_path / "a", "Mass", n_latents=4, n_classes=2)
    np.testing.assert_array_equal(back.order_Cn, ranking.order_Cn)
    np.testing.assert_array_equal(back.importance_Cn, imp)
    write_ranking(tmp_path / "a", ranking, suffix="finetuned")
    with pytest.raises(RankingError, match=r"several suffixes \('', 'finetuned'\)"):
        read_ranking(tmp_path / "a", "Mass")
    assert read_ranking(tmp_path / "a", "Mass", suffix="finetuned").n_latents == 4
    with pytest.raises(RankingError, match="the ranking covers 4 latents but the SAE has 8"):
        read_ranking(tmp_path / "a", "Mass", suffix="", n_latents=8)
    with pytest.raises(RankingError, match=r"cover classes \[0, 1\], expected \[0, 1, 2, 3\]"):
        read_ranking(tmp_path / "a", "Mass", suffix="", n_classes=4)
    with pytest.raises(RankingError, match="no ranking files top_k_concepts_class=\\*_density"):
        read_ranking(tmp_path / "a", "density")


def test_malformed_file_is_refused(tmp_path):
    (tmp_path / "top_k_concepts_class=0_Mass.json").write_text(json.dumps([{"rank": 0, "index": 1, "importance": 1.0}]))
    with pytest.raises(RankingError, match="cover 0..0 exactly once"):
        read_ranking(tmp_path, "Mass")


@needs_reference
def test_released_ranking_reads_with_the_spec_top_latents():
    ranking = read_ranking(REFERENCE, LABEL, n_latents=16384, n_classes=2)
    assert ranking.order_Cn[1, :2].tolist() == [13867, 15699]
    assert ranking.order_Cn[1, :7].tolist() == [13867, 15699, 15892, 15946, 2971, 13093, 2559]
    assert ranking.order_Cn[0, 0] == 1781
    assert ranking.importance_Cn[1, 13867] == pytest.approx(10.87456226348877)
    with pytest.raises(RankingError, match="the ranking covers 16384 latents but the SAE has 64"):
        read_ranking(REFERENCE, LABEL, n_latents=64)


@needs_reference
def test_released_files_are_centered_scores_over_16384_rows_with_428_positives():
    imp = read_ranking(REFERENCE, LABEL).importance_Cn.astype(np.float64)
    p = 428 / 16384
    np.testing.assert_allclose(imp[0], -p / (1 - p) * imp[1], rtol=2e-4, atol=1e-7)


def test_class_means_figure_is_written(tmp_path, monkeypatch):
    zbar, row_to_image, row_label = _rows_fixture()
    stats = class_means(zbar, unit_weights(row_label, row_to_image, len(zbar), 2))
    ranking = make_ranking("Mass", class_scores(stats, "centered"))
    saved = record_figures(monkeypatch, concept_figures)
    plot_class_means(stats, ranking, tmp_path / "fig.png", top=5)
    assert_png_drawn(tmp_path / "fig.png", size=(600, 520))  # figsize (6, 2.6 per class) at 100 dpi
    axes = saved.axes_of(tmp_path / "fig.png")
    assert [ax.get_title() for ax in axes] == [f"Mass: top 5 latents of class {c}" for c in (0, 1)]
    for c, ax in enumerate(axes):
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(j) for j in ranking.order_Cn[c, :5]]
        assert len(ax.patches) == 5 * 2  # one bar per (latent, class)
