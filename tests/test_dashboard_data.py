"""The data the dashboard embeds, against a reference computed here from the SAE, the cache and
the stage files (rankings, heads, intervention and localisation outputs) of a tiny run."""
from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cache import open_cache
from mammosae_jax.analysis.heads import load_head
from mammosae_jax.dashboard.build import DashboardConfig, collect
from mammosae_jax.dashboard.encode import script_json
from mammosae_jax.dashboard.page import render
from mammosae_jax.models.sae_io import load_sae
from tests.helpers.dashboard_data import CONCEPTS, VISUALIZED, shared_run

TOP = 3
LOCALISE = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    run = shared_run(tmp_path_factory)
    cache, sae = open_cache(run.cache), load_sae(run.run)
    maps = np.stack([cache.feature_map(i) for i in range(len(cache))])  # [N, H, W, C]
    z = np.asarray(sae.encode(maps.reshape(-1, maps.shape[-1]))).reshape(*maps.shape[:3], -1)  # [N, H, W, n]
    data = collect(DashboardConfig(run=str(run.run), cache=str(run.cache), out=str(run.out / "x.html"),
                                   top_images=TOP, localise_top=LOCALISE, progress=False))
    return run, cache, sae, z, data


def _close(a, b, rel=6e-5, abs_=1e-7):  # the page keeps 5 significant digits
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rel, atol=abs_)


def test_rows_are_the_firing_latents_with_their_frequency_mean_and_max(world):
    _, cache, sae, z, data = world
    zmax_Nn, zbar_Nn = z.max(axis=(1, 2)), z.mean(axis=(1, 2))
    firing = np.flatnonzero(zmax_Nn.max(axis=0) > 0)
    assert 0 < len(firing) < sae.n_latents  # the fixture has silent latents
    assert data["table"]["id"] == firing.tolist()
    assert data["meta"]["n_firing"] == len(firing) and len(data["hist"]["counts"]) == len(firing)
    assert all(len(col) == len(firing) for col in data["table"].values())
    _close(data["table"]["freq"], (zbar_Nn[:, firing] > 0).mean(axis=0))
    _close(data["table"]["mean"], zbar_Nn[:, firing].mean(axis=0))
    _close(data["table"]["max"], zmax_Nn.max(axis=0)[firing])
    counts = np.asarray(data["hist"]["counts"])
    assert counts.sum(axis=1).tolist() == (zbar_Nn[:, firing] > 0).sum(axis=0).tolist()
    _close(data["hist"]["max"], zbar_Nn[:, firing].max(axis=0))


def test_class_scores_and_means_match_the_ranking_files_and_the_row_table(world):
    run, cache, _, z, data = world
    firing = np.asarray(data["table"]["id"])
    zbar_Nn = z.mean(axis=(1, 2)).astype(np.float64)
    rows = cache.rows
    train = rows[rows["image_index"].isin(cache.split_indices("training"))]
    for label in CONCEPTS:
        records = json.loads((run.out / "ranking" / label / f"top_k_concepts_class=1_{label}.json").read_text())
        importance = {r["index"]: r["importance"] for r in records}
        _close(data["table"][f"score:{label}"], [importance[j] for j in firing])
        for c in (0, 1):
            images = train.loc[train[label] == c, "image_index"].to_numpy()
            _close(data["table"][f"m{c}:{label}"], zbar_Nn[images][:, firing].mean(axis=0), abs_=1e-6)


