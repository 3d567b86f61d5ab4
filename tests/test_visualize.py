"""The visualize CLI end to end on a tiny cache, tiny PNGs and a hand-built SAE.

The SAE has three meaningful latents over an 8-channel feature grid:
latent 0 reads channel 0, which holds a one-cell "lesion" on the positive images (a focal
detector); latent 1 reads channel 1, equal to 1 everywhere (it lights the whole image); latent 2
never fires. The expected boxes are recomputed here from PyTorch's bilinear upsampling.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cache import CacheWriter
from cache.vindr import VINDR_COLUMNS
from mammosae_jax.viz import heatmap_figures as figs
from mammosae_jax.models.sae_io import SAE, save_sae
from mammosae_jax.analysis.ranking import make_ranking, write_ranking
from mammosae_jax.models.sae import SAEConfig
from mammosae_jax.cli.visualize import main

GRID = (6, 4)
IMAGE_HW = (75, 45)
DIM = 8
LABEL = "Suspicious_Calcification"
# (patient, image, split, lesion cell or None, lesion strength, label-1 boxes in PNG pixels)
IMAGES = [
    ("p1", "imgA.png", "test", (2, 1), 5.0, [[10.0, 24.0, 24.0, 39.0]]),
    ("p1", "imgB.png", "test", (4, 2), 3.0, [[20.0, 49.0, 36.0, 64.0], [-3.0, -2.0, 8.0, 9.0]]),
    ("p2", "imgC.png", "test", None, 0.0, []),
    ("p3", "imgD.png", "training", (1, 1), 9.0, [[11.0, 12.0, 23.0, 25.0]]),
]


def feature_map(cell, strength) -> np.ndarray:
    fmap = np.zeros((*GRID, DIM), np.float32)
    if cell is not None:
        fmap[cell[0], cell[1], 0] = strength
    fmap[..., 1] = 1.0
    return fmap


def csv_rows() -> pd.DataFrame:
    records = []
    for patient, image, split, _, _, boxes in IMAGES:
        for box in boxes or [None]:
            row = {c: 0 for c in VINDR_COLUMNS}
            row.update(patient_id=patient, series_id="s", image_id=image, laterality="L", view="CC",
                       height=3000, width=1800, breast_birads="BI-RADS 4", breast_density="DENSITY B",
                       finding_birads="", split=split, fold=0, density=1)
            if box is None:
                row.update(finding_categories="['No Finding']", No_Finding=1,
                           **{c: "" for c in ("xmin", "ymin", "xmax", "ymax", "resized_xmin", "resized_ymin",
                                              "resized_xmax", "resized_ymax")})
            else:
                row.update(finding_categories="['Suspicious Calcification']", Suspicious_Calcification=1,
                           xmin=0, ymin=0, xmax=1, ymax=1, resized_xmin=box[0], resized_ymin=box[1],
                           resized_xmax=box[2], resized_ymax=box[3])
            records.append(row)
    return pd.DataFrame(records, columns=list(VINDR_COLUMNS))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("viz")
    rng = np.random.default_rng(0)
    maps = np.stack([feature_map(cell, s) for _, _, _, cell, s, _ in IMAGES])
    logits = np.array([[2.0], [-1.0], [-3.0], [0.5]], np.float32)
    with CacheWriter(root / "cache", grid=GRID, dim=DIM, dtype="float32", label_names=[LABEL],
                     shard_size=3) as w:
        w.add(maps, patient_id=[r[0] for r in IMAGES], image_id=[r[1] for r in IMAGES],
              split=[r[2] for r in IMAGES], labels=np.array([[int(bool(r[5]))] for r in IMAGES]),
              logits=logits)
        w.save_head(np.ones((1, DIM)), np.zeros(1), label=LABEL, class_names=["absent", "present"])
    for patient, image, *_ in IMAGES:
        (root / "png" / patient).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, IMAGE_HW, dtype=np.uint8)).save(root / "png" / patient / image)
    csv_rows().to_csv(root / "rows.csv", index=False)

    n_latents = 5
    w_enc = np.zeros((DIM, n_latents), np.float32)
    w_enc[0, 0] = w_enc[1, 1] = w_enc[2, 2] = 1.0
    w_enc[3, 3] = w_enc[4, 4] = 1.0
    b_enc = np.array([0.0, 0.0, -1.0, 0.0, 0.0], np.float32)
    w_dec = np.eye(n_latents, DIM, dtype=np.float32)
    sae = SAE(SAEConfig(d_in=DIM, n_latents=n_latents), {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec,
                                                         "b_dec": np.zeros(DIM, np.float32)})
    save_sae(root / "sae.safetensors", sae)
    importance = np.array([[0.0, 1.0, 2.0, 0.5, 0.1], [3.0, 2.0, 1.0, -1.0, -2.0]])
    write_ranking(root / "ranking", make_ranking(LABEL, importance), suffix="finetuned")
    return root


def expected_heat(cell, strength) -> np.ndarray:
    grid = torch.zeros(1, 1, *GRID)
    if cell is not None:
        grid[0, 0, cell[0], cell[1]] = strength
    return torch.nn.functional.interpolate(grid, size=IMAGE_HW, mode="bilinear", align_corners=False)[0, 0].numpy()


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def ranked_run(world):
    out = world / "out_ranked"
    code = main(["--cache", str(world / "cache"), "--csv", str(world / "rows.csv"), "--images",
                 str(world / "png"), "--sae", str(world / "sae.safetensors"), "--ranking", str(world / "ranking"),
                 "--label", LABEL, "--top", "3", "--gallery-size", "3", "--window", "20", "--out", str(out)])
    assert code == 0
    return out


def test_cli_scores_focal_whole_image_and_silent_latents(ranked_run):
    table = pd.read_csv(ranked_run / "latent_scores.csv")
    assert table["latent"].tolist() == [0, 0, 1, 1, 2, 2]        # class-1 ranking order
    assert table["rule"].tolist() == ["threshold", "percentile"] * 3
    thr = table[table["rule"] == "threshold"].set_index("latent")
    assert (thr["n_images"] == 2).all()
    # focal latent: both lesions boxed, peak inside, ranked above the negative image
    assert thr.loc[0, "hit_rate"] == 1.0 and thr.loc[0, "ap"] == pytest.approx(1.0)
    assert thr.loc[0, "mean_max_iou"] > 0.3
    # whole-image latent: one whole-image box per image, tiny IoU, no hit, AP 0
    assert thr.loc[1, "boxes_per_image"] == 1.0
    assert thr.loc[1, "mean_max_iou"] < 0.1 and thr.loc[1, "hit_rate"] == 0.0 and thr.loc[1, "ap"] == 0.0
    assert thr.loc[1, "precision@0.3"] == 0.0 and thr.loc[1, "recall@0.3"] == 0.0
    # silent latent: no boxes at all
    assert thr.loc[2, "boxes_per_image"] == 0.0 and thr.loc[2, "ap"] == 0.0
    summary = json.loads((ranked_run / "summary.json").read_text())
    assert summary["mAP"]["threshold"] == pytest.approx(1 / 3)
    assert summary["n_ground_truth_images"] == 2 and summary["n_split_images"] == 3


def test_localization_json_matches_independent_boxes(ranked_run):
    records = json.loads((ranked_run / "localization.json").read_text())
    assert [list(r) for r in records] == [["imgA.png"], ["imgB.png"]]
    h, w = IMAGE_HW
    for record, (_, name, _, cell, strength, boxes) in zip(records, IMAGES[:2]):
        entry = record[name]
        assert set(entry) == {"concept_0", "concept_1", "concept_2", "agg"}
        gt = [[max(0.0, x1), max(0.0, y1), min(w, x2), min(h, y2)] for x1, y1, x2, y2 in boxes]
        heat = expected_heat(cell, strength)
        rows, cols = np.nonzero(heat > 0.3 * heat.max())
        box = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
        focal = entry["concept_0"]
        assert focal["gt_boxes"] == gt
        assert focal["pred_boxes"] == [box]
        assert focal["max_iou"] == pytest.approx(max(iou(box, g) for g in gt))
        assert focal["mean_act"] == pytest.approx(strength / (GRID[0] * GRID[1]))
        assert focal["max_act"] == pytest.approx(strength)
        assert focal["hit"] is True
        whole = entry["concept_1"]
        assert whole["pred_boxes"] == [[0, 0, w, h]] and whole["mean_act"] == pytest.approx(1.0)
        assert whole["max_iou"] == pytest.approx(max(iou([0, 0, w, h], g) for g in gt))
        assert whole["pred_boxes_percentile"] == [] and whole["hit"] is False
        silent = entry["concept_2"]
        assert silent["pred_boxes"] == [] and silent["max_iou"] == 0.0 and silent["precision@0.3"] is None
    assert records[0]["imgA.png"]["agg"] == {"y_label": 1.0, "y_pred": [pytest.approx(1 / (1 + np.exp(-2.0)))]}


def test_cli_writes_figures_of_the_right_size(ranked_run):
    fig_w, fig_h = figs.image_latent_figsize(IMAGE_HW)
    for name in ("imgA", "imgB"):
        for j in (0, 1, 2):
            with Image.open(ranked_run / "images" / name / f"latent={j}.png") as img:
                assert img.size == (round(fig_w * figs.DPI), round(fig_h * figs.DPI))
    assert not (ranked_run / "images" / "imgC").exists()   # no ground truth: not drawn
    for path in [ranked_run / "summary_grid.png"] + [ranked_run / "galleries" / f"latent={j}.png" for j in (0, 1, 2)]:
        with Image.open(path) as img:
            assert img.size[0] > 200 and img.size[1] > 150
    assert not list(ranked_run.rglob("*.tmp"))


def test_cli_latents_flag_and_errors(world, capsys):
    common = ["--cache", str(world / "cache"), "--csv", str(world / "rows.csv"), "--images", str(world / "png"),
              "--sae", str(world / "sae.safetensors")]
    out = world / "out_explicit"
    assert main(common + ["--latents", "1,0", "--n-images", "1", "--gallery-size", "2", "--out", str(out)]) == 0
    table = pd.read_csv(out / "latent_scores.csv")
    assert table["latent"].tolist() == [1, 1, 0, 0] and table["importance"].isna().all()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["imgA"]
    captured = capsys.readouterr().out
    assert "mAP over 2 latents (2 ground-truth images)" in captured

    with pytest.raises(SystemExit) as exc:
        main(common + ["--latents", "7", "--out", str(world / "bad")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: latent 7 is out of range: the SAE has 5 latents"]

    with pytest.raises(SystemExit) as exc:
        main(common + ["--latents", "0", "--split", "validation", "--out", str(world / "bad")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: no images with split 'validation'")


def test_cli_gallery_spans_the_whole_cache(world):
    from mammosae_jax.viz.galleries import scan_cache
    from mammosae_jax.viz.heatmaps import latent_encoder
    from mammosae_jax.models.sae_io import load_sae
    from cache import open_cache

    scan = scan_cache(open_cache(world / "cache"), latent_encoder(load_sae(world / "sae.safetensors"), [0]), 1,
                      top_n=3, batch_size=2, progress=False)
    # the training image (strongest lesion) leads, then the two test positives; one patch per image
    assert scan.top.image_LN[0].tolist() == [3, 0, 1]
    assert scan.top.value_LN[0].tolist() == [9.0, 5.0, 3.0]
    assert [(r, c) for r, c in zip(scan.top.row_LN[0], scan.top.col_LN[0])] == [(1, 1), (2, 1), (4, 2)]
    np.testing.assert_allclose(scan.mean_NL[:, 0], [5 / 24, 3 / 24, 0, 9 / 24])


def test_ground_truth_clips_and_drops_boxes_outside_the_png(world, tmp_path):
    from cache import open_cache
    from mammosae_jax.viz.localize_run import VisualizeConfig, VisualizeError, ground_truth

    rows = csv_rows()
    extra = rows[rows["image_id"] == "imgC.png"].copy()
    extra[["resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax"]] = [50.0, 80.0, 60.0, 90.0]
    extra["Suspicious_Calcification"] = 1   # a label-1 box entirely outside the 45 x 75 PNG
    pd.concat([rows, extra]).to_csv(tmp_path / "rows.csv", index=False)
    cache = open_cache(world / "cache")
    cfg = VisualizeConfig(cache=str(world / "cache"), images=str(world / "png"), sae="", out="",
                          csv=str(tmp_path / "rows.csv"))
    truth = ground_truth(cfg, cache, cache.split_indices("test"))
    assert list(truth) == [0, 1]                                   # imgC has no box left
    assert truth[1].boxes.tolist() == [[20.0, 49.0, 36.0, 64.0], [0.0, 0.0, 8.0, 9.0]]
    assert truth[1].image_hw == IMAGE_HW
    # without --csv the cache's own row table is used; this cache stored none with boxes
    with pytest.raises(VisualizeError, match="has no column"):
        ground_truth(VisualizeConfig(cache="", images=str(world / "png"), sae="", out=""), cache,
                     cache.split_indices("test"))
