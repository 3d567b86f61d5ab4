"""concepts + intervene CLIs end to end on a tiny cache, the identity checked against --exact."""
import csv
import json

import numpy as np
import pytest

from helpers import concept_data as cf
from cache import open_cache
from mammosae_jax.cli import concepts as concepts_cli
from mammosae_jax.cli import intervene as intervene_cli
from mammosae_jax.analysis.evaluation import evaluate
from mammosae_jax.analysis.heads import head_from_cache
from mammosae_jax.analysis.ranking import read_ranking
from helpers.figure_data import assert_png_drawn, record_figures
from mammosae_jax.viz import concept_figures
from helpers.shared_data import REFERENCE, require_reference

LABEL = "Suspicious_Calcification"


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interv")
    fixture = cf.build(tmp)
    concepts_cli.main(["--cache", str(fixture.cache_path), "--sae", str(fixture.sae_path), "--label", LABEL,
                       "--out", str(tmp / "ranking")])
    return fixture, tmp / "ranking"


def test_concepts_cli_ranks_by_centered_row_means(fx):
    fixture, ranking_dir = fx
    cache = open_cache(fixture.cache_path)
    train = cache.split_indices("training")
    zbar = np.stack([np.asarray(fixture.sae.encode(cache.feature_map(int(i)).reshape(-1, cf.DIM))).mean(0) for i in train])
    rows = cache.rows[cache.rows.image_index.isin(train)]
    z_rows = zbar[np.searchsorted(train, rows.image_index.to_numpy())].astype(np.float64)
    y = rows[LABEL].to_numpy()
    ranking = read_ranking(ranking_dir, LABEL, n_latents=cf.N_LATENTS, n_classes=2)
    for c in (0, 1):
        want = z_rows[y == c].mean(0) - z_rows.mean(0)
        np.testing.assert_allclose(ranking.importance_Cn[c], want, rtol=1e-4, atol=1e-6)
        assert set(ranking.order_Cn[c, :5]) == set(np.argsort(-want, kind="stable")[:5])
    assert_png_drawn(ranking_dir / f"class_means_{LABEL}.png")


def test_concepts_cli_attribution_ranks_by_the_heads_use_of_each_latent(fx, tmp_path, capsys):
    fixture, _ = fx
    out = tmp_path / "attr"
    concepts_cli.main(["--cache", str(fixture.cache_path), "--sae", str(fixture.sae_path), "--label", LABEL,
                       "--score", "attribution", "--per", "image", "--out", str(out)])
    cache = open_cache(fixture.cache_path)
    train = cache.split_indices("training")
    zbar = np.stack([np.asarray(fixture.sae.encode(cache.feature_map(int(i)).reshape(-1, cf.DIM))).mean(0) for i in train])
    head = head_from_cache(cache)
    decoder = np.asarray(fixture.sae.decode(np.eye(cf.N_LATENTS, dtype=np.float32))) - np.asarray(
        fixture.sae.decode(np.zeros((1, cf.N_LATENTS), np.float32)))
    u = decoder @ np.asarray(head.weight)[0]  # logit per unit of each latent
    contrib = zbar.astype(np.float64) * u
    y = cache.labels[LABEL].to_numpy()[train]
    ranking = read_ranking(out, LABEL, n_latents=cf.N_LATENTS, n_classes=2)
    np.testing.assert_allclose(ranking.importance_Cn[1], contrib[y == 1].mean(0) - contrib.mean(0), rtol=1e-4, atol=1e-6)
    with pytest.raises(SystemExit):
        concepts_cli.main(["--cache", str(fixture.cache_path), "--sae", str(fixture.sae_path), "--label", "Mass",
                           "--score", "attribution", "--out", str(tmp_path / "bad")])
    assert "error: the head is for 'Suspicious_Calcification', not 'Mass'" in capsys.readouterr().err


def _run(args, capsys):
    intervene_cli.main(args)
    return capsys.readouterr().out


