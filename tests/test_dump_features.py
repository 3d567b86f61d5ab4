"""dump_features: cached features equal an independent computation; resume; bad inputs; ranks."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.encoder_data import ONE_THREAD_ENV, encoder_state, one_torch_thread, write_classifier_pth  # noqa: F401
from PIL import Image

from cache import open_cache
from extract.convert_checkpoint import convert
from extract.dump_features import main
from extract.encoder import build_encoder
from extract.phantoms import PhantomConfig, generate

REPO = Path(__file__).resolve().parents[1]
H, W = 96, 64  # -> a 3 x 2 head grid
N_IMAGES = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """12 phantom images (3 patients x 4 views), several with more than one CSV row."""
    root = tmp_path_factory.mktemp("phantoms")
    generate(PhantomConfig(n_images=N_IMAGES, seed=3, height=H, width=W, mass_prevalence=0.7,
                           calc_prevalence=0.7), root, progress=False)
    rows = pd.read_csv(root / "vindr_detection_v1_folds.csv")
    assert rows["image_id"].nunique() == N_IMAGES and len(rows) > N_IMAGES  # dedupe is exercised
    assert set(rows["split"]) == {"training", "test"}
    return root


@pytest.fixture(scope="module")
def classifier(data, tmp_path_factory):
    """A B2 calcification classifier `.pth`: random weights, BatchNorm calibrated on the phantoms."""
    root = tmp_path_factory.mktemp("ckpt")
    calib = torch.cat([reference_input(p) for p in sorted((data / "images_png").rglob("*.png"))])
    state = encoder_state("b2", seed=11, calib=calib)
    gen = torch.Generator().manual_seed(5)
    weight, bias = torch.randn(1, 1408, generator=gen) / 20, torch.tensor([0.3])
    path = root / "b2_Suspicious_Calcification_fine_tuned.pth"
    write_classifier_pth(path, state, weight, bias)
    return path, state, weight, bias


def cli(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--csv", str(data / "vindr_detection_v1_folds.csv"), "--images", str(data / "images_png"),
            "--out", str(out), "--num-workers", "0", *extra]


def reference_input(path: Path) -> torch.Tensor:
    """SPEC §2 preprocessing, written independently: grey -> [0, 1] min-max -> mean/std -> 3 channels."""
    x = np.array(Image.open(path), dtype=np.float32)
    x = x - x.min()
    x = x / x.max()
    x = (x - 0.3089279) / 0.25053555408335154
    return torch.from_numpy(np.stack([x, x, x]))[None]


def run_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting failure; return its single stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def classifier_cache(data, classifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "clf"
    main(cli(data, out, "--checkpoint", str(classifier[0]), "--dtype", "float32", "--batch-size", "4",
             "--shard-size", "5"))
    return out


def test_features_pooled_and_logits_equal_an_independent_computation(data, classifier, classifier_cache):
    path, state, weight, bias = classifier
    cache = open_cache(classifier_cache)
    rows = pd.read_csv(data / "vindr_detection_v1_folds.csv")
    image_ids = list(dict.fromkeys(rows["image_id"]))  # unique, first appearance
    assert list(cache.image_ids) == image_ids and len(cache) == N_IMAGES
    assert cache.grid == (3, 2) and cache.dim == 1408
    assert cache.manifest["encoder"]["weights"] == "Mammo-CLIP (classifier)"
    model = build_encoder("b2")
    model.load_state_dict(state, strict=False)
    pooled, logits = cache.pooled(), cache.logits()
    patients = [rows.loc[rows["image_id"] == i, "patient_id"].iloc[0] for i in image_ids]
    x = torch.cat([reference_input(data / "images_png" / p / i) for p, i in zip(patients, image_ids)])
    with torch.no_grad():
        ref_NHWC = model.extract_features(x).permute(0, 2, 3, 1).numpy()  # one batch of 12, not 4
    for i in range(N_IMAGES):  # fp32 through ~100 layers with other batch shapes: ~1e-5 relative
        np.testing.assert_allclose(cache.feature_map(i), ref_NHWC[i], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(pooled, ref_NHWC.mean(axis=(1, 2)), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(pooled, np.stack([cache.feature_map(i).mean(axis=(0, 1)) for i in range(N_IMAGES)]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, pooled @ weight.numpy().T + bias.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(pooled).mean() > 1e-2 and np.ptp(logits) > 0  # real signal, not ~1e-12
    head = cache.head()
    assert head.label == "Suspicious_Calcification"
    np.testing.assert_array_equal(head.weight, weight.numpy())


def test_rows_labels_and_boxes_are_kept(data, classifier_cache):
    cache = open_cache(classifier_cache)
    rows = pd.read_csv(data / "vindr_detection_v1_folds.csv")
    cached_rows = cache.rows
    assert len(cached_rows) == len(rows)
    assert [cache.image_ids[i] for i in cached_rows["image_index"]] == rows["image_id"].tolist()
    np.testing.assert_allclose(cached_rows["resized_xmin"].to_numpy(float), rows["resized_xmin"].to_numpy(float))
    per_image_max = rows.groupby("image_id", sort=False)[["Mass", "Suspicious_Calcification", "density"]].max()
    labels = cache.labels.set_index("image_id").loc[per_image_max.index]
    np.testing.assert_array_equal(labels[per_image_max.columns].to_numpy(), per_image_max.to_numpy())


def test_safetensors_checkpoint_float16_split_and_limit(data, classifier, classifier_cache, tmp_path):
    st = tmp_path / "clf.safetensors"
    convert(str(classifier[0]), str(st))
    out = tmp_path / "half"
    main(cli(data, out, "--checkpoint", str(st), "--split", "test", "--limit", "3", "--batch-size", "2"))
    half, full = open_cache(out), open_cache(classifier_cache)
    rows = pd.read_csv(data / "vindr_detection_v1_folds.csv")
    test_ids = list(dict.fromkeys(rows.loc[rows["split"] == "test", "image_id"]))[:3]
    assert list(half.image_ids) == test_ids and set(half.splits) == {"test"}
    assert half.manifest["dtype"] == "float16"
    for i, image_id in enumerate(test_ids):
        j = full.image_ids.index(image_id)
        np.testing.assert_allclose(half.feature_map(i), full.feature_map(j), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(half.logits(), full.logits()[[full.image_ids.index(t) for t in test_ids]],
                               rtol=1e-3, atol=1e-3)
    assert set(half.rows["image_id"]) == set(test_ids)


def test_random_weights_are_recorded_and_carry_image_content(data, tmp_path):
    out = tmp_path / "rand"
    main(cli(data, out, "--random-weights", "--arch", "b2", "--batch-size", "4", "--seed", "1"))
    cache = open_cache(out)
    assert cache.manifest["encoder"]["weights"] == "random (not Mammo-CLIP)"
    assert cache.manifest["encoder"]["seed"] == 1 and cache.logits() is None and cache.head() is None
    pooled = cache.pooled()
    assert 0.05 < np.abs(pooled).mean() < 50  # O(1), not ~1e-12
    dist = np.linalg.norm(pooled[:, None] - pooled[None], axis=-1)
    assert dist[~np.eye(N_IMAGES, dtype=bool)].min() > 1e-3 * np.linalg.norm(pooled, axis=1).mean()


def test_kill_and_resume_gives_an_identical_cache(data, classifier, tmp_path):
    """SIGKILL the script (run as a file) after its first shard; rerunning it finishes the same cache."""
    n = N_IMAGES
    args = [sys.executable, str(REPO / "extract" / "dump_features.py"),
            *cli(data, tmp_path / "x", "--checkpoint", str(classifier[0]), "--batch-size", "1",
                 "--shard-size", "2", "--dtype", "float32", "--limit", str(n))]
    whole = args[2:]
    whole[whole.index(str(tmp_path / "x"))] = str(tmp_path / "whole")
    main(whole)  # the uninterrupted run, in this process
    interrupted = tmp_path / "x" / "manifest.json"
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD_ENV)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if interrupted.exists() and json.loads(interrupted.read_text())["n_images"] >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    manifest = json.loads(interrupted.read_text())
    assert not manifest["complete"] and 2 <= manifest["n_images"] < n
    resumed = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=ONE_THREAD_ENV)
    assert resumed.returncode == 0, resumed.stderr
    a, b = open_cache(tmp_path / "whole"), open_cache(tmp_path / "x")
    assert a.image_ids == b.image_ids and len(b) == n
    for i in range(n):
        np.testing.assert_array_equal(a.feature_map(i), b.feature_map(i))
    np.testing.assert_array_equal(a.pooled(), b.pooled())
    np.testing.assert_array_equal(a.logits(), b.logits())
    pd.testing.assert_frame_equal(a.rows, b.rows)
    assert b.verify().n_images == n


def test_missing_png_fails_before_any_shard(data, classifier, tmp_path, capsys):
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    victim = sorted((bad / "images_png").rglob("*.png"))[4]
    victim.unlink()
    line = run_error(capsys, cli(bad, tmp_path / "c", "--checkpoint", str(classifier[0])))
    assert line == f"error: missing PNG: {victim}"
    assert not list((tmp_path / "c").glob("shard-*"))


def test_wrong_image_size_names_the_file(data, classifier, tmp_path, capsys):
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    victim = sorted((bad / "images_png").rglob("*.png"))[2]
    Image.open(victim).resize((W + 8, H)).save(victim)
    line = run_error(capsys, cli(bad, tmp_path / "c", "--checkpoint", str(classifier[0])))
    assert line == (f"error: image {victim} is {H}x{W + 8} (HxW) but the data set's images are {H}x{W}; "
                    "all images must share one size")
    assert not list((tmp_path / "c").glob("shard-*"))


def test_corrupt_png_stops_before_its_shard(data, classifier, tmp_path, capsys):
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    rows = pd.read_csv(bad / "vindr_detection_v1_folds.csv")
    order = list(dict.fromkeys(zip(rows["patient_id"], rows["image_id"])))
    victim = bad / "images_png" / order[5][0] / order[5][1]
    victim.write_bytes(victim.read_bytes()[:120])  # header intact, pixel data cut
    out = tmp_path / "c"
    line = run_error(capsys, cli(bad, out, "--checkpoint", str(classifier[0]), "--batch-size", "2",
                                 "--shard-size", "4"))
    assert line.startswith(f"error: corrupt PNG {victim}: ")
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and manifest["n_images"] == 4  # images 0-3 only; 5 never stored
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.h5"]


def test_csv_without_a_needed_column(data, classifier, tmp_path, capsys):
    csv = tmp_path / "no_split.csv"
    pd.read_csv(data / "vindr_detection_v1_folds.csv").drop(columns=["split"]).to_csv(csv, index=False)
    argv = cli(data, tmp_path / "c", "--checkpoint", str(classifier[0]))
    argv[argv.index("--csv") + 1] = str(csv)
    assert run_error(capsys, argv) == f"error: {csv}: missing required column(s): split"
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("shard-*"))


def test_bad_checkpoints_are_refused(data, classifier, tmp_path, capsys):
    _, state, weight, bias = classifier
    broken = tmp_path / "broken.pth"
    write_classifier_pth(broken, {k: v for k, v in state.items() if k != "_blocks.7._bn2.weight"}, weight, bias)
    line = run_error(capsys, cli(data, tmp_path / "c", "--checkpoint", str(broken)))
    assert line == f"error: {broken} does not fit the encoder: missing 1: _blocks.7._bn2.weight"

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.tar"
    torch.save({"model": {}, "config": Exploit()}, evil)
    line = run_error(capsys, cli(data, tmp_path / "c", "--checkpoint", str(evil)))
    assert "refusing to load" in line and "posix.system" in line and not marker.exists()

    line = run_error(capsys, cli(data, tmp_path / "c", "--checkpoint", str(classifier[0]), "--arch", "b5"))
    assert "holds an EfficientNet-B2 encoder but --arch b5 was given" in line
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("shard-*"))


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--csv", "--images", "--checkpoint", "--random-weights", "--arch", "--split", "--out",
                   "--batch-size", "--dtype", "--device", "--num-workers", "--limit", "--augment", "--seed",
                   "--shard-size", "--amp"):
        assert option in text


@pytest.mark.slow
def test_two_processes_equal_one(data, classifier, tmp_path):
    common = ["--checkpoint", str(classifier[0]), "--batch-size", "2", "--dtype", "float32", "--device", "cpu"]
    one = subprocess.run([sys.executable, "extract/dump_features.py", *cli(data, tmp_path / "one", *common)],
                         cwd=REPO, capture_output=True, text=True, env=ONE_THREAD_ENV)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29517", "extract/dump_features.py", *cli(data, tmp_path / "two", *common)],
                         cwd=REPO, capture_output=True, text=True, env=ONE_THREAD_ENV)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = open_cache(tmp_path / "one"), open_cache(tmp_path / "two")
    assert a.image_ids == b.image_ids and len(b.manifest["ranks"]) == 2
    for i in range(N_IMAGES):
        np.testing.assert_allclose(a.feature_map(i), b.feature_map(i), rtol=1e-3, atol=1e-4)  # thread counts differ
    np.testing.assert_allclose(a.logits(), b.logits(), rtol=1e-3, atol=1e-5)
    pd.testing.assert_frame_equal(a.rows, b.rows)
    assert b.head().label == "Suspicious_Calcification"
    assert b.verify().n_images == N_IMAGES
