"""CacheWriter: append feature maps image by image into whole-image shards, resumably."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from .convert import all_finite
from .errors import CacheChecksumError, CacheError, CacheInputError, CacheMissingShardError, CacheSettingsError
from .format import (DTYPES, FORMAT_VERSION, HEAD_FILE, MANIFEST, MERGE_PLAN, ROWS_FILE,
                     atomic_write_json, fsync_dir, lock_name, manifest_name, rank_manifests,
                     read_manifest, settings_diff, settings_of, sha256_array, sha256_file,
                     sha256_strings, shard_name)
from .head import Head, write_head
from .integrity import check_manifest
from .lock import FolderLock
from .write_support import (HDF5_WRITE_FAILED, check_room, default_producer, mute_hdf5_dealloc_errors, plain,
                            rows_table, write_error)

STRING = h5py.string_dtype("utf-8")


def cache_files(folder: Path, rank: int | None = None, *, everything: bool = False) -> list[Path]:
    """Files that belong to the cache in `folder`: one rank's, or (everything) all of them."""
    out = []
    for p in folder.iterdir():
        name = p.name.removesuffix(".tmp")
        is_rank = name.startswith("shard-r") or name.startswith("manifest-r")
        mine = (name.startswith(f"shard-r{rank:02d}-") or name == manifest_name(rank)) if rank is not None else False
        is_global = (name == MANIFEST or name in (ROWS_FILE, HEAD_FILE, MERGE_PLAN)
                     or (name.startswith("shard-") and name.endswith(".h5") and not is_rank))
        if everything and (is_rank or is_global) or mine or (rank in (None, 0) and is_global):
            out.append(p)
    return out


@dataclass
class _OpenShard:
    """The shard being filled: features stream into the .tmp file, small arrays stay in memory."""

    tmp: Path
    final: Path
    h5: h5py.File
    features: h5py.Dataset
    pooled: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)
    ids: tuple[list[str], list[str], list[str]] = field(default_factory=lambda: ([], [], []))
    feature_sha256: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.feature_sha256)