def test_intervene_default_exact_and_keep_error(fx, tmp_path, capsys, monkeypatch):
    saved = record_figures(monkeypatch, concept_figures)
    fixture, ranking_dir = fx
    base = ["--cache", str(fixture.cache_path), "--sae", str(fixture.sae_path), "--ranking", str(ranking_dir)]
    _run([*base, "--out", str(tmp_path / "fast")], capsys)
    on = json.loads((tmp_path / "fast" / f"topk_on_{LABEL}.json").read_text())
    off = json.loads((tmp_path / "fast" / f"topk_off_{LABEL}.json").read_text())
    assert [r["k"] for r in on] == [0, 1, 5, 10, 48]  # the default list clipped to 48 latents
    assert set(on[0]) == {"k", "n_latents_kept_or_removed", "aucroc", "auprc", "precision", "recall", "f1"}
    assert on[0]["aucroc"] == 0.5 and on[0]["n_latents_kept_or_removed"] == 0
    assert on[-1]["n_latents_kept_or_removed"] == 48 and off[-1]["aucroc"] == 0.5
    cache = open_cache(fixture.cache_path)
    sae_only = evaluate(cache, fixture.sae, head_from_cache(cache), LABEL, pers=("row",)).metrics["row"]["sae"]
    assert on[-1]["aucroc"] == pytest.approx(sae_only["aucroc"], abs=1e-12)
    assert off[0] == {**on[-1], "k": 0, "n_latents_kept_or_removed": 0}

    out = _run([*base, "--exact", "--out", str(tmp_path / "exact")], capsys)
    summary = json.loads((tmp_path / "exact" / f"intervene_summary_{LABEL}.json").read_text())
    assert summary["max_abs_diff_exact"] < 1e-5 and "--exact: max |identity - exact|" in out
    exact_on = json.loads((tmp_path / "exact" / f"topk_on_{LABEL}.json").read_text())
    assert [r["aucroc"] for r in exact_on] == pytest.approx([r["aucroc"] for r in on], abs=1e-9)

    _run([*base, "--keep-error", "--mode", "on", "--k", "0,48,100", "--out", str(tmp_path / "err")], capsys)
    assert not (tmp_path / "err" / f"topk_off_{LABEL}.json").exists()
    err_on = json.loads((tmp_path / "err" / f"topk_on_{LABEL}.json").read_text())
    assert [r["k"] for r in err_on] == [0, 48]
    raw = summary["reference"]["raw"]
    assert err_on[-1]["aucroc"] == pytest.approx(raw["aucroc"], abs=1e-9)  # all latents + error = raw features

    with (tmp_path / "fast" / f"single_latent_ablation_{LABEL}.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == cf.N_LATENTS and set(table[0]) == {"latent", "mean_dlogit_class=0", "mean_dlogit_class=1"}
    rgb = assert_png_drawn(tmp_path / "fast" / f"topk_{LABEL}.png", size=(600, 400))  # figsize (6, 4) at 100 dpi
    (ax,) = saved.axes_of(tmp_path / "fast" / f"topk_{LABEL}.png")
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_xscale()) == ("k (latents per class)", "aucroc", "symlog")
    assert ax.get_title() == f"{LABEL}: top-k latent interventions"
    assert len(ax.get_lines()) == 4  # on, off, and the raw / SAE-only reference lines


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ranking", str(REFERENCE)], "error: the ranking covers 16384 latents but the SAE has 48"),
        (["--label", "Mass"], "error: no ranking files top_k_concepts_class=*_Mass*.json in"),
        (["--k", "1,x"], "error: --k must be comma-separated integers, got '1,x'"),
    ],
)
def test_intervene_errors(fx, tmp_path, capsys, extra, message):
    fixture, ranking_dir = fx
    if str(REFERENCE) in extra:
        require_reference()
    args = ["--cache", str(fixture.cache_path), "--sae", str(fixture.sae_path), "--ranking", str(ranking_dir),
            "--out", str(tmp_path), *extra]
    with pytest.raises(SystemExit) as e:
        intervene_cli.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_density_interventions_report_accuracy_and_macro_f1(fx, tmp_path):
    from mammosae_jax.analysis.head_fit import fit_head_arrays
    from mammosae_jax.analysis.interventions import exact_logits, sweep_masks
    from mammosae_jax.analysis.intervention_run import run_interventions
    from mammosae_jax.analysis.metrics import multiclass_metrics
    from mammosae_jax.analysis.ranking import make_ranking

    fixture, _ = fx
    cache = open_cache(fixture.cache_path)
    train, test = cache.split_indices("training"), cache.split_indices("test")
    head = fit_head_arrays(cache.pooled()[train], cache.labels["density"].to_numpy()[train], "density")
    ranking = make_ranking("density", np.random.default_rng(0).normal(size=(4, cf.N_LATENTS)))
    res = run_interventions(cache, fixture.sae, head, ranking, "density", ks=(0, 3, 48), per="image")
    assert set(res.records["on"][0]) == {"k", "n_latents_kept_or_removed", "accuracy", "macro_f1"}
    assert res.ablation_nC.shape == (cf.N_LATENTS, 4)
    masks, *_ = sweep_masks(ranking, (0, 3, 48))
    ref = exact_logits(cache, fixture.sae, head, masks, test)  # independent route: decode every position
    want = multiclass_metrics(cache.labels["density"].to_numpy()[test], ref)
    got = [r["macro_f1"] for mode in ("on", "off") for r in res.records[mode]]
    np.testing.assert_allclose(got, want.macro_f1, atol=1e-12)
    assert res.records["on"][-1]["accuracy"] == pytest.approx(res.reference["sae"]["accuracy"])
