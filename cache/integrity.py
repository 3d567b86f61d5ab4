"""Structural checks of a manifest, and of a cache against the fingerprint its writer recorded.

`check_manifest` runs on every open: a manifest edited by hand or cut short gives one
CacheDamagedError naming the field, never a KeyError/IndexError later. `check_fingerprint` runs
in `FeatureCache.verify()`: the stored ids, image count and row table must be the ones the
extractor selected. A cache written before fingerprints existed (no `fingerprint` key) only gets a warning
there (the extractor refuses to resume it, see `format.settings_diff`); `fingerprint: null`
(a library writer given none) has nothing to check.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from .errors import CacheChecksumError, CacheDamagedError
from .format import rows_digest, sha256_file, sha256_strings

_TOP = {"complete": bool, "n_images": int, "grid": list, "dim": int, "dtype": str, "label_names": list,
        "shards": list}
_SHARD = {"file": str, "n_images": int, "bytes": int, "sha256": str}
REDO = "restore the cache from a copy or re-extract it with --overwrite"


class VerifyResult(NamedTuple):
    """What `FeatureCache.verify()` checked."""

    n_shards: int
    n_images: int
    n_bytes: int


class CacheFingerprintWarning(UserWarning):
    """The cache records no fingerprint, so verify() cannot tie it to its inputs."""


def _field(obj: Any, key: str, kind: type, where: str, path: Path) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        got = "missing" if not isinstance(obj, dict) or key not in obj else f"{value!r}"
        raise CacheDamagedError(f"{path}: {where}{key!r} is {got}, expected {kind.__name__}; "
                                f"the manifest is damaged: {REDO}")
    return value


def check_manifest(manifest: dict, path: Path) -> None:
    """Every field the reader relies on is present with the right type, and the counts add up."""
    for key, kind in _TOP.items():
        _field(manifest, key, kind, "", path)
    total = 0
    for i, entry in enumerate(manifest["shards"]):
        for key, kind in _SHARD.items():
            _field(entry, key, kind, f"shards[{i}].", path)
        if entry["n_images"] < 1:
            raise CacheDamagedError(f"{path}: shards[{i}] has n_images {entry['n_images']}; {REDO}")
        total += entry["n_images"]
    if total != manifest["n_images"]:
        raise CacheDamagedError(f"{path}: n_images is {manifest['n_images']} but the shards hold {total} images; "
                                f"the manifest was edited or is damaged: {REDO}")


def check_shard_count(n_ids: int, entry: dict, shard: Path) -> None:
    """A shard's stored id columns have as many entries as the manifest says it holds images."""
    if n_ids != entry["n_images"]:
        raise CacheDamagedError(f"{shard} holds {n_ids} images but the manifest says {entry['n_images']}; {REDO}")


def check_fingerprint(cache: Any) -> None:
    """The cache's ids and row table are those the writer's fingerprint describes (warn if it has none)."""
    if "fingerprint" not in cache.manifest:
        warnings.warn(f"{cache.path} records no fingerprint (written by an older version): verify() checked "
                      "its files but cannot tie them to a checkpoint, CSV and split; re-extract it to record one",
                      CacheFingerprintWarning, stacklevel=3)
    fp = cache.manifest.get("fingerprint") or {}
    if not cache.manifest["complete"]:
        return  # read with allow_incomplete: a prefix of the fingerprinted image list
    if "n_images" in fp and fp["n_images"] != len(cache):
        raise CacheChecksumError(f"{cache.path} holds {len(cache)} images but its fingerprint says "
                                 f"{fp['n_images']}; the cache is mixed or damaged: {REDO}")
    ids = image_list_digest(cache.patient_ids, cache.image_ids, cache.splits)
    if "images_sha256" in fp and fp["images_sha256"] != ids:
        raise CacheChecksumError(f"{cache.path}: the stored image ids do not match the fingerprint's image list; "
                                 f"the cache is mixed or damaged: {REDO}")
    entry = cache.manifest.get("rows")
    if "rows_sha256" in fp and entry is not None:
        table = json.loads((cache.path / entry["file"]).read_text(encoding="utf-8"))
        if rows_digest(table) != fp["rows_sha256"]:
            raise CacheChecksumError(f"{cache.path / entry['file']} is not the row table of the fingerprint's CSV "
                                     f"rows; the cache is mixed or damaged: {REDO}")


def image_list_digest(patient_ids: list[str], image_ids: list[str], splits: list[str]) -> str:
    """The fingerprint's `images_sha256`: the ordered (patient_id, image_id, split) list."""
    return sha256_strings(list(patient_ids), list(image_ids), list(splits))


def verify_cache(cache) -> VerifyResult:
    """`FeatureCache.verify()`: every shard's sha256, every array read through its digest and finiteness
    check, the small arrays, row table and head, then the fingerprint."""
    n_bytes = 0
    for entry in cache._shards:
        p = cache.path / entry["file"]
        if sha256_file(p) != entry["sha256"]:
            raise CacheChecksumError(f"shard {p} does not match its sha256 in the manifest; "
                                     "the file is corrupt: restore it or re-extract")
        n_bytes += entry["bytes"]
    cache._verified[:] = False
    for run in cache._runs(cache._select(None), cache._run_images(64)):
        cache.read_run(run)
    cache.pooled()
    cache.logits()
    _ = cache.rows, cache.head()
    check_fingerprint(cache)
    return VerifyResult(len(cache._shards), len(cache), n_bytes)
