"""The new variants through the commands: `train --variant jumprelu|matryoshka`, `sweep --variant
jumprelu`; the run folders load with their learned thresholds."""
import json

import numpy as np
import pytest

from mammosae_jax import load_sae
from mammosae_jax.cli.sweep import main as sweep_main
from mammosae_jax.cli.train import main as train_main
from helpers.train_data import DIM, write_train_cache

COMMON = ["--batch-size", "16", "--val-fraction", "0.25", "--lr", "1e-2", "--expansion", "2", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return write_train_cache(tmp_path_factory.mktemp("cache") / "c")


def test_train_jumprelu_learns_per_latent_thresholds(tiny_cache, tmp_path):
    out = tmp_path / "run"
    assert train_main(["--cache", str(tiny_cache), "--out", str(out), "--variant", "jumprelu", "--l1", "1e-3",
                       "--bandwidth", "0.1", "--init-threshold", "0.05", "--epochs", "2", *COMMON]) == 0
    sae = load_sae(out)
    assert (sae.config.variant, sae.config.bandwidth, sae.config.init_threshold) == ("jumprelu", 0.1, 0.05)
    thr = np.asarray(sae.params["threshold"])
    assert thr.shape == (2 * DIM,) and (thr >= 0).all() and len(np.unique(thr)) > 1  # trained, per latent
    assert json.loads((out / "cfg.json").read_text())["architecture"] == "jumprelu"


def test_train_matryoshka_learns_its_inference_threshold(tiny_cache, tmp_path):
    out = tmp_path / "run"
    assert train_main(["--cache", str(tiny_cache), "--out", str(out), "--variant", "matryoshka", "--k", "4",
                       "--prefixes", "3", "--epochs", "2", *COMMON]) == 0
    sae = load_sae(out)
    assert (sae.config.variant, sae.config.k, sae.config.prefixes) == ("matryoshka", 4, 3)
    assert sae.config.threshold is not None and sae.config.threshold > 0
    assert json.loads((out / "cfg.json").read_text())["architecture"] == "jumprelu"


def test_sweep_varies_the_jumprelu_l0_coefficient(tiny_cache, tmp_path):
    out = tmp_path / "sweep"
    assert sweep_main(["--cache", str(tiny_cache), "--out", str(out), "--variant", "jumprelu", "--l1", "1e-4,1e-2",
                       "--lr", "1e-2", "--expansion", "2", "--steps", "8", "--batch-size", "16",
                       "--val-fraction", "0.25", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    runs = [load_sae(out / m["run"]) for m in summary["members"]]
    assert [r.config.l1_coeff for r in runs] == [1e-4, 1e-2] and all(r.config.variant == "jumprelu" for r in runs)