def test_single_latent_attribution_is_the_auroc_with_that_latent_removed(world):
    run, cache, sae, z, data = world
    firing = np.asarray(data["table"]["id"])
    zbar_Nn = z.mean(axis=(1, 2)).astype(np.float64)
    w = sae.weights()
    rows = cache.rows
    test = rows[rows["image_index"].isin(cache.split_indices("test"))]
    changed = 0
    for label in CONCEPTS:
        head = load_head(run.out / "heads" / f"{label}.safetensors")
        y, img = test[label].to_numpy(), test["image_index"].to_numpy()

        def auc(mask_n):
            pooled = (zbar_Nn[img] * mask_n) @ w.W_dec + w.b_dec
            return roc_auc_score(y, pooled @ head.weight[0] + head.bias[0])

        full = auc(np.ones(sae.n_latents))
        summary = json.loads((run.out / "interventions" / f"intervene_summary_{label}.json").read_text())
        assert data["overview"]["concepts"][label]["sae_auroc_test_rows"] == pytest.approx(
            summary["reference"]["sae"]["aucroc"], abs=1e-12)
        assert full == pytest.approx(summary["reference"]["sae"]["aucroc"], abs=1e-6)
        expected = [auc(np.arange(sae.n_latents) != j) - full for j in firing]
        changed += sum(abs(e) > 1e-3 for e in expected)
        _close(data["table"][f"dauc:{label}"], expected, abs_=1e-5)
    assert changed >= 5  # removing some latents does move the AUROC, so the comparison can fail


def test_localisation_scores_come_from_visualize_and_the_top_class_latents(world):
    run, _, _, _, data = world
    firing = data["table"]["id"]
    for label in CONCEPTS:
        scores = pd.read_csv(run.out / "heatmaps" / label / "latent_scores.csv")
        scores = scores[scores["rule"] == "threshold"].set_index("latent")
        assert len(scores) == VISUALIZED
        hit = dict(zip(firing, data["table"][f"hit:{label}"]))
        iou = dict(zip(firing, data["table"][f"iou:{label}"]))
        for j, r in scores.iterrows():
            assert hit[j] == pytest.approx(r["hit_rate"], abs=1e-6) and iou[j] == pytest.approx(r["mean_max_iou"], abs=1e-6)
        records = json.loads((run.out / "ranking" / label / f"top_k_concepts_class=1_{label}.json").read_text())
        order = [r["index"] for r in sorted(records, key=lambda r: r["rank"]) if r["index"] in hit]
        scored = {j for j in firing if iou[j] is not None}
        assert scored == set(order[:LOCALISE]) | set(scores.index)
        assert data["overview"]["concepts"][label]["n_localised"] == len(scored)


def test_cards_hold_the_top_images_and_their_activation_grids(world):
    _, cache, _, z, data = world
    cards, firing = data["cards"], data["table"]["id"]
    zmax_Nn = z.max(axis=(1, 2))
    for r, j in enumerate(firing):
        order = np.argsort(-zmax_Nn[:, j], kind="stable")
        order = order[zmax_Nn[order, j] > 0][:TOP]
        assert cards["img"][r][: len(order)] == order.tolist()
        assert all(i == -1 for i in cards["img"][r][len(order):])
        grids = np.frombuffer(base64.b64decode(cards["grids"][r]), np.uint8).reshape(TOP, *cache.grid)
        scale = cards["gscale"][r]
        assert scale == pytest.approx(zmax_Nn[order, j].max(), rel=6e-5)
        for t, i in enumerate(order):
            np.testing.assert_allclose(grids[t] / 255 * scale, z[i, :, :, j], atol=scale / 255 * 0.51 + 1e-6)
    shown = {i for row in cards["img"] for i in row if i >= 0}
    assert set(map(int, data["images"])) == shown


def test_embedded_images_carry_their_clipped_ground_truth_boxes(world):
    run, cache, _, _, data = world
    csv = pd.read_csv(run.csv)
    for key, entry in data["images"].items():
        meta = cache.labels.iloc[int(key)]
        assert entry["id"] == meta["image_id"] and entry["uri"].startswith("data:image/jpeg;base64,")
        assert entry["hw"] == [36, 48]
        for label in CONCEPTS:
            rows = csv[(csv["image_id"] == meta["image_id"]) & (csv[label] == 1)]
            expected = rows[["resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax"]].to_numpy(float)
            expected = np.clip(expected, 0, [48, 36, 48, 36])
            got = np.asarray(entry["boxes"].get(label, np.zeros((0, 4))), float).reshape(-1, 4)
            np.testing.assert_allclose(got, expected)
            assert entry["labels"][label] == int(meta[label])


