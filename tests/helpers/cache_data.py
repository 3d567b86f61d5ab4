"""Synthetic cache contents shared by the tests/test_cache*.py files (and their subprocesses)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

GRID = (3, 4)
DIM = 6
P = GRID[0] * GRID[1]  # positions per image
TOKEN_MB = DIM * 2 / 2**20  # one float16 token, in MiB
STREAM_IMAGES = 11  # images of the token-stream / window / feed tests' cache (shards of 4: a partial last one)
LABELS = ("Mass", "density")
ENCODER = {"arch": "efficientnet-b5", "checkpoint": "fake.tar", "sha256": "0" * 64, "layer": "_bn1"}
PREPROC = {"mean": 0.3089279, "std": 0.25053555408335154}


def image_features(i: int, grid=GRID, dim=DIM) -> np.ndarray:
    """Deterministic float32 feature map (H, W, C) of image i: distinct per image and position."""
    rng = np.random.default_rng([1234, i])
    return (rng.standard_normal((*grid, dim)) * 2.0 + i * 0.01).astype(np.float32)


def image_meta(i: int) -> dict:
    """Identifiers, labels and logits of image i (two images per patient, every 4th patient in test)."""
    return {"patient_id": f"p{i // 2:03d}", "image_id": f"img{i:04d}.png",
            "split": "test" if (i // 2) % 4 == 3 else "training",
            "labels": np.array([i % 2, i % 4], np.int64),
            "logits": np.array([np.sin(i), np.cos(i), i / 10.0], np.float32)}


def add_images(writer, indices, grid=GRID, dim=DIM) -> None:
    """Add images `indices` (in one call) to a CacheWriter."""
    indices = list(indices)
    if not indices:
        return
    meta = [image_meta(i) for i in indices]
    writer.add(np.stack([image_features(i, grid, dim) for i in indices]),
               patient_id=[m["patient_id"] for m in meta], image_id=[m["image_id"] for m in meta],
               split=[m["split"] for m in meta], labels=np.stack([m["labels"] for m in meta]),
               logits=np.stack([m["logits"] for m in meta]))


def writer_kwargs(**over) -> dict:
    """Default CacheWriter settings of the tests."""
    kw = dict(grid=GRID, dim=DIM, dtype="float16", label_names=list(LABELS), encoder=ENCODER,
              preprocessing=PREPROC, shard_size=4)
    kw.update(over)
    return kw


def write_cache(path: Path, n: int, *, batch: int = 3, **over) -> Path:
    """Write a complete cache of n synthetic images, added `batch` at a time."""
    from cache import CacheWriter
    with CacheWriter(path, **writer_kwargs(**over)) as w:
        for a in range(0, n, batch):
            add_images(w, range(a, min(a + batch, n)), over.get("grid", GRID), over.get("dim", DIM))
    return path


def open_stream_cache(tmp_path_factory, name: str):
    """The token-stream tests' cache: STREAM_IMAGES images in shards of 4, opened."""
    from cache import open_cache

    return open_cache(write_cache(tmp_path_factory.mktemp(name) / "c", STREAM_IMAGES, shard_size=4))
