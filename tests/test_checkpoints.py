"""Checkpoint loading: the three real layouts, strict keys, safe unpickling, conversion CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.encoder_data import ONE_THREAD_ENV, encoder_state, one_torch_thread, write_classifier_pth, write_clip_tar  # noqa: F401
from safetensors import safe_open

from extract import checkpoints
from extract.checkpoints import CheckpointError, infer_arch, load_encoder_state, read_checkpoint
from extract.convert_checkpoint import main as convert_main
from extract.encoder import build_encoder, local_features

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def state():
    return encoder_state("b2", seed=0)


def assert_same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_clip_tar_with_omegaconf_config_loads(tmp_path, state):
    path = tmp_path / "b2-model-best-epoch-10.tar"
    write_clip_tar(path, state, channels=1408)
    ckpt = read_checkpoint(path)
    assert ckpt.layout == "clip" and ckpt.head is None and ckpt.meta["epoch"] == 7
    assert_same_state(ckpt.encoder, state)
    assert infer_arch(ckpt, str(path)) == "b2"
    model = build_encoder("b2")
    load_encoder_state(model, ckpt.encoder, str(path))
    ref = build_encoder("b2")
    ref.load_state_dict(state, strict=False)
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(local_features(model, x), local_features(ref, x), rtol=0, atol=0)


def test_classifier_pth_loads_encoder_and_head(tmp_path, state):
    w, b = torch.randn(1, 1408), torch.tensor([0.25])
    path = tmp_path / "b2_Suspicious_Calcification_fine_tuned.pth"
    write_classifier_pth(path, state, w, b)
    ckpt = read_checkpoint(path)
    assert ckpt.layout == "classifier"
    assert_same_state(ckpt.encoder, state)
    torch.testing.assert_close(ckpt.head.weight, w)
    torch.testing.assert_close(ckpt.head.bias, b)
    assert ckpt.head.label == "Suspicious_Calcification"
    density = tmp_path / "density.pth"
    write_classifier_pth(density, state, torch.randn(4, 1408), torch.zeros(4))
    assert read_checkpoint(density).head.label == "density"
    assert read_checkpoint(density).head.class_names == ["A", "B", "C", "D"]


def test_convert_cli_round_trip_to_safetensors(tmp_path, state, capsys):
    w, b = torch.randn(1, 1408), torch.tensor([-0.5])
    src = tmp_path / "mass.pth"
    write_classifier_pth(src, state, w, b)
    dst = tmp_path / "out" / "mass.safetensors"
    convert_main([str(src), str(dst)])
    assert "EfficientNet-B2" in capsys.readouterr().out
    with safe_open(str(dst), framework="pt") as f:
        names = set(f.keys())
        meta = f.metadata()
    assert names == {f"encoder.{k}" for k in state} | {"head.weight", "head.bias"}
    assert meta["format"] == "mammosae-jax/encoder"
    ckpt = read_checkpoint(dst)
    assert ckpt.layout == "safetensors" and ckpt.meta["arch"] == "b2" and ckpt.meta["converted_from"] == "classifier"
    assert_same_state(ckpt.encoder, state)
    torch.testing.assert_close(ckpt.head.weight, w)
    torch.testing.assert_close(ckpt.head.bias, b)
    assert ckpt.head.label == "Mass"
    assert [p.name for p in dst.parent.iterdir()] == ["mass.safetensors"]  # no temp file left


def test_convert_clip_tar_via_module_cli(tmp_path, state):
    src, dst = tmp_path / "clip.tar", tmp_path / "clip.safetensors"
    write_clip_tar(src, state, channels=1408)
    result = subprocess.run([sys.executable, "-m", "extract.convert_checkpoint", str(src), str(dst)],
                            cwd=REPO, capture_output=True, text=True, env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stderr
    ckpt = read_checkpoint(dst)
    assert ckpt.head is None and ckpt.meta["epoch"] == 7
    assert_same_state(ckpt.encoder, state)


def test_pickle_that_runs_a_command_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"image_encoder._bn0.weight": torch.ones(2)}, "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil\.pth: its pickle references posix\.system"):
        read_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(SystemExit) as exit_info:
        convert_main([str(path), str(tmp_path / "x.safetensors")])
    assert exit_info.value.code == 2
    assert not marker.exists() and not (tmp_path / "x.safetensors").exists()


def test_missing_omegaconf_gives_instructions(tmp_path, state, monkeypatch):
    path = tmp_path / "clip.tar"
    write_clip_tar(path, state, channels=1408)
    monkeypatch.setattr(checkpoints, "_omegaconf_globals", lambda: None)
    with pytest.raises(CheckpointError, match=r"holds an omegaconf config: install omegaconf .*`"
                                              r"python -m extract\.convert_checkpoint"):
        read_checkpoint(path)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, state, capsys):
    bad = dict(state)
    del bad["_blocks.3._bn1.running_var"]
    bad["_blocks.0._extra.weight"] = torch.zeros(3)
    bad["_conv_stem.weight"] = torch.zeros(32, 3, 5, 5)
    path = tmp_path / "bad.pth"
    write_classifier_pth(path, bad, torch.randn(1, 1408), torch.zeros(1))
    ckpt = read_checkpoint(path)
    with pytest.raises(CheckpointError) as err:
        load_encoder_state(build_encoder("b2"), ckpt.encoder, str(path))
    message = str(err.value)
    assert "missing 1: _blocks.3._bn1.running_var" in message
    assert "unexpected 1: _blocks.0._extra.weight" in message
    assert "mis-shaped 1: _conv_stem.weight (32, 3, 5, 5) != (32, 3, 3, 3)" in message
    with pytest.raises(SystemExit):
        convert_main([str(path), str(tmp_path / "bad.safetensors")])
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error: ") and "missing 1" in err_lines[0]


def test_only_fc_and_batch_counters_may_be_missing(state):
    model = build_encoder("b2")
    assert any(k.startswith("_fc.") for k in model.state_dict())
    assert not any(k.startswith("_fc.") for k in state)
    load_encoder_state(model, state, "state")  # no _fc: fine
    no_counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    load_encoder_state(model, no_counters, "state")
    for k in ("_bn1.weight", "_conv_head.weight"):
        with pytest.raises(CheckpointError, match=f"missing 1: {k}"):
            load_encoder_state(model, {j: v for j, v in state.items() if j != k}, "state")


def test_unknown_top_level_keys_and_non_checkpoints_are_refused(tmp_path, state):
    odd = tmp_path / "odd.pth"
    torch.save({"model": {**{f"image_encoder.{k}": v for k, v in state.items()}, "pool.p": torch.ones(1)}}, odd)
    with pytest.raises(CheckpointError, match=r"unexpected keys in 'model': pool\.p"):
        read_checkpoint(odd)
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    with pytest.raises(CheckpointError, match="expected a dict with a 'model' state dict"):
        read_checkpoint(bare)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read safetensors file"):
        read_checkpoint(junk)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.tar")
    b5_state_shape = dict(state, **{"_conv_head.weight": torch.zeros(2048, 352, 1, 1)})
    wrong = tmp_path / "wrong.pth"
    write_classifier_pth(wrong, b5_state_shape, torch.randn(1, 2048), torch.zeros(1))
    assert infer_arch(read_checkpoint(wrong), "wrong") == "b5"
