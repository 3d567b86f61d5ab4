"""Which images train and which validate, and how many steps an epoch has on every process."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class DataSplit(NamedTuple):
    train_images: np.ndarray  # (N_train,) int64 image indices
    val_images: np.ndarray  # (N_val,) int64
    val_patients: tuple[str, ...]


class DataError(ValueError):
    """The cache cannot feed this training run (the message says why and what to do)."""


def split_patients(cache, train_split: str, val_fraction: float, seed: int) -> DataSplit:
    """Hold out `val_fraction` of the *patients* of `train_split` (seeded), never single images.

    All images of one patient land on the same side, so validation measures generalisation to
    unseen patients. With val_fraction > 0 at least one patient is held out and one kept.
    """
    images = np.asarray(cache.split_indices(train_split), np.int64)
    patient_of = np.asarray(cache.labels["patient_id"].astype(str))[images]
    patients = np.unique(patient_of)  # sorted: independent of image order
    n_val = 0
    if val_fraction > 0 and len(patients) > 1:
        n_val = min(max(1, int(round(val_fraction * len(patients)))), len(patients) - 1)
    rng = np.random.default_rng([seed, 0x7A1])
    val_patients = np.sort(patients[rng.permutation(len(patients))[:n_val]])
    is_val = np.isin(patient_of, val_patients)
    return DataSplit(images[~is_val], images[is_val], tuple(str(p) for p in val_patients))


def batches_per_epoch(cache, images: np.ndarray, fraction: float, local_batch: int,
                      process_count: int) -> int:
    """Full batches every process can draw per epoch (the minimum over processes).

    All processes must run the same number of steps (the step is a collective), so an epoch
    ends when the process with the fewest tokens runs out.
    """
    per_process = [cache.n_tokens(fraction, images, shard_index=p, shard_count=process_count)
                   for p in range(process_count)]
    return min(per_process) // local_batch
