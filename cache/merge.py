"""merge_ranks: turn the per-rank shards of a multi-process extraction into one cache."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import CacheBusyError, CacheIncompleteError, CacheMissingShardError, CacheNotFoundError, CacheSettingsError
from .format import (MANIFEST, MERGE_PLAN, atomic_write_json, fsync_dir, lock_name, rank_manifests,
                     read_manifest, settings_diff, settings_of, shard_name)
from .lock import lock_is_held


def _plan(folder: Path) -> dict:
    """Check the rank manifests and decide the renames and the merged manifest."""
    found = rank_manifests(folder)
    if not found:
        raise CacheNotFoundError(f"{folder} has neither manifest.json nor per-rank manifests; nothing to merge")
    manifests = {r: read_manifest(p) for r, p in found.items()}
    world_size = manifests[min(manifests)]["world_size"]
    missing = sorted(set(range(world_size)) - set(manifests))
    if missing:
        raise CacheIncompleteError(f"{folder}: ranks {missing} of {world_size} have not written a manifest; "
                                   "run them (same settings) before merging")
    first = manifests[0]
    for r, m in manifests.items():
        if m["world_size"] != world_size:
            raise CacheSettingsError(f"{folder}: rank {r} was run with world_size {m['world_size']}, "
                                     f"rank 0 with {world_size}; re-extract with --overwrite")
        diff = settings_diff(settings_of(first), settings_of(m))
        if diff:
            raise CacheSettingsError(f"{folder}: rank {r} differs from rank 0 ({'; '.join(diff)}); "
                                     "re-extract that rank with the same settings")
        if not m["complete"]:
            raise CacheIncompleteError(f"{folder}: rank {r} has not finished (no close()); resume it, then merge")
        if (pid := lock_is_held(folder / lock_name(r))) is not None:
            raise CacheBusyError(f"{folder}: rank {r} is still writing (pid {pid}); merge after a barrier")
    k_values = {m["n_logits"] for m in manifests.values() if m["n_images"]}
    if len(k_values) > 1:
        raise CacheSettingsError(f"{folder}: ranks disagree on the number of logits {sorted(map(str, k_values))}")
    merged = {**first, "complete": True, "rank": 0, "world_size": 1, "shards": [], "n_images": 0,
              "n_logits": k_values.pop() if k_values else None, "ranks": []}
    for side in ("rows", "head"):
        entries = [m[side] for m in manifests.values() if m.get(side)]
        if any(e != entries[0] for e in entries):
            raise CacheSettingsError(f"{folder}: ranks saved different {side} files; call set_rows/save_head on rank 0 only")
        merged[side] = entries[0] if entries else None
    renames = []
    for r in range(world_size):
        m = manifests[r]
        merged["ranks"].append({"rank": r, "n_images": m["n_images"], "n_shards": len(m["shards"])})
        for entry in m["shards"]:
            dst = shard_name(len(merged["shards"]))
            renames.append([entry["file"], dst])
            merged["shards"].append({**entry, "file": dst})
            merged["n_images"] += entry["n_images"]
    return {"renames": renames, "manifest": merged, "rank_manifests": [p.name for p in found.values()]}


def merge_ranks(path: str | os.PathLike) -> dict:
    """Merge rank shards into one cache (rank 0's images first, then rank 1's, ...); returns the manifest.

    Call once, from one process, after every rank has closed its writer. Interrupted merges resume
    when called again (the plan is saved first); calling it on a merged cache returns its manifest.
    """
    folder = Path(path)
    plan_path = folder / MERGE_PLAN
    if plan_path.exists():
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
    elif (folder / MANIFEST).exists() and not rank_manifests(folder):
        return read_manifest(folder / MANIFEST)
    else:
        plan = _plan(folder)
        atomic_write_json(plan_path, plan)
    for src, dst in plan["renames"]:
        if (folder / src).exists():
            os.replace(folder / src, folder / dst)
        elif not (folder / dst).exists():
            raise CacheMissingShardError(f"{folder / src} vanished during the merge; re-extract that rank")
    fsync_dir(folder)
    atomic_write_json(folder / MANIFEST, plan["manifest"])
    for name in plan["rank_manifests"]:
        (folder / name).unlink(missing_ok=True)
    plan_path.unlink()
    fsync_dir(folder)
    return plan["manifest"]
