"""Training reliability: resume refuses other data, one trainer per run folder, bad flags, windows."""
import json
import shutil
import signal
import subprocess
import sys

import pytest

import cache as cache_lib
from mammosae_jax.cli.train import main
from mammosae_jax.models.sae import SAEConfig
from mammosae_jax.training.config import TrainConfig
from mammosae_jax.training.loop import train
from helpers.train_data import DIM, FaultyCache, write_train_cache

COMMON = ["--batch-size", "16", "--val-fraction", "0.25", "--l1", "1e-3", "--lr", "1e-2", "--expansion", "4",
          "--resample-tokens", "64", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return write_train_cache(tmp_path_factory.mktemp("cache") / "c")


def _args(cache_path, out, *extra):
    return ["--cache", str(cache_path), "--out", str(out), *COMMON, *extra]


def _run(capsys, argv):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err.strip().splitlines()


def test_resume_in_the_middle_of_a_metrics_window_logs_what_an_uninterrupted_run_logs(tiny_cache, tmp_path):
    sae_cfg = SAEConfig(DIM, 4 * DIM, l1_coeff=1e-3)
    tc = TrainConfig(lr=1e-2, batch_size=16, epochs=2, val_fraction=0.25, resample_every_epochs=0,
                     checkpoint_every=5, log_every=4)
    feats = cache_lib.open_cache(tiny_cache)
    train(feats, tmp_path / "full", sae_cfg, tc, progress=False)
    with pytest.raises(KeyboardInterrupt):  # dies at step 13; last checkpoint 10, inside the window 9..12
        train(FaultyCache(feats, bad_batch=4, epoch=1, fault="interrupt"), tmp_path / "resumed", sae_cfg, tc,
              progress=False)
    train(feats, tmp_path / "resumed", sae_cfg, tc, resume=True, progress=False)

    def records(path):
        recs = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "data_wait_fraction")} for r in recs]

    full, resumed = records(tmp_path / "full"), records(tmp_path / "resumed")
    assert [r["step"] for r in full if r.get("split") == "train"] == [4, 8, 12, 16]
    assert resumed == full  # the step-12 record averages steps 9..12, not 11..12


def test_resume_on_another_cache_is_refused_by_name(tiny_cache, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_args(tiny_cache, out, "--steps", "2", "--checkpoint-every", "1")) == 0
    other = write_train_cache(tmp_path / "other", seed=1)  # same dim, size and split: other features
    before = (out / "config.json").read_text()
    rc, err = _run(capsys, _args(other, out, "--steps", "3", "--resume"))
    assert rc == 2 and err == [f"error: --resume on another cache (different content); the run trained on "
                               f"'{tiny_cache.absolute()}'; use the same settings or a new --out"]
    assert (out / "config.json").read_text() == before  # the cache path is not rewritten


def test_resume_on_a_moved_copy_of_the_cache_continues(tiny_cache, tmp_path):
    out = tmp_path / "r"
    assert main(_args(tiny_cache, out, "--steps", "2", "--checkpoint-every", "1")) == 0
    moved = shutil.copytree(tiny_cache, tmp_path / "moved")
    assert main(_args(moved, out, "--steps", "3", "--resume")) == 0
    assert json.loads((out / "config.json").read_text())["data"]["cache"] == str(moved.absolute())


def test_resume_of_an_old_run_without_content_id_on_another_path_is_refused(tiny_cache, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_args(tiny_cache, out, "--steps", "2", "--checkpoint-every", "1")) == 0
    config = json.loads((out / "config.json").read_text())
    del config["data"]["cache_content"]  # as written before content ids existed
    (out / "config.json").write_text(json.dumps(config))
    moved = shutil.copytree(tiny_cache, tmp_path / "moved")
    rc, err = _run(capsys, _args(moved, out, "--steps", "3", "--resume"))
    assert rc == 2 and err == [f"error: --resume on another cache: the run trained on '{tiny_cache.absolute()}', "
                               f"now '{moved.absolute()}' (the run records no cache content id to compare); "
                               "use the same settings or a new --out"]


def test_resume_of_a_run_older_than_a_setting_takes_that_settings_default(tiny_cache, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_args(tiny_cache, out, "--steps", "2", "--checkpoint-every", "1")) == 0
    config = json.loads((out / "config.json").read_text())
    for key in ("bandwidth", "init_threshold", "prefixes"):  # as written before the jumprelu/matryoshka variants
        del config["sae"][key]
    (out / "config.json").write_text(json.dumps(config))
    assert main(_args(tiny_cache, out, "--steps", "3", "--resume")) == 0
    config["sae"].pop("bandwidth", None)
    (out / "config.json").write_text(json.dumps(config))
    rc, err = _run(capsys, _args(tiny_cache, out, "--steps", "4", "--resume", "--bandwidth", "0.1"))
    assert rc == 2 and err == ["error: --resume with a different sae setting 'bandwidth': the run used 0.05, now 0.1; "
                               "use the same settings or a new --out"]


