"""open_cache / FeatureCache: validated, lazily checksummed reads of a feature cache."""
from __future__ import annotations

import json
import os
import sys
import threading
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import h5py
import numpy as np

from .errors import (CacheChecksumError, CacheIncompleteError, CacheInputError, CacheMissingShardError,
                     CacheNonFiniteError, CacheNotFoundError)
from .format import (MANIFEST, lock_name, rank_manifests, read_manifest, sha256_array, sha256_file,
                     sha256_strings)
from .convert import all_finite, half_to_float
from .head import Head, read_head
from .integrity import VerifyResult, check_manifest, check_shard_count, verify_cache
from .prefetch import Prefetcher
from .tokens import (Run, TokenStream, epoch_order, make_runs, partition_runs, token_batches, tokens_per_image)
from .lock import lock_is_held
from .windows import Window, cache_windows

if TYPE_CHECKING:
    import pandas as pd

_MB = 1 << 20


def open_cache(path: str | os.PathLike, *, allow_incomplete: bool = False) -> "FeatureCache":
    """Open a cache folder for reading.

    Refuses a cache whose writer has not called close() (still running, or killed) unless
    `allow_incomplete=True`, which reads the complete shards written so far (a valid prefix).
    """
    folder = Path(path)
    if not (folder / MANIFEST).exists():
        if rank_manifests(folder):
            raise CacheIncompleteError(f"{folder} holds per-rank shards that were never merged; call "
                                       "cache.merge_ranks(path) once every rank has closed its writer")
        raise CacheNotFoundError(f"{folder} is not a feature cache (no {MANIFEST}); check the path or extract it first")
    manifest = read_manifest(folder / MANIFEST)
    check_manifest(manifest, folder / MANIFEST)
    if not manifest["complete"] and not allow_incomplete:
        pid = lock_is_held(folder / lock_name(None))
        n_done = manifest["n_images"]
        if pid is not None:
            raise CacheIncompleteError(f"{folder} is still being written (writer pid {pid}, {n_done} images so far); "
                                       "wait for it to finish, or pass allow_incomplete=True to read the finished shards")
        raise CacheIncompleteError(f"{folder} was not finished: its writer stopped after {n_done} images; resume it "
                                   "with the same settings, or pass allow_incomplete=True to read those images")
    return FeatureCache(folder, manifest)


