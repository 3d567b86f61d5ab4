"""extract.finetune: the loss falls, the checkpoint is Mammo-CLIP's layout and feeds the extractor
unchanged, kill -9 + rerun gives identical weights, LP freezes the encoder, bad input is one line."""
from __future__ import annotations

import json
import math
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

from cache import open_cache
from extract.checkpoints import read_checkpoint, safe_torch_load
from extract.dump_features import main as dump_main
from extract.encoder import build_encoder
from extract.finetune import main
from extract.finetune_model import positive_weights, warmup_cosine_multiplier
from extract.phantoms import PhantomConfig, generate
from extract.preprocess import load_model_input

H, W = 96, 64
CONCEPTS = "Mass,Suspicious_Calcification"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """32 phantom images (8 patients); high prevalences so both classes are on both sides."""
    root = tmp_path_factory.mktemp("phantoms")
    generate(PhantomConfig(n_images=32, seed=4, height=H, width=W, mass_prevalence=0.5, calc_prevalence=0.5),
             root, progress=False)
    return root


def cli(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--csv", str(data / "vindr_detection_v1_folds.csv"), "--images", str(data / "images_png"),
            "--out", str(out), "--random-weights", "--arch", "b2", "--concepts", CONCEPTS, "--batch-size", "4",
            "--val-fraction", "0.35", "--calib-images", "8", "--lr", "1e-3", "--warmup-epochs", "0.5",
            "--no-progress", *extra]


def state_tensors(path: Path) -> dict[str, torch.Tensor]:
    return safe_torch_load(path)["model"]


