"""End to end: `python -m mammosae_jax.train` on tiny caches; resume; errors."""
import json

import jax
import numpy as np
import pytest

import cache as cache_lib
from mammosae_jax import load_sae
from mammosae_jax.models.sae import SAEConfig
from mammosae_jax.cli.train import main
from mammosae_jax.training.checkpoint import Checkpointer
from mammosae_jax.training.config import TrainConfig
from mammosae_jax.training.loop import train
from helpers.train_data import DIM, FaultyCache, write_train_cache

# 24 images -> 16 training (8 patients), 4 validation (2 patients), 4 test; 8 positions each
COMMON = ["--batch-size", "16", "--val-fraction", "0.25", "--l1", "1e-3", "--lr", "1e-2", "--expansion", "4",
          "--resample-tokens", "64", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return write_train_cache(tmp_path_factory.mktemp("cache") / "c")


def test_cli_trains_writes_run_folder_and_export(tiny_cache, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--cache", str(tiny_cache), "--out", str(out), "--epochs", "3", "--log-every", "4",
               "--checkpoint-every", "8", "--resample-every-epochs", "1", "--resample-stop-epochs", "1", *COMMON])
    assert rc == 0
    assert "trained 24 steps" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["sae"]["n_latents"] == 4 * DIM and config["train"]["lr"] == 1e-2
    assert config["data"]["steps_per_epoch"] == 8 and config["data"]["n_val_images"] == 4
    assert config["data"]["val_patients"] == sorted(config["data"]["val_patients"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if r.get("split") == "train"]
    val_recs = [r for r in records if r.get("split") == "val"]
    resamples = [r for r in records if r.get("event") == "resample"]
    assert [r["step"] for r in train_recs] == [4, 8, 12, 16, 20, 24]
    assert [r["step"] for r in val_recs] == [8, 16, 24]  # every epoch
    assert [r["step"] for r in resamples] == [8, 16]  # not in the last epoch (stop 1)
    for key in ("loss", "mse", "l1", "l0", "fvu", "dead_fraction", "tokens_per_s", "data_wait_fraction"):
        assert np.isfinite(train_recs[-1][key]), key
    assert 0 <= train_recs[-1]["data_wait_fraction"] <= 1
    assert train_recs[-1]["loss"] < 0.5 * train_recs[0]["loss"]  # it learns
    assert val_recs[-1]["fvu"] < 0.5 and 0 <= val_recs[-1]["dense_fraction"] <= 1
    assert Checkpointer(out / "checkpoints", 3).all_steps() == [8, 16, 24]
    # the export loads, and equals the final checkpoint's parameters
    sae = load_sae(out)
    assert sae.config == SAEConfig.from_dict(config["sae"])
    restored = Checkpointer(out / "checkpoints", 3).manager.restore(24)["state"]
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_array_equal(np.asarray(sae.params[name]), np.asarray(restored["params"][name]))
    np.testing.assert_allclose(np.linalg.norm(sae.params["W_dec"], axis=1), 1.0, rtol=1e-5)


def _args(cache_path, out, *extra):
    return ["--cache", str(cache_path), "--out", str(out), *COMMON, *extra]


BATCH_MB = 16 * DIM * 4 / 2**20  # one batch of float32 tokens, in MiB


# the kill surfaces when the window holding batch 4 of epoch 1 is due: windows of one batch (step 13)
# or of three (batches 3-5, step 12); both after checkpoint 10, which resumes inside a window
@pytest.mark.parametrize("variant, feed, window_batches", [
    ("relu", "device", 1), ("relu", "device", 3), ("relu", "stream", 0),
    pytest.param("batchtopk", "device", 3, marks=pytest.mark.slow),
    pytest.param("batchtopk", "stream", 0, marks=pytest.mark.slow)])
def test_killed_after_checkpoint_and_resumed_equals_uninterrupted_bitwise(tiny_cache, tmp_path, variant, feed,
                                                                          window_batches):
    sae_cfg = SAEConfig(DIM, 4 * DIM, variant=variant, k=None if variant == "relu" else 4, l1_coeff=1e-3, aux_k=8)
    tc = TrainConfig(lr=1e-2, batch_size=16, epochs=3, val_fraction=0.25, resample_every_epochs=1,
                     resample_stop_epochs=1, resample_tokens=64, dead_after_tokens=48, checkpoint_every=5,
                     log_every=1, feed=feed, window_mb=window_batches * BATCH_MB)
    feats = cache_lib.open_cache(tiny_cache)
    full = train(feats, tmp_path / "full", sae_cfg, tc, progress=False)

    killed = FaultyCache(feats, bad_batch=4, epoch=1, fault="interrupt")  # dies at step 13 (after ckpt 10)
    with pytest.raises(KeyboardInterrupt):
        train(killed, tmp_path / "resumed", sae_cfg, tc, progress=False)
    assert Checkpointer(tmp_path / "resumed" / "checkpoints", 3).latest_step() == 10
    resumed = train(feats, tmp_path / "resumed", sae_cfg, tc, resume=True, progress=False)

    for a, b in zip(jax.tree.leaves(jax.device_get(full.state)), jax.tree.leaves(jax.device_get(resumed.state))):
        np.testing.assert_array_equal(a, b)
    assert full.config == resumed.config  # batchtopk: identical learned threshold

    def comparable(path):
        recs = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "data_wait_fraction")} for r in recs]

    assert comparable(tmp_path / "resumed") == comparable(tmp_path / "full")


