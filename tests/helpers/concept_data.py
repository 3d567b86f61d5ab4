"""A tiny feature cache with planted concepts and a small SAE, for the concept/intervention tests.

Features are non-negative (like swish outputs) with one direction per concept switched on at a few
positions of positive images, so heads, rankings and interventions have something to find.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import pandas as pd

from cache import CacheWriter
from mammosae_jax.models import sae as sae_lib
from mammosae_jax.models.sae_io import SAE, save_sae

GRID = (3, 4)
DIM = 16
N_LATENTS = 48
LABELS = ("Mass", "Suspicious_Calcification", "density")


class ConceptFixture(NamedTuple):
    cache_path: Path
    sae_path: Path
    sae: SAE
    head_weight: np.ndarray  # the head stored in the cache (Suspicious_Calcification)


def make_maps(n: int, labels_NL: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Feature maps (n, H, W, C) with concept directions planted at random positions."""
    h, w = GRID
    maps = rng.gamma(2.0, 0.2, size=(n, h, w, DIM)).astype(np.float32)
    directions = np.eye(DIM, dtype=np.float32)[:2] * 2.0 + 0.3  # Mass, calcification
    for i in range(n):
        for j in range(2):
            if labels_NL[i, j]:
                ys, xs = rng.integers(0, h, 2), rng.integers(0, w, 2)
                maps[i, ys, xs] += directions[j] * rng.uniform(0.7, 1.3)
        maps[i] += 0.05 * labels_NL[i, 2]  # density: a global brightness shift
    return maps


def write_concept_cache(path: Path, n_train: int = 24, n_test: int = 16, seed: int = 0) -> Path:
    """Cache with splits 'training' and 'test', row table (duplicate rows per image) and a head."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    labels = np.zeros((n, 3), np.int64)
    labels[:, 0] = rng.random(n) < 0.35
    labels[:, 1] = rng.random(n) < 0.35
    labels[:, 2] = rng.integers(0, 4, n)
    for split_start, split_n in ((0, n_train), (n_train, n_test)):  # both classes in each split
        labels[split_start, :2] = 1
        labels[split_start + 1, :2] = 0
        labels[split_start : split_start + 4, 2] = [0, 1, 2, 3]
    split = np.array(["training"] * n_train + ["test"] * n_test)
    maps = make_maps(n, labels, rng)
    rows = []
    for i in range(n):  # one row per finding: positive images get an extra all-negative row
        rows.append({"image_index": i, "Mass": int(labels[i, 0]), "Suspicious_Calcification": int(labels[i, 1]),
                     "density": int(labels[i, 2]), "split": split[i]})
        if labels[i, 0] or labels[i, 1]:
            rows.append({**rows[-1], "Mass": 0, "Suspicious_Calcification": 0})
    w = np.zeros((1, DIM), np.float32)
    w[0, 1] = 3.0
    w[0, 2:] = -0.2
    with CacheWriter(path, grid=GRID, dim=DIM, dtype="float32", label_names=list(LABELS), shard_size=16) as cw:
        cw.add(maps, patient_id=[f"p{i // 2}" for i in range(n)], image_id=[f"img{i}.png" for i in range(n)],
               split=split, labels=labels)
        cw.set_rows(pd.DataFrame(rows))
        cw.save_head(w, np.array([-1.5], np.float32), label="Suspicious_Calcification", class_names=["0", "1"])
    return path


def make_sae(seed: int = 0) -> SAE:
    """A ReLU SAE whose decoder rows are the planted directions plus random ones (tied encoder)."""
    config = sae_lib.SAEConfig(d_in=DIM, n_latents=N_LATENTS, init="tied")
    params = sae_lib.init_params(config, jax.random.key(seed))
    params["b_enc"] = params["b_enc"] - 0.2
    return SAE(config, params)


def build(tmp: Path) -> ConceptFixture:
    cache_path = write_concept_cache(tmp / "cache")
    sae = make_sae()
    sae_path = tmp / "sae_run"
    save_sae(sae_path, sae)
    w = np.zeros((1, DIM), np.float32)
    w[0, 1] = 3.0
    w[0, 2:] = -0.2
    return ConceptFixture(cache_path, sae_path, sae, w)
