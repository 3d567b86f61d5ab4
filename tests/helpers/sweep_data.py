"""A tiny labelled cache with a concept head, for the sweep's concept report (tests/test_sweep_cli.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers.train_data import DIM, GRID


def write_labelled_cache(path: Path, n_images: int = 48, seed: int = 1) -> Path:
    """`n_images` images (2 per patient, every 4th patient in `test`); Mass = 1 when atom 0 is strong.

    The stored head reads the pooled projection on atom 0, so the concept is partly recoverable
    from a good reconstruction (raw-feature AUROC 0.86, not 1: the SAE-only AUROC is informative);
    both classes occur in the test split.
    """
    from cache import CacheWriter

    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(12, DIM)).astype(np.float32)
    mass = (np.arange(n_images) // 2 + np.arange(n_images)) % 3 == 0
    codes = rng.exponential(size=(n_images, *GRID, 12)) * (rng.random((n_images, *GRID, 12)) < 0.2)
    codes[..., 0] += np.where(mass, 0.5, 0.0)[:, None, None]  # weak: raw AUROC 0.86 on 12 test images
    maps = (codes @ atoms + 0.05 * rng.normal(size=(n_images, *GRID, DIM)) + 0.5).astype(np.float32)
    split = ["test" if (i // 2) % 4 == 3 else "training" for i in range(n_images)]
    with CacheWriter(path, grid=GRID, dim=DIM, dtype="float32", label_names=["Mass"], shard_size=8) as w:
        w.add(maps, patient_id=[f"p{i // 2:03d}" for i in range(n_images)],
              image_id=[f"img{i:03d}.png" for i in range(n_images)], split=split,
              labels=mass.astype(np.int64)[:, None])
        direction = atoms[0] / np.linalg.norm(atoms[0])
        w.save_head(direction[None], np.array([-float(direction @ maps.mean((1, 2)).mean(0))], np.float32),
                    label="Mass", class_names=["0", "1"])
    return path
