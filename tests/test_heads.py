"""Head files (round trip, interop with the cache's writer), head fitting and its CLI."""
import numpy as np
import pytest
from safetensors.numpy import save_file
from sklearn.linear_model import LogisticRegression

from cache.head import Head as CacheHead
from cache.head import write_head
from helpers.concept_data import write_concept_cache
from mammosae_jax.cli import fit_head as fit_head_cli
from mammosae_jax.analysis.concept_data import ConceptError
from mammosae_jax.analysis.head_fit import FitConfig, fit_head_arrays
from mammosae_jax.analysis.heads import HeadError, head_logits, load_head, make_head, save_head
from mammosae_jax.analysis.metrics import auroc


def test_round_trip_and_interop_with_cache_writer(tmp_path):
    rng = np.random.default_rng(0)
    head = make_head(rng.normal(size=(4, 6)), rng.normal(size=4), "density", ["A", "B", "C", "D"])
    save_head(tmp_path / "h.safetensors", head)
    back = load_head(tmp_path / "h.safetensors")
    np.testing.assert_array_equal(back.weight, head.weight)
    np.testing.assert_array_equal(back.bias, head.bias)
    assert (back.label, back.class_names) == ("density", ("A", "B", "C", "D"))
    write_head(tmp_path / "c.safetensors", CacheHead(head.weight, head.bias, "density", list("ABCD")))
    np.testing.assert_array_equal(load_head(tmp_path / "c.safetensors").weight, head.weight)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_allclose(head_logits(head, x), x @ head.weight.T + head.bias, rtol=1e-6)


def test_bad_head_files_and_shapes(tmp_path):
    with pytest.raises(HeadError, match="head file not found"):
        load_head(tmp_path / "missing.safetensors")
    save_file({"weight": np.zeros((1, 3), np.float32)}, tmp_path / "nobias.safetensors", metadata={"label": "Mass"})
    with pytest.raises(HeadError, match="lacks bias, class_names"):
        load_head(tmp_path / "nobias.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HeadError, match="cannot read head file"):
        load_head(tmp_path / "junk.safetensors")
    with pytest.raises(HeadError, match="needs 4 class names"):
        make_head(np.zeros((4, 3)), np.zeros(4), "density", ["A"])
    head = make_head(np.zeros((1, 3)), [0.0], "Mass", [])
    assert head.class_names == ("0", "1")
    with pytest.raises(HeadError, match="expects 3-dim features but the features have 5"):
        head_logits(head, np.zeros((2, 5)))


def test_fit_folds_standardisation_into_a_raw_feature_head():
    rng = np.random.default_rng(1)
    x = rng.normal(loc=5.0, scale=[0.1, 3.0, 1.0, 10.0], size=(200, 4))
    y = (x[:, 1] / 3 - x[:, 3] / 10 + 0.3 * rng.normal(size=200) > 0.8).astype(int)
    head = fit_head_arrays(x, y, "Mass", FitConfig(C=0.5))
    mu, sd = x.mean(0), x.std(0)
    ref = LogisticRegression(C=0.5, class_weight="balanced", max_iter=2000).fit((x - mu) / sd, y)
    np.testing.assert_allclose(head_logits(head, x)[:, 0], ref.decision_function((x - mu) / sd), rtol=1e-4, atol=1e-4)
    assert auroc(y, head_logits(head, x)[:, 0]) > 0.95


def test_density_head_is_multinomial_and_needs_every_class():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(4), 30)
    x = rng.normal(size=(120, 5)) + np.eye(5)[y] * 3
    head = fit_head_arrays(x, y, "density")
    assert head.weight.shape == (4, 5) and head.class_names == ("A", "B", "C", "D")
    assert (head_logits(head, x).argmax(1) == y).mean() > 0.9
    with pytest.raises(ConceptError, match=r"needs every class 0..3 in the training split, got \[0, 1, 2\]"):
        fit_head_arrays(x[:90], y[:90], "density")


def test_fit_head_cli(tmp_path, capsys):
    cache = write_concept_cache(tmp_path / "cache")
    fit_head_cli.main(["--cache", str(cache), "--label", "Suspicious_Calcification", "--out", str(tmp_path / "h.safetensors")])
    out = capsys.readouterr().out
    assert "training (24 images): aucroc=" in out and "test (16 images): aucroc=" in out
    head = load_head(tmp_path / "h.safetensors")
    assert head.label == "Suspicious_Calcification" and head.weight.shape == (1, 16)
    with pytest.raises(SystemExit) as e:
        fit_head_cli.main(["--cache", str(cache), "--label", "Nipple", "--out", str(tmp_path / "x.safetensors")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: label 'Nipple' is not in the cache; it has Mass, Suspicious_Calcification, density"
    )
    assert not (tmp_path / "x.safetensors").exists()


def test_cross_validated_scores_equal_an_independent_grouped_cv():
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler
    from sklearn.linear_model import LogisticRegression

    from mammosae_jax.analysis.head_fit import cross_validated_scores

    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(30), 4)
    y = (rng.random(120) < 0.4).astype(np.int64)
    x = rng.normal(size=(120, 40)) + 0.8 * y[:, None] * (np.arange(40) < 2)
    scores = cross_validated_scores(x, y, groups, "Mass", grid=(1e-3, 1.0), folds=5)
    for C, got in scores.items():
        pred = np.empty(120)
        for train, held in GroupKFold(5).split(x, y, groups):
            scaler = StandardScaler().fit(x[train])
            model = LogisticRegression(C=C, class_weight="balanced", max_iter=2000).fit(scaler.transform(x[train]), y[train])
            pred[held] = model.decision_function(scaler.transform(x[held]))
        assert got == pytest.approx(roc_auc_score(y, pred), abs=1e-9)
    assert set(scores) == {1e-3, 1.0}


def test_fit_head_cli_auto_C_picks_the_best_cross_validated_C(tmp_path, capsys):
    from cache import open_cache
    from mammosae_jax.analysis.head_fit import cross_validated_scores

    cache = write_concept_cache(tmp_path / "c")
    fit_head_cli.main(["--cache", str(cache), "--label", "Mass", "--out", str(tmp_path / "h.safetensors")])
    out = capsys.readouterr().out
    c = open_cache(cache)
    train = c.split_indices("training")
    scores = cross_validated_scores(c.pooled()[train], c.labels["Mass"].to_numpy()[train],
                                    c.labels["patient_id"].to_numpy()[train], "Mass")
    assert f"chose {max(scores, key=scores.get):g}" in out
    with pytest.raises(SystemExit):
        fit_head_cli.main(["--cache", str(cache), "--label", "Mass", "--C", "-1", "--out", str(tmp_path / "x.safetensors")])
