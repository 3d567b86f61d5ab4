"""What `train --resume` must find unchanged, and the lock that keeps one trainer per run folder.

A resumed run continues an optimiser state, so everything that decides its numbers must be the
same: the SAE and train settings (but the few in RESUMABLE_CHANGES) and the data — the cache's
content (its `content_id`, not its path: a moved cache is the same cache), the split trained on,
the patients held out and the epoch length. Each difference is refused by name.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

# fields that may differ when resuming (they do not change the computation)
RESUMABLE_CHANGES = {"steps", "epochs", "checkpoint_every", "keep_checkpoints", "log_every", "prefetch",
                     "val_max_tokens"}
# the `data` fields a resume must match; `cache` (the path) is checked only when no content id was recorded
DATA_KEYS = ("cache_content", "train_split", "val_patients", "n_train_images", "n_val_images", "steps_per_epoch",
             "cache_dim", "cache_grid", "cache_images")
WAY_OUT = "use the same settings or a new --out"
# what a run did before a field existed, where that is not the field's default now
BEFORE_FIELD = {"train": {"feed": "stream"}}


class ResumeError(Exception):
    """`--resume` would continue a run with other settings or data."""


def content_id(manifest: dict) -> str:
    """sha256 over the cache's fingerprint and its shards' sha256s: the same bytes give the same id."""
    payload = {"fingerprint": manifest.get("fingerprint"), "n_images": manifest.get("n_images"),
               "shards": [s.get("sha256") for s in manifest.get("shards", [])]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _defaults() -> dict[str, dict[str, Any]]:
    """What a run whose config.json lacks a field did: the field's default, or what BEFORE_FIELD says."""
    from mammosae_jax.models.sae import SAEConfig
    from mammosae_jax.training.config import TrainConfig

    return {section: {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
            | BEFORE_FIELD.get(section, {}) for section, cls in (("sae", SAEConfig), ("train", TrainConfig))}


def check_resume(path: Path, sae: dict, train: dict, data: dict) -> None:
    """ResumeError naming the first setting of `path` (a run's config.json) that the new run changes."""
    if not path.exists():
        raise ResumeError(f"{path} is missing; cannot check that --resume uses the same settings")
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResumeError(f"{path} is damaged ({e}); cannot check that --resume uses the same settings") from None
    defaults = _defaults()
    for section, new in (("sae", sae), ("train", train)):
        for key, value in new.items():
            recorded = old.get(section, {})
            before = recorded[key] if key in recorded else defaults[section].get(key)
            if key not in RESUMABLE_CHANGES and before != value:
                raise ResumeError(f"--resume with a different {section} setting {key!r}: the run used "
                                  f"{before!r}, now {value!r}; {WAY_OUT}")
    before = old.get("data", {})
    if "cache_content" not in before and before.get("cache") != data.get("cache"):
        raise ResumeError(f"--resume on another cache: the run trained on {before.get('cache')!r}, now "
                          f"{data.get('cache')!r} (the run records no cache content id to compare); {WAY_OUT}")
    for key in DATA_KEYS:
        if key in before and before[key] != data.get(key):
            if key == "cache_content":
                what = "another cache (different content)"
            else:
                what = f"a different data setting {key!r}"
                if key != "val_patients":
                    what += f": the run used {before[key]!r}, now {data.get(key)!r}"
            raise ResumeError(f"--resume on {what}; the run trained on {before.get('cache')!r}; {WAY_OUT}")


def run_lock(out: Path, is_writer: bool) -> contextlib.AbstractContextManager:
    """The run folder's lock on the process that writes it (process 0), a no-op elsewhere."""
    from cache.lock import FolderLock

    return FolderLock(out, what="trained") if is_writer else contextlib.nullcontext()
