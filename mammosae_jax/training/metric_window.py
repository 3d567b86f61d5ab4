"""The running sums of the current metrics window, saved with every checkpoint.

A train record at step s averages the steps since the previous record. A run resumed from a
checkpoint in the middle of such a window restores the sums of the steps it already did, so its
records equal those of an uninterrupted run (bit for bit: float32 sums survive JSON exactly).
Saved by process 0 beside the checkpoints, one entry per checkpoint step; a single-process
resume restores it (multi-process resumes start the window afresh, as before).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cache.atomic import write_json_atomic

WINDOW_FILE = "metrics-window.json"
KEEP = 16  # entries kept (more than any keep_checkpoints in use)


def save_window(out: Path, step: int, acc: Any, n: int) -> None:
    """Record the window's sums `acc` (a pytree of arrays, or None) over `n` steps at checkpoint `step`."""
    path = out / WINDOW_FILE
    entries = _read(path)
    value = None if acc is None else {k: {"dtype": str(np.asarray(v).dtype), "value": np.asarray(v).tolist()}
                                      for k, v in jax.device_get(acc)._asdict().items()}
    entries[str(step)] = {"n": int(n), "sums": value}
    keep = sorted(entries, key=int)[-KEEP:]
    write_json_atomic(path, {k: entries[k] for k in keep})


def load_window(out: Path, step: int, like: type, log_every: int) -> tuple[Any, int]:
    """(sums, n) saved at `step` as a `like` NamedTuple of arrays; (None, 0) when none was saved or the
    window does not start on a `log_every` boundary (--log-every changed on resume)."""
    if jax.process_count() > 1:
        return None, 0
    entry = _read(out / WINDOW_FILE).get(str(step))
    if not entry or not entry["sums"] or (step - int(entry["n"])) % log_every:
        return None, 0
    sums = {k: jnp.asarray(np.asarray(v["value"], dtype=v["dtype"])) for k, v in entry["sums"].items()}
    return like(**sums), int(entry["n"])


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