class CacheWriter:
    """Write a feature cache (see cache/README.md). Resumes after the last complete shard.

    `rank`/`world_size`: each process of a multi-process extraction writes its own shards and
    manifest; rank 0 then calls `merge_ranks(path)`. Rank r must write the images
    `rank_block(n_images, r, world_size)` so the merged order is the original order.
    """

    def __init__(self, path: str | os.PathLike, *, grid: Sequence[int], dim: int, dtype: str = "float16",
                 label_names: Sequence[str] = (), encoder: Mapping[str, Any] | None = None,
                 preprocessing: Mapping[str, Any] | None = None, producer: Mapping[str, Any] | None = None,
                 shard_size: int = 256, overwrite: bool = False, rank: int = 0, world_size: int = 1,
                 fingerprint: Mapping[str, Any] | None = None):
        if dtype not in DTYPES:
            raise CacheInputError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if len(grid) != 2 or min(grid) < 1 or dim < 1 or shard_size < 1:
            raise CacheInputError(f"need grid=(H, W) >= 1, dim >= 1, shard_size >= 1; got {grid}, {dim}, {shard_size}")
        if not 0 <= rank < world_size:
            raise CacheInputError(f"rank {rank} is outside 0..{world_size - 1}")
        self.path = Path(path)
        self.rank, self.world_size = rank, world_size
        self._tag = None if world_size == 1 else rank
        self._settings = plain({"grid": list(grid), "dim": int(dim), "dtype": dtype,
                                 "label_names": list(label_names), "encoder": dict(encoder or {}),
                                 "preprocessing": dict(preprocessing or {}), "shard_size": int(shard_size),
                                 "fingerprint": None if fingerprint is None else dict(fingerprint)})
        self._producer = default_producer(producer)
        self._open: _OpenShard | None = None
        self._done = False  # a rank writer that found its work already merged
        self._closed = False
        self._lock = FolderLock(self.path, lock_name(self._tag)).acquire()  # creates the folder (refuses a file)
        try:
            self._manifest_path = self.path / manifest_name(self._tag)
            self._manifest = self._start(overwrite)
        except BaseException:
            self._lock.release()
            raise

    # ------------------------------------------------------------------ opening / resuming
    def _fresh_manifest(self) -> dict:
        return {"format_version": FORMAT_VERSION, "complete": False, "n_images": 0, **self._settings,
                "n_logits": None, "producer": self._producer, "rank": self.rank, "world_size": self.world_size,
                "shards": [], "rows": None, "head": None}

    def _start(self, overwrite: bool) -> dict:
        if overwrite:
            for p in cache_files(self.path, self._tag, everything=self._tag is None):
                p.unlink(missing_ok=True)
            fsync_dir(self.path)
        elif self._tag is not None and (self.path / MANIFEST).exists() and not rank_manifests(self.path).get(self.rank):
            return self._start_merged()
        elif self._tag is None and rank_manifests(self.path):
            raise CacheSettingsError(f"{self.path} holds per-rank shards of an unmerged multi-process extraction; "
                                     "run cache.merge_ranks on it, or rerun with --overwrite (or use a new --out) to start again")
        if self._manifest_path.exists():
            manifest = read_manifest(self._manifest_path)
            check_manifest(manifest, self._manifest_path)
            diff = settings_diff(settings_of(manifest), self._settings)
            if diff:
                raise CacheSettingsError(f"{self.path} was written with different settings ({'; '.join(diff)}); "
                                         "use the same settings to resume, or rerun with --overwrite (or use a new --out) to start again")
            for entry in manifest["shards"]:
                p = self.path / entry["file"]
                if not p.exists():
                    raise CacheMissingShardError(f"{p} is listed in {self._manifest_path.name} but missing; "
                                                 "restore it, or rerun with --overwrite (or use a new --out) to start again")
                if p.stat().st_size != entry["bytes"]:
                    raise CacheChecksumError(f"{p} has {p.stat().st_size} bytes, the manifest says {entry['bytes']}; "
                                             "restore it, or rerun with --overwrite (or use a new --out) to start again")
            manifest["producer"] = self._producer
        else:
            manifest = self._fresh_manifest()
        self._discard_strays(manifest)
        manifest["complete"] = False
        atomic_write_json(self._manifest_path, manifest)
        return manifest

    def _start_merged(self) -> dict:
        """A rank writer reopened after the merge: nothing left to write."""
        manifest = read_manifest(self.path / MANIFEST)
        diff = settings_diff(settings_of(manifest), self._settings)
        ranks = manifest.get("ranks") or []
        if diff or len(ranks) != self.world_size:
            why = "; ".join(diff) or f"it was merged from {len(ranks)} ranks, not {self.world_size}"
            raise CacheSettingsError(f"{self.path} is a finished cache with different settings ({why}); "
                                     "rerun with --overwrite (or use a new --out) to start again")
        self._done = True
        self._manifest_path = self.path / MANIFEST
        self._n_done = ranks[self.rank]["n_images"]
        return manifest

    def _discard_strays(self, manifest: dict) -> None:
        """Delete leftovers of an interrupted run: .tmp files and shards the manifest does not list."""
        listed = {e["file"] for e in manifest["shards"]}
        prefix = "shard-" if self._tag is None else f"shard-r{self._tag:02d}-"
        for p in self.path.iterdir():
            name = p.name
            ours = name.startswith(prefix) and (self._tag is not None or not name.startswith("shard-r"))
            if (ours and name not in listed) or name == self._manifest_path.name + ".tmp":
                p.unlink()

    # ------------------------------------------------------------------ properties
    @property
    def n_complete(self) -> int:
        """Images safely on disk (in complete shards): a resuming caller skips this many."""
        if self._done:
            return self._n_done
        return int(self._manifest["n_images"])

    @property
    def n_images(self) -> int:
        """Images added so far, including those in the shard still being filled."""
        return self.n_complete + (self._open.n if self._open else 0)

    # ------------------------------------------------------------------ writing
    def add(self, feature_maps: np.ndarray, *, patient_id: Sequence[str], image_id: Sequence[str],
            split: Sequence[str], labels: np.ndarray | None = None, logits: np.ndarray | None = None) -> None:
        """Append n images: feature maps (n, H, W, C) float32 plus their identifiers, labels and logits."""
        if self._done or self._closed:
            raise CacheError(f"{self.path}: the writer is {'closed' if self._closed else 'already merged and complete'}; "
                             "open a new CacheWriter (--overwrite to start again)")
        s = self._settings
        H, W = s["grid"]
        maps = np.asarray(feature_maps)
        if maps.ndim != 4 or maps.shape[1:] != (H, W, s["dim"]) or maps.dtype.kind != "f":
            raise CacheInputError(f"feature_maps must be float (n, {H}, {W}, {s['dim']}), got {maps.dtype} {maps.shape}")
        n = maps.shape[0]
        L = len(s["label_names"])
        labels = np.zeros((n, 0), np.int64) if labels is None and L == 0 else np.asarray(labels)
        if labels.shape != (n, L) or labels.dtype.kind not in "iub":
            raise CacheInputError(f"labels must be integer (n={n}, L={L}) for {s['label_names']}, "
                                  f"got {labels.dtype} {labels.shape}")
        ids = tuple([str(v) for v in col] for col in (patient_id, image_id, split))
        if any(len(col) != n for col in ids):
            raise CacheInputError(f"patient_id, image_id and split need {n} entries each, "
                                  f"got {[len(col) for col in ids]}")
        n_logits = self._manifest["n_logits"] if self._manifest["n_images"] or self._open else None
        if logits is not None:
            logits = np.asarray(logits, np.float32)
            if logits.ndim != 2 or logits.shape[0] != n:
                raise CacheInputError(f"logits must be (n={n}, K), got {logits.shape}")
        if (self._manifest["n_images"] or self._open) and (
                (logits is None) != (n_logits is None) or (logits is not None and logits.shape[1] != n_logits)):
            raise CacheInputError(f"logits must be given with K={n_logits} for every batch (as before), "
                                  f"got {None if logits is None else logits.shape}")
        self._manifest["n_logits"] = None if logits is None else int(logits.shape[1])
        maps32 = maps.astype(np.float32, copy=False)
        if not all_finite(maps32):
            raise CacheInputError("feature_maps contain NaN or Inf; fix the encoder input before caching")
        pooled = maps32.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
        with np.errstate(over="ignore"):
            stored = maps32.astype(s["dtype"], copy=False)
        if not all_finite(stored):
            raise CacheInputError(f"feature values exceed the float16 range (max |x| = {np.abs(maps32).max():.4g}); "
                                  "write the cache with dtype='float32'")
        self._check_room(stored.nbytes)
        start = 0
        try:
            while start < n:
                if self._open is None:
                    self._open = self._new_shard()
                take = min(n - start, s["shard_size"] - self._open.n)
                self._append(self._open, stored[start:start + take], pooled[start:start + take],
                             labels[start:start + take], None if logits is None else logits[start:start + take],
                             tuple(col[start:start + take] for col in ids))
                start += take
                if self._open.n == s["shard_size"]:
                    self._finish_shard()
        except BaseException as exc:  # a failed write leaves the open shard half-written: drop it, keep complete ones
            if self._open is not None:
                self._discard(self._open)
                self._open = None
            if (err := self._write_error(exc)) is exc:
                raise
            raise err from exc

    def _new_shard(self) -> _OpenShard:
        final = self.path / shard_name(len(self._manifest["shards"]), self._tag)
        tmp = final.with_name(final.name + ".tmp")
        H, W = self._settings["grid"]
        C = self._settings["dim"]
        h5 = h5py.File(tmp, "w")
        ds = h5.create_dataset("features", shape=(0, H, W, C), maxshape=(None, H, W, C),
                               chunks=(1, H, W, C), dtype=self._settings["dtype"])
        return _OpenShard(tmp, final, h5, ds)

    @staticmethod
    def _append(shard: _OpenShard, stored, pooled, labels, logits, ids) -> None:
        i, n = shard.n, len(stored)
        shard.features.resize(i + n, axis=0)
        shard.features[i:i + n] = stored
        shard.feature_sha256.extend(sha256_array(x) for x in stored)
        shard.pooled.append(pooled)
        shard.labels.append(labels.astype(np.int64))
        if logits is not None:
            shard.logits.append(logits)
        for dst, src in zip(shard.ids, ids):
            dst.extend(src)

    def _finish_shard(self) -> None:
        """Write the small arrays, fsync, rename into place, then record the shard in the manifest."""
        shard, self._open = self._open, None
        try:
            self._write_shard(shard)
        except BaseException as exc:
            self._discard(shard)
            if (err := self._write_error(exc)) is exc:
                raise
            raise err from exc

    def _check_room(self, nbytes: int) -> None:
        check_room(self.path, self._open.tmp if self._open is not None else None, nbytes, self.n_complete)

    def _write_error(self, exc: BaseException) -> BaseException:
        return write_error(exc, self.path, self.n_complete)

    @staticmethod
    def _discard(shard: _OpenShard) -> None:
        """Close and delete a shard that will not be finished (empty, or its writes failed)."""
        try:
            shard.h5.close()
        except Exception:  # noqa: BLE001 - HDF5 cannot flush it; the CLI then exits at once
            HDF5_WRITE_FAILED.append(shard)
            mute_hdf5_dealloc_errors()
        shard.tmp.unlink(missing_ok=True)

    def _write_shard(self, shard: _OpenShard) -> None:
        h5 = shard.h5
        pooled = np.concatenate(shard.pooled)
        labels = np.concatenate(shard.labels)
        digests = {"ids": sha256_strings(*shard.ids), "pooled": sha256_array(pooled),
                   "labels": sha256_array(labels), "features": shard.feature_sha256}
        h5.create_dataset("pooled", data=pooled)
        h5.create_dataset("labels", data=labels)
        if shard.logits:
            logits = np.concatenate(shard.logits)
            h5.create_dataset("logits", data=logits)
            digests["logits"] = sha256_array(logits)
        for name, col in zip(("patient_id", "image_id", "split"), shard.ids):
            h5.create_dataset(name, data=np.array(col, dtype=object), dtype=STRING)
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["label_names"] = json.dumps(self._settings["label_names"])
        h5.close()
        with open(shard.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(shard.tmp, shard.final)
        fsync_dir(self.path)
        self._manifest["shards"].append({
            "file": shard.final.name, "n_images": shard.n, "bytes": shard.final.stat().st_size,
            "sha256": sha256_file(shard.final), "complete": True, "digests": digests})
        self._manifest["n_images"] += shard.n
        atomic_write_json(self._manifest_path, self._manifest)

    # ------------------------------------------------------------------ side files
    def set_rows(self, rows: Any) -> None:
        """Store the row table (a DataFrame, or a mapping column -> list) with an `image_index` column."""
        table = rows_table(rows)
        n_rows = len(table["data"]["image_index"])
        atomic_write_json(self.path / ROWS_FILE, table)
        self._manifest["rows"] = {"file": ROWS_FILE, "n_rows": n_rows, "sha256": sha256_file(self.path / ROWS_FILE)}
        atomic_write_json(self._manifest_path, self._manifest)

    def save_head(self, weight: np.ndarray, bias: np.ndarray, *, label: str, class_names: Sequence[str]) -> None:
        """Save the encoder's concept head beside the manifest (safetensors)."""
        write_head(self.path / HEAD_FILE, Head(np.asarray(weight), np.asarray(bias), label, list(class_names)))
        self._manifest["head"] = {"file": HEAD_FILE, "label": label, "sha256": sha256_file(self.path / HEAD_FILE)}
        atomic_write_json(self._manifest_path, self._manifest)

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Write the partly filled last shard and mark the cache (or this rank) complete."""
        self._end(complete=True)

    def _end(self, complete: bool) -> None:
        if self._closed:
            return
        try:
            if not self._done:
                if self._open is not None and self._open.n:
                    self._finish_shard()
                elif self._open is not None:
                    self._discard(self._open)
                    self._open = None
                self._manifest["complete"] = complete
                atomic_write_json(self._manifest_path, self._manifest)
        except OSError:
            # A write failed (disk full, file size limit): the manifest on disk lists only complete
            # shards and says complete=false, so the cache resumes; on an error path keep that error.
            if complete:
                raise
        finally:
            self._closed = True
            self._lock.release()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an error keep what was written (the partial shard is valid) but leave the cache resumable.
        self._end(complete=exc_type is None)