def test_resume_of_a_run_older_than_the_device_feed_needs_the_stream_it_used(tiny_cache, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_args(tiny_cache, out, "--steps", "2", "--checkpoint-every", "1", "--feed", "stream")) == 0
    config = json.loads((out / "config.json").read_text())
    del config["train"]["feed"], config["train"]["window_mb"]  # as written before --feed existed
    (out / "config.json").write_text(json.dumps(config))
    rc, err = _run(capsys, _args(tiny_cache, out, "--steps", "3", "--resume"))
    assert rc == 2 and err == ["error: --resume with a different train setting 'feed': the run used 'stream', now "
                               "'device'; use the same settings or a new --out"]
    assert main(_args(tiny_cache, out, "--steps", "3", "--resume", "--feed", "stream")) == 0


def test_resume_with_another_train_split_is_refused(tiny_cache, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_args(tiny_cache, out, "--steps", "2", "--checkpoint-every", "1")) == 0
    rc, err = _run(capsys, _args(tiny_cache, out, "--steps", "3", "--resume", "--train-split", "test"))
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("error: --resume on a different data setting 'train_split': the run used "
                             "'training', now 'test'")


HOLD = ("import sys, time; from cache.lock import FolderLock, lock_output; "
        "lock = lock_output(sys.argv[1]) if sys.argv[2:] == ['output'] else FolderLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(60)")


def test_a_second_trainer_of_one_run_folder_is_refused_and_a_killed_ones_lock_is_taken(tiny_cache, tmp_path, capsys):
    out = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        rc, err = _run(capsys, _args(tiny_cache, out, "--steps", "2"))
        assert rc == 2 and err == [f"error: {out} is being trained by another live process (pid {holder.pid}); "
                                   "wait for it to finish or stop it, or use another output folder"]
        assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / "write.lock").exists()  # left behind by the killed holder: stale, taken at once
    assert main(_args(tiny_cache, out, "--steps", "2")) == 0


@pytest.mark.parametrize("flag, value, message", [
    ("--steps", "0", "--steps must be a finite number >= 1, got 0"),
    ("--epochs", "0", "--epochs must be a finite number >= 1, got 0"),
    ("--steps", "-3", "--steps must be a finite number >= 1, got -3"),
    ("--lr", "-1", "--lr must be a finite number > 0, got -1.0"),
    ("--lr", "0", "--lr must be a finite number > 0, got 0.0"),
    ("--lr", "nan", "--lr must be a finite number > 0, got nan"),
    ("--lr", "inf", "--lr must be a finite number > 0, got inf"),
    ("--l1", "-1", "--l1 must be a finite number >= 0, got -1.0"),
    ("--l1", "nan", "--l1 must be a finite number >= 0, got nan"),
    ("--token-fraction", "0", "--token-fraction must be a finite number > 0 and <= 1, got 0.0"),
    ("--token-fraction", "1.5", "--token-fraction must be a finite number > 0 and <= 1, got 1.5"),
    ("--b1", "1", "--b1 must be a finite number >= 0 and < 1, got 1.0"),
    ("--val-fraction", "1", "--val-fraction must be a finite number >= 0 and < 1, got 1.0"),
])
def test_each_bad_numeric_flag_is_one_error_line_before_any_work(tiny_cache, tmp_path, capsys, flag, value, message):
    out = tmp_path / "r"
    argv = _args(tiny_cache, out, *(("--steps", "2") if flag not in ("--steps", "--epochs") else ()))
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    rc, err = _run(capsys, argv)
    assert rc == 2 and err == [f"error: {message}"]
    assert not out.exists()


def test_a_second_sweep_into_one_folder_is_refused(tiny_cache, tmp_path, capsys):
    from mammosae_jax.cli.sweep import main as sweep_main

    out = tmp_path / "sweep"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "output"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        rc = sweep_main(["--cache", str(tiny_cache), "--out", str(out), "--variant", "topk", "--k", "4",
                         "--lr", "1e-2", "--expansion", "2", "--steps", "2", "--batch-size", "16", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err == [f"error: {out} is being trained by another live process (pid {holder.pid}); "
                                   "wait for it to finish or stop it, or use another output folder"]
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