def test_overview_is_read_from_the_stage_files(world):
    run, _, _, _, data = world
    evaluation = json.loads((run.out / "evaluation" / f"evaluation_{CONCEPTS[0]}.json").read_text())
    assert data["overview"]["reconstruction"] == evaluation["reconstruction"]
    assert data["labels"] == list(CONCEPTS) or sorted(data["labels"]) == sorted(CONCEPTS)
    for label in CONCEPTS:
        on = json.loads((run.out / "interventions" / f"topk_on_{label}.json").read_text())
        assert data["overview"]["concepts"][label]["curves"]["on"] == [[r["k"], r["aucroc"]] for r in on]
    assert data["overview"]["gates"] is None and data["overview"]["comparison"] is None


def test_embedded_json_cannot_close_its_script_tag():
    text = script_json({"name": "</script><script>alert(1)</script>", "x": float("nan")})
    assert "</" not in text and json.loads(text) == {"name": "</script><script>alert(1)</script>", "x": None}
    page = render({"labels": [], "name": "</script>"}, "a <b> title")
    assert page.count("</script>") == 3 and "<title>a &lt;b&gt; title</title>" in page


def test_without_stage_outputs_the_page_has_the_latents_only(world, tmp_path):
    run, _, _, _, data = world
    bare = collect(DashboardConfig(run=str(run.run), cache=str(run.cache), out=str(tmp_path / "x.html"),
                                   analysis=str(tmp_path), top_images=TOP, progress=False))
    assert bare["labels"] == [] and bare["images"] == {}  # no concepts, no PNG folder
    assert set(bare["table"]) == {"id", "freq", "mean", "max", "name"} and bare["table"]["id"] == data["table"]["id"]
    assert bare["overview"]["reconstruction"] is None and bare["overview"]["concepts"] == {}


@pytest.mark.parametrize("change, message", [
    ({"--run": "missing_run"}, "error: {tmp}/missing_run: no such file or folder"),
    ({"--cache": "missing_cache"}, "error: {tmp}/missing_cache is not a feature cache (no manifest.json); check the path or extract it first"),
    ({"--top-images": "0"}, "error: --top-images must be at least 1"),
    ({"--localise-top": "-1"}, "error: --localise-top must be 0 or more"),
])
def test_bad_input_is_one_error_line_and_exit_2(world, tmp_path, capsys, change, message):
    from mammosae_jax.cli.dashboard import main

    run = world[0]
    args = {"--run": str(run.run), "--cache": str(run.cache), "--out": str(tmp_path / "x.html")}
    args.update({k: (str(tmp_path / v) if k in ("--run", "--cache") else v) for k, v in change.items()})
    assert main([t for kv in args.items() for t in kv]) == 2
    assert capsys.readouterr().err.strip() == message.format(tmp=tmp_path)
    assert not (tmp_path / "x.html").exists()


def test_names_and_prompt_similarities_come_from_name_latents(world):
    run, _, _, _, data = world
    names = pd.read_csv(run.out / "names" / "latent_names.csv")
    firing = data["table"]["id"]
    named = {j for j in names["latent"] if j in set(firing)}
    assert len(named) >= 3
    for r, j in enumerate(firing):
        rows = names[names["latent"] == j].sort_values("k")
        if j in named:
            assert data["table"]["name"][r] == rows["prompt"].iloc[0]
            assert [p for p, _ in data["names"][str(j)]] == rows["prompt"].tolist()
            _close([c for _, c in data["names"][str(j)]], rows["cosine"].to_numpy(), abs_=1e-6)
        else:
            assert data["table"]["name"][r] == "" and str(j) not in data["names"]

