"""On-disk layout of the cache: file names, manifest I/O, checksums (see cache/README.md)."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import fsync_dir, write_bytes_atomic as atomic_write_bytes  # noqa: F401 - used by writer, merge, head
from .errors import CacheNotFoundError, CacheVersionError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ROWS_FILE = "rows.json"
HEAD_FILE = "head.safetensors"
MERGE_PLAN = "merge-plan.json"
DTYPES = ("float16", "float32")
# Settings that must be identical for a writer to resume (and for ranks to be merged).
SETTING_KEYS = ("grid", "dim", "dtype", "label_names", "encoder", "preprocessing", "shard_size", "fingerprint")
_RANK_MANIFEST = re.compile(r"^manifest-r(\d{2,})\.json$")


def shard_name(index: int, rank: int | None = None) -> str:
    """`shard-00003.h5` for a merged/single-writer cache, `shard-r01-00003.h5` for a rank."""
    return f"shard-{index:05d}.h5" if rank is None else f"shard-r{rank:02d}-{index:05d}.h5"


def manifest_name(rank: int | None = None) -> str:
    """`manifest.json`, or `manifest-r01.json` for one rank of a multi-process extraction."""
    return MANIFEST if rank is None else f"manifest-r{rank:02d}.json"


def lock_name(rank: int | None = None) -> str:
    """Name of the flock(2) file held while a writer is open."""
    return "write.lock" if rank is None else f"write-r{rank:02d}.lock"


def rank_manifests(folder: Path) -> dict[int, Path]:
    """Per-rank manifests present in `folder`, by rank."""
    found = {}
    for p in folder.iterdir() if folder.is_dir() else ():
        m = _RANK_MANIFEST.match(p.name)
        if m:
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def rank_block(n_images: int, rank: int, world_size: int) -> range:
    """Contiguous block of image indices that `rank` extracts; merge order is rank order."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    base, extra = divmod(n_images, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def sha256_file(path: Path, block: int = 8 << 20) -> str:
    """Hex sha256 of a whole file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(block)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def sha256_array(a: np.ndarray) -> str:
    """Hex sha256 of an array's C-order bytes (dtype and shape are checked separately)."""
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


def sha256_strings(*columns: list[str]) -> str:
    """Hex sha256 of string columns (their JSON encoding)."""
    return hashlib.sha256(json.dumps(columns, ensure_ascii=False).encode()).hexdigest()


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write JSON (UTF-8, indented, NaN refused)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode())


def read_manifest(path: Path) -> dict:
    """Load a manifest file and check its format version."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheNotFoundError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheVersionError(f"{path} is not a valid manifest ({e}); the cache is damaged: re-extract it") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CacheVersionError(
            f"{path} has unknown format_version {version!r}; this is not a mammosae-jax feature cache "
            f"(expected format_version {FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise CacheVersionError(
            f"{path} has format_version {version}, newer than this code supports ({FORMAT_VERSION}); "
            "upgrade mammosae-jax to read it")
    return manifest


def settings_of(manifest: dict) -> dict:
    """The subset of a manifest that must match for resuming or merging."""
    return {k: manifest.get(k) for k in SETTING_KEYS}


def settings_diff(old: dict, new: dict) -> list[str]:
    """Human-readable list of the settings that differ; a fingerprint is compared field by field."""
    out = []
    for k in SETTING_KEYS:
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if k == "fingerprint" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"fingerprint {f}: existing {a.get(f)!r} != requested {b.get(f)!r}"
                    for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
        elif k == "fingerprint" and a is None:
            out.append("fingerprint: the existing cache records none (written by an older version), "
                       "so what it holds cannot be checked")
        else:
            out.append(f"{k}: existing {a!r} != requested {b!r}")
    return out


def rows_digest(table: dict) -> str:
    """Hex sha256 of a row table as stored in rows.json (its columns and data)."""
    payload = json.dumps([table["columns"], table["data"]], ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(payload.encode()).hexdigest()
