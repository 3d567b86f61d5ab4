"""Tiny synthetic feature caches for the training tests (tests/test_train*.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

GRID = (2, 4)
DIM = 16


def write_train_cache(path: Path, n_images: int = 24, dim: int = DIM, seed: int = 0) -> Path:
    """A float32 cache of `n_images` (2 per patient, every 6th patient in `test`) with sparse structure.

    Each position is a non-negative sparse combination of 24 fixed atoms plus noise, so an SAE has
    something to learn.
    """
    from cache import CacheWriter

    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(24, dim)).astype(np.float32)
    codes = rng.exponential(size=(n_images, *GRID, 24)) * (rng.random((n_images, *GRID, 24)) < 0.15)
    maps = (codes @ atoms + 0.05 * rng.normal(size=(n_images, *GRID, dim)) + 0.5).astype(np.float32)
    patients = [f"p{i // 2:03d}" for i in range(n_images)]
    with CacheWriter(path, grid=GRID, dim=dim, dtype="float32", label_names=["Mass"], shard_size=8) as w:
        if n_images:
            w.add(maps, patient_id=patients, image_id=[f"img{i:03d}.png" for i in range(n_images)],
                  split=["test" if (i // 2) % 6 == 5 else "training" for i in range(n_images)],
                  labels=np.zeros((n_images, 1), np.int64))
    return path


class FaultyCache:
    """A real cache whose training stream or windows misbehave at one batch: NaN tokens or an
    interruption (for windows: when the window holding that batch is read)."""

    def __init__(self, real, bad_batch: int, epoch: int = 0, fault: str = "nan", min_images: int = 8):
        self._real, self._bad, self._epoch, self._fault = real, bad_batch, epoch, fault
        self._min_images = min_images  # the training stream (validation streams cover fewer images)

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __len__(self):
        return len(self._real)

    def iter_tokens(self, batch_size, seed, epoch, fraction=1.0, images=None, **kw):
        stream = self._real.iter_tokens(batch_size, seed, epoch, fraction, images, **kw)
        training = kw.get("drop_last") is True and len(images) >= self._min_images
        if epoch != self._epoch or not training:
            return stream  # resampling and validation streams are left alone
        return self._faulty(stream)

    def _faulty(self, stream):
        try:
            for i, batch in enumerate(stream):
                if i == self._bad:
                    if self._fault == "interrupt":
                        raise KeyboardInterrupt("simulated kill")
                    batch.tokens[0, 0] = np.nan
                yield batch
        finally:
            stream.close()

    def iter_windows(self, batch_size, seed, epoch, fraction=1.0, images=None, **kw):
        windows = self._real.iter_windows(batch_size, seed, epoch, fraction, images, **kw)
        if epoch != self._epoch or len(images) < self._min_images:
            return windows
        return self._faulty_windows(windows, batch_size)

    def _faulty_windows(self, windows, batch_size):
        for w in windows:
            if w.first_batch <= self._bad < w.first_batch + w.n_batches:
                if self._fault == "interrupt":
                    raise KeyboardInterrupt("simulated kill")
                w.tokens[w.order[(self._bad - w.first_batch) * batch_size]] = np.nan
            yield w
