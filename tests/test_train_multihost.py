"""Two JAX processes on localhost CPU (gloo collectives), each streaming its own part of the tokens."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mammosae_jax import load_sae
from helpers.train_data import write_train_cache

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_one_model(tmp_path):
    cache_path = write_train_cache(tmp_path / "c")
    out = tmp_path / "run"
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "mammosae_jax.train", "--cache", str(cache_path), "--out", str(out),
         "--steps", "6", "--batch-size", "16", "--val-fraction", "0.25", "--expansion", "2",
         "--checkpoint-every", "3", "--log-every", "2", "--lr", "1e-2",
         "--coordinator-address", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    try:
        for p in procs:
            results.append(p.communicate(timeout=420))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-2000:]
    assert "trained 6 steps" in results[0][0] and "trained" not in results[1][0]  # only process 0 reports
    config = json.loads((out / "config.json").read_text())
    assert config["runtime"]["process_count"] == 2 and len(config["runtime"]["devices"]) == 4
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r.get("split") == "train"] == [2, 4, 6]
    sae = load_sae(out)
    np.testing.assert_allclose(np.linalg.norm(sae.params["W_dec"], axis=1), 1.0, rtol=1e-5)
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