def _run_cli(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_error_cache_dim_differs_from_d_in(tiny_cache, tmp_path, capsys):
    rc, err = _run_cli(capsys, _args(tiny_cache, tmp_path / "r", "--steps", "2", "--d-in", "32"))
    assert rc == 2 and err == [f"error: the cache's feature dim is {DIM} but --d-in is 32"]


def test_error_resume_on_a_cache_of_another_dim(tiny_cache, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_args(tiny_cache, out, "--steps", "2", "--checkpoint-every", "1")) == 0
    other = write_train_cache(tmp_path / "c8", dim=8)
    rc, err = _run_cli(capsys, _args(other, out, "--steps", "2", "--resume"))
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("error: --resume with a different sae setting 'd_in': the run used 16, now 8")


def test_error_existing_checkpoints_without_resume(tiny_cache, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_args(tiny_cache, out, "--steps", "2", "--checkpoint-every", "1")) == 0
    rc, err = _run_cli(capsys, _args(tiny_cache, out, "--steps", "2"))
    assert rc == 2 and err == [f"error: {out} already holds checkpoints (latest step 2); pass --resume to "
                               "continue that run or choose a new --out"]


def test_error_empty_cache(tmp_path, capsys):
    empty = write_train_cache(tmp_path / "empty", n_images=0)
    rc, err = _run_cli(capsys, _args(empty, tmp_path / "r", "--steps", "2"))
    assert rc == 2 and err == [f"error: the cache at {empty} holds no images"]


@pytest.mark.parametrize("feed", ["device", "stream"])
def test_error_nan_batch_stops_with_step_and_writes_no_checkpoint(tiny_cache, tmp_path, capsys, monkeypatch, feed):
    real_open = cache_lib.open_cache
    monkeypatch.setattr(cache_lib, "open_cache", lambda p: FaultyCache(real_open(p), bad_batch=3, epoch=1))
    out = tmp_path / "r"
    rc, err = _run_cli(capsys, _args(tiny_cache, out, "--epochs", "2", "--checkpoint-every", "4", "--feed", feed))
    # epoch 1 starts at step 9; its batch 3 is step 12 -> checkpoints 4 and 8 only
    assert rc == 2 and len(err) == 1
    assert err[0] == ("error: non-finite value (NaN/inf) in the training batch of step 12; stopped before "
                      "using it, no checkpoint written for it (last checkpoint: 8); check the cache with "
                      "cache.verify()")
    assert Checkpointer(out / "checkpoints", 3).all_steps() == [4, 8]
    assert not (out / "sae_weights.safetensors").exists()


def test_error_batch_size_not_divisible_by_devices(tiny_cache, tmp_path, capsys):
    argv = _args(tiny_cache, tmp_path / "r", "--steps", "1")
    argv[argv.index("--batch-size") + 1] = "6"
    rc, err = _run_cli(capsys, argv)
    assert rc == 2 and err == ["error: batch size 6 is not divisible by the 4 devices of 1 process(es)"]
