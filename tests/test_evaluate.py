"""Head evaluation on raw features and through the SAE, against a direct per-position computation."""
import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from helpers import concept_data as cf
from cache import open_cache
from mammosae_jax.cli import evaluate as evaluate_cli
from mammosae_jax.analysis.evaluation import evaluate
from mammosae_jax.analysis.heads import head_from_cache, load_head, make_head, save_head


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return cf.build(tmp_path_factory.mktemp("eval"))


def _direct(cache, sae, images):
    """Per-position reference: encode, decode every position, pool; plus all-position statistics."""
    x = np.stack([cache.feature_map(int(i)) for i in images]).reshape(len(images), -1, cache.dim)
    z = np.asarray(sae.encode(x.reshape(-1, cache.dim)))
    xhat = np.asarray(sae.decode(z)).reshape(x.shape)
    flat = x.reshape(-1, cache.dim)
    active = z > 0
    stats = {
        "mse": np.mean((xhat - x) ** 2),
        "fvu": np.sum((xhat - x) ** 2) / np.sum((flat - flat.mean(0)) ** 2),
        "l0": active.sum(1).mean(),
        "dead_fraction": (~active.any(0)).mean(),
        "dense_fraction": (active.mean(0) > 0.1).mean(),
        "n_ever_active": active.any(0).sum(),
        "n_tokens": len(flat),
    }
    return xhat.mean(1), stats


def test_evaluate_matches_direct_computation(fx):
    cache = open_cache(fx.cache_path)
    head = head_from_cache(cache)
    ev = evaluate(cache, fx.sae, head, head.label, split="test")
    test = cache.split_indices("test")
    pooled_xhat, stats = _direct(cache, fx.sae, test)
    for name, want in stats.items():
        assert getattr(ev.reconstruction, name) == pytest.approx(want, rel=1e-5), name
    rows = cache.rows[cache.rows.image_index.isin(test)]
    pos = np.searchsorted(test, rows.image_index.to_numpy())
    y = rows[head.label].to_numpy()
    sae_logit = (pooled_xhat @ head.weight.T + head.bias)[:, 0]
    raw_logit = (cache.pooled()[test] @ head.weight.T + head.bias)[:, 0]
    row = ev.metrics["row"]
    assert row["n_units"] == len(rows) > len(test)
    assert row["sae"]["aucroc"] == pytest.approx(roc_auc_score(y, sae_logit[pos]), abs=1e-9)
    assert row["raw"]["aucroc"] == pytest.approx(roc_auc_score(y, raw_logit[pos]), abs=1e-9)
    assert row["sae+error"] == pytest.approx(row["raw"], abs=1e-6)  # x_hat + (x - x_hat) = x
    y_img = cache.labels[head.label].to_numpy()[test]
    assert ev.metrics["image"]["sae"]["aucroc"] == pytest.approx(roc_auc_score(y_img, sae_logit), abs=1e-9)
    assert ev.metrics["image"]["n_units"] == len(test)


def test_evaluate_cli_writes_json_and_table(fx, tmp_path, capsys):
    evaluate_cli.main(["--cache", str(fx.cache_path), "--sae", str(fx.sae_path), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Suspicious_Calcification / test / per row" in out and "reconstruction: mse=" in out
    data = json.loads((tmp_path / "evaluation_Suspicious_Calcification.json").read_text())
    assert set(data["metrics"]) == {"row", "image"}
    assert set(data["metrics"]["row"]["sae"]) == {"aucroc", "auprc", "precision", "recall", "f1"}
    assert data["reconstruction"]["n_tokens"] == 16 * 12
    # the values, not just the keys: the file holds what the direct computation gives
    cache = open_cache(fx.cache_path)
    head = head_from_cache(cache)
    test = cache.split_indices("test")
    pooled_xhat, stats = _direct(cache, fx.sae, test)
    for name, want in stats.items():
        assert data["reconstruction"][name] == pytest.approx(want, rel=1e-5), name
    y_img = cache.labels[head.label].to_numpy()[test]
    sae_logit = (pooled_xhat @ head.weight.T + head.bias)[:, 0]
    raw_logit = (cache.pooled()[test] @ head.weight.T + head.bias)[:, 0]
    image = data["metrics"]["image"]
    assert image["sae"]["aucroc"] == pytest.approx(roc_auc_score(y_img, sae_logit), abs=1e-9)
    assert image["raw"]["aucroc"] == pytest.approx(roc_auc_score(y_img, raw_logit), abs=1e-9)
    assert image["raw"]["auprc"] == pytest.approx(average_precision_score(y_img, raw_logit), abs=1e-9)
    assert image["raw"]["f1"] == pytest.approx(f1_score(y_img, raw_logit > 0), abs=1e-9)
    assert image["n_units"] == len(test) and image["n_positive"] == int(y_img.sum())


def test_density_head_reports_accuracy_and_macro_f1(fx, tmp_path, capsys):
    rng = np.random.default_rng(0)
    save_head(tmp_path / "d.safetensors", make_head(rng.normal(size=(4, cf.DIM)), np.zeros(4), "density", "ABCD"))
    evaluate_cli.main(["--cache", str(fx.cache_path), "--sae", str(fx.sae_path), "--head", str(tmp_path / "d.safetensors"),
                       "--per", "image", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "evaluation_density.json").read_text())
    assert set(data["metrics"]["image"]["raw"]) == {"accuracy", "macro_f1"}
    cache = open_cache(fx.cache_path)
    test = cache.split_indices("test")
    head = load_head(tmp_path / "d.safetensors")
    pred = np.argmax(cache.pooled()[test] @ head.weight.T + head.bias, axis=1)
    y = cache.labels["density"].to_numpy()[test]
    raw = data["metrics"]["image"]["raw"]
    assert raw["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-9)
    assert raw["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-9)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--label", "Nipple_Retraction"], "error: label 'Nipple_Retraction' is not in the cache; it has Mass, Suspicious_Calcification, density"),
        (["--head", "{bad_head}"], "error: head 'Mass' expects 5-dim features but the cache's features ("),
        (["--split", "validation"], "error: the cache has no 'validation' images; its splits are test, training"),
    ],
)
def test_cli_errors_are_one_line(fx, tmp_path, capsys, extra, message):
    save_head(tmp_path / "bad.safetensors", make_head(np.zeros((1, 5)), [0.0], "Mass", ["0", "1"]))
    extra = [e.replace("{bad_head}", str(tmp_path / "bad.safetensors")) for e in extra]
    with pytest.raises(SystemExit) as e:
        evaluate_cli.main(["--cache", str(fx.cache_path), "--sae", str(fx.sae_path), "--out", str(tmp_path), *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