class FeatureCache:
    """Read access to a cache (use `open_cache`). Every array is checked against the manifest's
    sha256 the first time it is read in this process; `verify()` checks every file in full."""

    def __init__(self, folder: Path, manifest: dict):
        self.path = folder
        self.manifest = manifest
        self._shards = manifest["shards"]
        sizes = np.array([s["n_images"] for s in self._shards], np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)])
        self._verified = np.zeros(int(self._starts[-1]), bool)
        self._lock = threading.Lock()
        self._offsets: dict[int, np.ndarray | None] = {}
        for entry in self._shards:
            p = folder / entry["file"]
            if not p.exists():
                raise CacheMissingShardError(f"shard {p} is missing; restore it from a copy of the cache, "
                                             "or re-extract with --overwrite")
            size = p.stat().st_size
            if size != entry["bytes"]:
                raise CacheChecksumError(f"shard {p} has {size} bytes but the manifest records {entry['bytes']}; "
                                         "the file is truncated or replaced: restore it or re-extract")
        cols: list[list[str]] = [[], [], []]
        labels = []
        for k in range(len(self._shards)):
            try:
                with self._open(k) as f:
                    ids = [[s.decode() if isinstance(s, bytes) else s for s in f[n][()]]
                           for n in ("patient_id", "image_id", "split")]
                    lab = f["labels"][()]
            except (OSError, KeyError) as e:  # h5py: a damaged heap or a missing dataset
                raise CacheChecksumError(f"shard {folder / self._shards[k]['file']} cannot be read ({e}); "
                                         "the file is corrupt: restore it or re-extract with --overwrite") from None
            check_shard_count(len(ids[0]), self._shards[k], folder / self._shards[k]["file"])
            self._check(k, "ids", sha256_strings(*ids))
            self._check(k, "labels", sha256_array(lab))
            for dst, src in zip(cols, ids):
                dst.extend(src)
            labels.append(lab)
        self._patient_ids, self._image_ids, self._splits = (tuple(c) for c in cols)
        L = len(manifest["label_names"])
        self._labels = np.concatenate(labels) if labels else np.zeros((0, L), np.int64)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.path)!r}, images={len(self)}, grid={self.grid}, dim={self.dim}, dtype={self.dtype})"

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.manifest["grid"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def dtype(self) -> np.dtype:
        """Storage dtype of the feature maps (reads always return float32)."""
        return np.dtype(self.manifest["dtype"])

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["label_names"])

    @property
    def image_ids(self) -> tuple[str, ...]:
        return self._image_ids

    @property
    def patient_ids(self) -> tuple[str, ...]:
        return self._patient_ids

    @property
    def splits(self) -> tuple[str, ...]:
        return self._splits

    @property
    def label_array(self) -> np.ndarray:
        """(N, L) int64 image-level labels, columns in `label_names` order."""
        return self._labels

    @property
    def labels(self) -> "pd.DataFrame":
        """Image-level table: patient_id, image_id, split and one int64 column per label (a fresh copy)."""
        return self._labels_df.copy()

    @property
    def rows(self) -> "pd.DataFrame":
        """Row-level table with `image_index` (the labels table, one row per image, if none was
        stored; with allow_incomplete, only rows of images present). A fresh copy."""
        return self._rows_df.copy()

    @cached_property
    def _labels_df(self) -> "pd.DataFrame":
        import pandas as pd
        df = pd.DataFrame({name: pd.Series(col, dtype="str") for name, col in
                           (("patient_id", self._patient_ids), ("image_id", self._image_ids), ("split", self._splits))})
        for j, name in enumerate(self.label_names):
            df[name] = self._labels[:, j]
        return df

    @cached_property
    def _rows_df(self) -> "pd.DataFrame":
        import pandas as pd
        entry = self.manifest.get("rows")
        if entry is None:
            return self.labels.assign(image_index=np.arange(len(self)))
        p = self.path / entry["file"]
        if not p.exists():
            raise CacheMissingShardError(f"{p} (row table) is missing; restore it or re-run set_rows")
        if sha256_file(p) != entry["sha256"]:
            raise CacheChecksumError(f"{p} does not match its sha256 in the manifest; restore it or re-run set_rows")
        table = json.loads(p.read_text(encoding="utf-8"))
        df = pd.DataFrame({c: table["data"][c] for c in table["columns"]}, columns=table["columns"])
        for c, dt in table["dtypes"].items():
            if dt != "object" and df[c].dtype != dt:
                try:
                    df[c] = df[c].astype(dt)
                except (TypeError, ValueError):
                    pass  # e.g. an int column that became float because of missing values
        return df[df["image_index"] < len(self)].reset_index(drop=True)

    def split_indices(self, split: str) -> np.ndarray:
        """Indices (int64, ascending) of the images of one split."""
        idx = np.flatnonzero(np.asarray(self._splits, dtype=object) == split)
        if len(idx) == 0:
            raise CacheInputError(f"no images with split {split!r}; this cache has splits {sorted(set(self._splits))}")
        return idx.astype(np.int64)

    def head(self) -> Head | None:
        """The encoder's concept head, if the writer saved one."""
        entry = self.manifest.get("head")
        if entry is None:
            return None
        p = self.path / entry["file"]
        if not p.exists():
            raise CacheMissingShardError(f"{p} (concept head) is missing; restore it or re-run save_head")
        if sha256_file(p) != entry["sha256"]:
            raise CacheChecksumError(f"{p} does not match its sha256 in the manifest; restore it or re-run save_head")
        return read_head(p)

    # ------------------------------------------------------------------ low level
    def _open(self, k: int) -> h5py.File:
        return h5py.File(self.path / self._shards[k]["file"], "r")

    def _check(self, k: int, name: str, digest: str) -> None:
        if digest != self._shards[k]["digests"][name]:
            raise CacheChecksumError(f"{name} of shard {self.path / self._shards[k]['file']} do not match the "
                                     "manifest's sha256; the file is corrupt: restore it or re-extract")

    def _locate(self, i: int) -> int:
        if not 0 <= i < len(self):
            raise IndexError(f"image index {i} out of range for a cache of {len(self)} images")
        return int(np.searchsorted(self._starts, i, side="right") - 1)

    def _chunk_offsets(self, k: int) -> np.ndarray | None:
        """File offsets of shard k's per-image chunks when they are raw (unfiltered) bytes, else None."""
        with self._lock:
            if k in self._offsets:
                return self._offsets[k]
        offsets = None
        with self._open(k) as f:
            ds = f["features"]
            image_bytes = int(np.prod(ds.shape[1:])) * ds.dtype.itemsize
            if (ds.chunks == (1, *ds.shape[1:]) and ds.dtype == self.dtype and ds.dtype.byteorder in "<="
                    and sys.byteorder == "little" and not ds.id.get_create_plist().get_nfilters()):
                infos = [ds.id.get_chunk_info_by_coord((j, 0, 0, 0)) for j in range(ds.shape[0])]
                if all(i.size == image_bytes and i.filter_mask == 0 and i.byte_offset is not None for i in infos):
                    offsets = np.array([i.byte_offset for i in infos], np.int64)
        with self._lock:
            self._offsets[k] = offsets
        return offsets

    def _read_features(self, k: int, a: int, b: int, out: np.ndarray) -> None:
        """Images a..b-1 of shard k into `out`: coalesced pread of the raw chunks, or h5py."""
        offsets = self._chunk_offsets(k)
        if offsets is None:
            with self._open(k) as f:
                f["features"].read_direct(out, np.s_[a:b])
            return
        flat = out.reshape(b - a, -1).view(np.uint8)
        image_bytes = flat.shape[1]
        fd = os.open(self.path / self._shards[k]["file"], os.O_RDONLY)
        try:
            j = 0
            while j < b - a:  # one read per run of adjacent chunks (normally the whole range)
                e = j + 1
                while e < b - a and offsets[a + e] == offsets[a + e - 1] + image_bytes:
                    e += 1
                view = memoryview(flat[j:e].reshape(-1))
                pos, done = int(offsets[a + j]), 0
                while done < len(view):
                    n = os.preadv(fd, [view[done:]], pos + done)
                    if n == 0:
                        raise CacheChecksumError(f"shard {self.path / self._shards[k]['file']} ends early; "
                                                 "the file is truncated: restore it or re-extract")
                    done += n
                j = e
        finally:
            os.close(fd)

    def read_run(self, run: Run, out: np.ndarray | None = None) -> np.ndarray:
        """Stored-dtype feature maps (n, H, W, C) of images [start, stop) of one shard, verified
        (into the first n images of `out`, a reusable buffer, if given)."""
        base = int(self._starts[run.shard])
        shape = (run.stop - run.start, *self.grid, self.dim)
        out = np.empty(shape, self.dtype) if out is None else out[:shape[0]]
        self._read_features(run.shard, run.start - base, run.stop - base, out)
        todo = np.flatnonzero(~self._verified[run.start:run.stop])
        if len(todo):
            digests = self._shards[run.shard]["digests"]["features"]
            for j in todo:
                i = run.start + int(j)
                if sha256_array(out[j]) != digests[i - base]:
                    raise CacheChecksumError(f"features of image {i} in shard {self.path / self._shards[run.shard]['file']} "
                                             "do not match the manifest's sha256; the file is corrupt: restore it or re-extract")
                if not all_finite(out[j]):
                    raise CacheNonFiniteError(f"features of image {i} ({self._image_ids[i]}) contain NaN or Inf; "
                                              "re-extract this cache (use dtype='float32' if float16 overflowed)")
            with self._lock:
                self._verified[run.start + todo] = True
        return out

    def _runs(self, images: np.ndarray, run_images: int) -> list[Run]:
        return make_runs(images, self._starts, run_images)

    def _process_runs(self, fraction: float, images, read_mb: float, shard_index: int, shard_count: int):
        """(tokens per image, this process's runs in index order)."""
        k = tokens_per_image(int(np.prod(self.grid)), fraction)
        return k, partition_runs(self._runs(self._select(images), self._run_images(read_mb)), k, shard_index, shard_count)

    def _select(self, images: Sequence[int] | np.ndarray | None) -> np.ndarray:
        if images is None:
            return np.arange(len(self), dtype=np.int64)
        idx = np.unique(np.asarray(images, dtype=np.int64))
        if len(idx) and (idx[0] < 0 or idx[-1] >= len(self)):
            raise CacheInputError(f"image indices must lie in 0..{len(self) - 1}, got {idx[0]}..{idx[-1]}")
        return idx

    def _run_images(self, read_mb: float) -> int:
        per_image = int(np.prod(self.grid)) * self.dim * self.dtype.itemsize
        return max(1, int(read_mb * _MB) // per_image)

    # ------------------------------------------------------------------ image access
    def feature_map(self, i: int) -> np.ndarray:
        """(H, W, C) float32 feature map of image i."""
        k = self._locate(i)
        return half_to_float(self.read_run(Run(k, i, i + 1))[0])

    def pooled(self) -> np.ndarray:
        """(N, C) float32 spatial means (computed in float32 by the writer, before any cast)."""
        return self._small("pooled", np.zeros((0, self.dim), np.float32))

    def logits(self) -> np.ndarray | None:
        """(N, K) float32 logits of the encoder's concept head, if the writer stored them."""
        k = self.manifest.get("n_logits")
        return None if k is None else self._small("logits", np.zeros((0, k), np.float32))

    def _small(self, name: str, empty: np.ndarray) -> np.ndarray:
        parts = []
        for k in range(len(self._shards)):
            with self._open(k) as f:
                a = f[name][()]
            self._check(k, name, sha256_array(a))
            parts.append(a)
        return np.concatenate(parts) if parts else empty

    def iter_images(self, batch_size: int, images: Sequence[int] | np.ndarray | None = None, *,
                    prefetch: int = 2, read_mb: float = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (indices (b,), maps (b, H, W, C) float32) in ascending image order."""
        if batch_size < 1:
            raise CacheInputError(f"batch_size must be >= 1, got {batch_size}")
        runs = self._runs(self._select(images), min(batch_size, self._run_images(read_mb)))

        def source() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            idx, maps, n = [], [], 0
            for run in runs:
                idx.append(np.arange(run.start, run.stop))
                maps.append(self.read_run(run))
                n += run.stop - run.start
                while n >= batch_size or (run is runs[-1] and n):
                    i_all, m_all = np.concatenate(idx), np.concatenate(maps)
                    b = min(batch_size, n)
                    yield i_all[:b], half_to_float(m_all[:b])
                    idx, maps, n = [i_all[b:]], [m_all[b:]], n - b

        return Prefetcher(source(), prefetch) if prefetch > 0 else source()

    # ------------------------------------------------------------------ tokens
    def n_tokens(self, fraction: float = 1.0, images: Sequence[int] | np.ndarray | None = None, *,
                 shard_index: int = 0, shard_count: int = 1, read_mb: float = 64) -> int:
        """Tokens per epoch that `iter_tokens` with the same arguments yields (for this process)."""
        k, runs = self._process_runs(fraction, images, read_mb, shard_index, shard_count)
        return k * sum(r.stop - r.start for r in runs)

    def iter_tokens(self, batch_size: int, seed: int, epoch: int, fraction: float = 1.0,
                    images: Sequence[int] | np.ndarray | None = None, *, shard_index: int = 0,
                    shard_count: int = 1, drop_last: bool = False, prefetch: int = 4,
                    buffer_mb: float = 256, read_mb: float = 64, subset_seed: int | None = None,
                    as_stored: bool = False, workers: int | None = None) -> TokenStream:
        """Stream the epoch's tokens as `TokenBatch`es (see cache/tokens.py for the algorithm).

        Deterministic in (seed, epoch); every selected token exactly once per epoch (the last,
        partial batch is yielded unless drop_last). `fraction` keeps a fixed per-image subset of
        positions chosen by `subset_seed` (default: `seed`), the same in every epoch. `images`
        restricts to those image indices. `shard_index/shard_count` give this process a disjoint
        part of the epoch. Memory ~ buffer_mb + read_mb + prefetch batches, whatever the cache size.
        `as_stored=True` yields tokens in the storage dtype (e.g. float16, half the bytes: cast on
        the accelerator) instead of float32. `workers` threads (default min(4, cores)) gather and
        cast each batch.
        """
        if batch_size < 1:
            raise CacheInputError(f"batch_size must be >= 1, got {batch_size}")
        k, runs = self._process_runs(fraction, images, read_mb, shard_index, shard_count)
        runs = epoch_order(runs, seed, epoch)
        n_tokens = k * sum(r.stop - r.start for r in runs)
        token_bytes = self.dim * self.dtype.itemsize
        buffer_tokens = max(1, min(n_tokens, int(buffer_mb * _MB) // token_bytes))
        rng = np.random.default_rng([seed, epoch, shard_index, 0xB0F])
        source = token_batches(self.read_run, runs, grid=self.grid, dim=self.dim, dtype=self.dtype,
                               batch_size=batch_size, k=k, subset_seed=seed if subset_seed is None else subset_seed,
                               rng=rng, buffer_tokens=buffer_tokens, drop_last=drop_last, as_stored=as_stored,
                               workers=min(4, os.cpu_count() or 1) if workers is None else max(1, workers))
        n_batches = n_tokens // batch_size if drop_last else -(-n_tokens // batch_size)
        return TokenStream(source, n_tokens=n_tokens, n_batches=n_batches, prefetch=prefetch)

    def iter_windows(self, batch_size: int, seed: int, epoch: int, fraction: float = 1.0, images=None,
                     **kw) -> Iterator[Window]:
        """`iter_tokens`'s epoch as `Window`s for a shuffle on the accelerator (`cache.windows.cache_windows`)."""
        return cache_windows(self, batch_size, seed, epoch, fraction, images, **kw)

    # ------------------------------------------------------------------ verification
    def verify(self) -> VerifyResult:
        """Check every file's size and sha256 and every array's digest and finiteness."""
        return verify_cache(self)