@pytest.fixture(scope="module")
def finetuned(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft") / "run"
    assert main(cli(data, out, "--epochs", "4")) == 0
    return out


def test_schedule_and_class_weights_follow_mammoclip():
    assert warmup_cosine_multiplier(0, 10, 100) == 0.0
    assert warmup_cosine_multiplier(5, 10, 100) == 0.5
    assert warmup_cosine_multiplier(10, 10, 100) == 1.0
    assert math.isclose(warmup_cosine_multiplier(55, 10, 100), math.cos(math.pi / 4) ** 2)
    assert warmup_cosine_multiplier(100, 10, 100) == pytest.approx(0.0, abs=1e-30)
    y = torch.tensor([[1, 0], [0, 0], [0, 1], [0, 0], [0, 0]])
    assert positive_weights(y).tolist() == [4.0, 4.0]
    assert positive_weights(torch.zeros(3, 1)).tolist() == [1.0]


def test_training_loss_falls_and_metrics_are_written(finetuned):
    lines = [json.loads(s) for s in (finetuned / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    losses = [r["train_loss"] for r in lines]
    assert min(losses[1:]) < 0.6 * losses[0], losses  # per-epoch means of 5 steps are noisy; the fall is not
    assert set(lines[0]["val_auroc"]) == set(CONCEPTS.split(","))
    config = json.loads((finetuned / "config.json").read_text())
    assert config["arch"] == "b2" and config["finetune"]["mode"] == "fine-tune"
    assert config["train_images"] + config["val_images"] == 24  # the training split only
    labels = pd.read_csv(Path(config["finetune"]["csv"])).groupby("image_id").first()
    train = labels[labels["split"] == "training"]
    val_patients = set(config["val_patients"])
    assert 0 < len(val_patients) < train["patient_id"].nunique()
    best = max(lines, key=lambda r: r["val_auroc_mean"])
    pth = torch.load(finetuned / "model-best.pth", weights_only=True)
    assert pth["epoch"] == best["epoch"] and pth["auroc"] == pytest.approx(best["val_auroc_mean"])


def test_checkpoint_is_mammoclip_layout_and_extracts_identical_features(data, finetuned, tmp_path):
    pth = torch.load(finetuned / "model-best.pth", weights_only=True)  # no pickle beyond tensors
    keys = set(pth["model"])
    head = {"classifier.classification_head.weight", "classifier.classification_head.bias"}
    assert head <= keys and all(k.startswith("image_encoder.") for k in keys - head)
    assert not any(k.startswith("image_encoder._fc.") for k in keys)
    assert pth["model"]["classifier.classification_head.weight"].shape == (2, 1408)
    ckpt = read_checkpoint(finetuned / "model-best.pth")
    assert ckpt.layout == "classifier" and ckpt.head.class_names == CONCEPTS.split(",")
    twin = read_checkpoint(finetuned / "model-best.safetensors")
    for k, v in ckpt.encoder.items():
        torch.testing.assert_close(twin.encoder[k], v, rtol=0, atol=0)

    caches = {}
    for name in ("model-best.pth", "model-best.safetensors"):
        caches[name] = tmp_path / name
        dump_main(["--csv", str(data / "vindr_detection_v1_folds.csv"), "--images", str(data / "images_png"),
                   "--checkpoint", str(finetuned / name), "--out", str(caches[name]), "--dtype", "float32",
                   "--num-workers", "0"])
    cache = open_cache(caches["model-best.pth"])
    model = build_encoder("b2")
    model.load_state_dict({k[len("image_encoder."):]: v for k, v in pth["model"].items()
                           if k.startswith("image_encoder.")}, strict=False)
    model.eval()
    for i in (0, 5, len(cache) - 1):
        row = cache.labels.iloc[i]
        x = torch.from_numpy(load_model_input(data / "images_png" / row["patient_id"] / row["image_id"]))[None]
        with torch.no_grad():
            expected = model.extract_features(x)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(cache.feature_map(i), expected, rtol=2e-4, atol=2e-4)  # batch 8 vs 1
    logits = cache.logits()
    w, b = pth["model"]["classifier.classification_head.weight"], pth["model"]["classifier.classification_head.bias"]
    np.testing.assert_allclose(logits, cache.pooled() @ w.numpy().T + b.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(open_cache(caches["model-best.safetensors"]).pooled(), cache.pooled())


def test_linear_probe_trains_only_the_head_and_batchnorm_statistics(data, tmp_path):
    out = tmp_path / "lp"
    assert main(cli(data, out, "--mode", "linear-probe", "--epochs", "1", "--seed", "3")) == 0
    from extract.finetune import FinetuneConfig, encoder_for
    from extract.finetune_data import load_training_data
    d = load_training_data(data / "vindr_detection_v1_folds.csv", data / "images_png", CONCEPTS.split(","),
                           0.35, 3)
    start, _, _ = encoder_for(FinetuneConfig(csv="", images="", out="", random_weights=True, arch="b2", seed=3,
                                             calib_images=8), d)
    trained = state_tensors(out / "state.pt")
    for name, param in start.named_parameters():
        torch.testing.assert_close(trained[f"image_encoder.{name}"], param, rtol=0, atol=0)
    moved = [k for k, v in start.named_buffers() if k.endswith("running_mean")
             and not torch.equal(trained[f"image_encoder.{k}"], v)]
    assert len(moved) > 10  # train-mode forward passes updated the BatchNorm statistics


def test_freeze_blocks_keeps_the_stem_and_first_blocks(data, tmp_path):
    out = tmp_path / "partial"
    assert main(cli(data, out, "--epochs", "1", "--freeze-blocks", "10", "--limit", "20", "--seed", "1")) == 0
    from extract.finetune import FinetuneConfig, encoder_for
    from extract.finetune_data import load_training_data
    d = load_training_data(data / "vindr_detection_v1_folds.csv", data / "images_png", CONCEPTS.split(","),
                           0.35, 1, 20)
    start, _, _ = encoder_for(FinetuneConfig(csv="", images="", out="", random_weights=True, arch="b2", seed=1,
                                             calib_images=8), d)
    trained = state_tensors(out / "state.pt")
    same = {n: torch.equal(trained[f"image_encoder.{n}"], p) for n, p in start.named_parameters()}
    assert all(v for n, v in same.items() if n.startswith(("_conv_stem", "_bn0"))
               or (n.startswith("_blocks.") and int(n.split(".")[1]) < 10))
    assert not all(v for n, v in same.items() if n.startswith("_conv_head"))


def test_kill_and_rerun_gives_identical_weights(data, tmp_path):
    """SIGKILL after the resume state of step 2 is on disk; the same command finishes identically."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    extra = ("--epochs", "2", "--limit", "20", "--save-every", "1", "--threads", "1")
    assert main(cli(data, whole, *extra)) == 0
    args = [sys.executable, "-m", "extract.finetune", *cli(data, killed, *extra)]
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(args, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD_ENV)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        state = killed / "state.pt"
        if state.exists():
            try:
                if safe_torch_load(state)["step"] >= 2:
                    proc.send_signal(signal.SIGKILL)
                    break
            except Exception:  # being replaced right now; look again
                pass
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True, env=ONE_THREAD_ENV)
    assert done.returncode == 0, done.stderr
    a, b = state_tensors(whole / "state.pt"), state_tensors(killed / "state.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    assert (whole / "metrics.jsonl").read_text() == (killed / "metrics.jsonl").read_text()
    pa, pb = state_tensors(whole / "model-best.pth"), state_tensors(killed / "model-best.pth")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def run_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_fine_tuning_starts_from_a_users_downstream_pth(data, tmp_path):
    """`--checkpoint` a Mammo-CLIP classifier `.pth`: its encoder is the start, the head starts fresh."""
    state = encoder_state("b2", seed=2)
    start = tmp_path / "b2_Mass_linear_probe.pth"
    write_classifier_pth(start, state, torch.zeros(1, 1408), torch.zeros(1))
    out = tmp_path / "ft"
    args = [a for a in cli(data, out, "--epochs", "1", "--mode", "linear-probe") if a not in ("--random-weights",)]
    args = args[:args.index("--arch")] + args[args.index("--arch") + 2:] + ["--checkpoint", str(start)]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["trained_from"] == {"weights": "Mammo-CLIP (classifier)", "checkpoint": start.name}
    trained = state_tensors(out / "model-best.pth")
    for k, v in state.items():  # a linear probe keeps every encoder parameter of the start
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            torch.testing.assert_close(trained[f"image_encoder.{k}"], v, rtol=0, atol=0)
    assert trained["classifier.classification_head.weight"].abs().sum() > 0


def test_bad_input_is_one_error_line(data, tmp_path, capsys):
    base = cli(data, tmp_path / "x")
    no_weights = [a for a in base if a != "--random-weights"]
    assert run_error(capsys, no_weights) == "error: give exactly one of --checkpoint FILE and --random-weights"
    msg = run_error(capsys, [*base, "--concepts", "Mass,Tumour"])
    assert msg == f"error: {data / 'vindr_detection_v1_folds.csv'} has no concept column Tumour"
    assert run_error(capsys, [*base, "--lr", "nan"]) == "error: --lr must be a positive number, got nan"
    assert run_error(capsys, [*base, "--epochs", "0"]) == "error: --epochs must be >= 1"
    msg = run_error(capsys, [*base, "--mode", "linear-probe", "--freeze-blocks", "3"])
    assert msg == "error: --freeze-blocks is for --mode fine-tune (a linear probe freezes the whole encoder)"
    msg = run_error(capsys, [*no_weights, "--checkpoint", str(tmp_path / "missing.pth")])
    assert msg == f"error: checkpoint not found: {tmp_path / 'missing.pth'}"


def test_rerun_with_other_settings_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(cli(data, out, "--epochs", "1", "--limit", "20")) == 0
    capsys.readouterr()
    assert main(cli(data, out, "--epochs", "1", "--limit", "20")) == 0  # same command: already complete
    assert capsys.readouterr().out.startswith("already complete: best epoch 1")
    msg = run_error(capsys, cli(data, out, "--epochs", "1", "--limit", "20", "--lr", "5e-4"))
    assert msg == f"error: {out} was trained with other settings (differs in: lr); pass --overwrite or a new --out"


@pytest.mark.slow
def test_torchrun_two_processes_train_one_run_folder(data, tmp_path):
    """Data-parallel: 2 gloo processes share each batch and write one Mammo-CLIP checkpoint."""
    repo = Path(__file__).resolve().parents[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    args = [str(torchrun), "--nproc-per-node", "2", "-m", "extract.finetune",
            *cli(data, tmp_path / "ddp", "--epochs", "2")]
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True, env=ONE_THREAD_ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(s) for s in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines[-1]["step"] == 2 * math.ceil(16 / 4)
    pth = torch.load(tmp_path / "ddp" / "model-best.pth", weights_only=True)
    assert pth["model"]["classifier.classification_head.weight"].shape == (2, 1408)
