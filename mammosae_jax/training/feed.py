"""Training batches on the devices, one epoch at a time: the device feed (default) or the host stream.

Device feed (`feed="device"`): a background thread reads the cache's windows (cache/windows.py:
whole runs read sequentially, float16 as stored, with a seeded permutation each) into reusable
page-aligned staging buffers, checks them for NaN/inf and puts each one on this process's devices
(replicated over them) while the loop trains on the previous window (double buffering). Where
the device aliases host memory (CPU) the put is free and a buffer is reused one window after its
own, once the window's last batch is computed (a device runs its computations in dispatch
order); elsewhere (GPU) it is reused as soon as the copy is done. Batch j of a window is
`tokens[order[j*B:(j+1)*B]].astype(float32)`, gathered in jit on each device for its own rows of
the global batch; with several processes the global batch is assembled from those pieces.

Host stream (`feed="stream"`): `cache.iter_tokens` batches, checked and cast on the host and
copied to the devices batch by batch (a resumed epoch replays its batches up to the step).
"""
from __future__ import annotations

import functools
import queue
import threading
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cache.convert import all_finite
from cache.prefetch import Prefetcher
from cache.windows import Window
from mammosae_jax.training.config import TrainConfig
from mammosae_jax.training.mesh import DataParallel

MB = 1 << 20
DEFAULT_WINDOW_MB = 256  # when the device does not report its memory (CPU)
MAX_WINDOW_MB = 4096
SPARE_BUFFERS = 4


class FeedClosed(Exception):
    """Raised in the reader thread of a closed feed."""


class NonFiniteBatch(Exception):
    """Batch `index` of the epoch holds NaN or inf; the loop names the step."""

    def __init__(self, index: int):
        super().__init__(f"non-finite value in batch {index} of the epoch")
        self.index = index


def non_finite_message(what: str, step: int, detail: str = "") -> str:
    """The one-line error for a non-finite batch."""
    return (f"non-finite value (NaN/inf) in the {what} batch of step {step}; stopped before using it{detail}; "
            "check the cache with cache.verify()")


def token_stream(cache, tc: TrainConfig, batch: int, seed: int, epoch: int, images: np.ndarray,
                 drop_last: bool, prefetch: int):
    """This process's slice of the cache's host token stream (training with feed="stream", resampling, validation)."""
    return cache.iter_tokens(batch, seed, epoch, tc.token_fraction, images=images,
                             shard_index=jax.process_index(), shard_count=jax.process_count(),
                             drop_last=drop_last, prefetch=prefetch)


def window_mb(tc: TrainConfig) -> float:
    """The window size: `tc.window_mb`, or (0) 1/8 of the first local device's memory, at most 4 GiB."""
    if tc.window_mb > 0:
        return tc.window_mb
    try:
        limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001 - backends without memory stats
        limit = None
    return min(limit / 8 / MB, MAX_WINDOW_MB) if limit else DEFAULT_WINDOW_MB


class _Layout(NamedTuple):
    """Where this process's rows of a global batch live: its devices, in row order."""

    replicated: NamedSharding  # a window: a full copy on every local device
    rows: NamedSharding  # this process's batch rows, split over its devices in global row order
    global_shape: tuple[int, int] | None  # None with one process (the local batch is the global batch)
    batch: NamedSharding


@functools.lru_cache(maxsize=8)
def _layout(dp: DataParallel, local_batch: int, dim: int) -> _Layout:
    if jax.process_count() == 1:
        return _Layout(dp.replicated, dp.batch, None, dp.batch)
    shape = (local_batch * jax.process_count(), dim)
    index = dp.batch.addressable_devices_indices_map(shape)
    devices = sorted(index, key=lambda d: index[d][0].start or 0)
    first = index[devices[0]][0].start or 0
    if first != jax.process_index() * local_batch:
        raise ValueError("the data mesh does not give each process a contiguous block of batch rows")
    mesh = Mesh(np.array(devices), ("local",))
    return _Layout(NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("local")), shape, dp.batch)


@functools.lru_cache(maxsize=16)
def _gather_fn(rows: NamedSharding, size: int):
    def gather(tokens, order, start):
        idx = jax.lax.dynamic_slice_in_dim(order, start, size)
        return jnp.take(tokens, idx, axis=0).astype(jnp.float32)

    return jax.jit(gather, out_shardings=rows)


_SPARE: list[np.ndarray] = []  # staging buffers of closed feeds (fresh pages cost a fault each)
_SPARE_LOCK = threading.Lock()


class _Staging:
    """At most `count` page-aligned, pre-touched host buffers for windows, taken and given back;
    kept for the next feed (the next epoch) on close()."""

    def __init__(self, count: int):
        self.free: queue.Queue = queue.Queue()
        with _SPARE_LOCK:
            for _ in range(min(count, len(_SPARE))):
                self.free.put(_SPARE.pop())
        self.left = count - self.free.qsize()
        self.buffers: dict[int, np.ndarray] = {}  # data address -> its uint8 buffer

    def abort(self) -> None:
        """Wake a reader waiting in take() for good: it raises FeedClosed."""
        self.free.put(None)

    def take(self, n: int, dim: int, dtype: np.dtype) -> np.ndarray:
        """An (n, dim) array in a buffer; blocks while all `count` are in use."""
        nbytes = n * dim * np.dtype(dtype).itemsize
        if self.free.empty() and self.left > 0:
            self.left -= 1
            buf = np.zeros(0, np.uint8)
        else:
            buf = self.free.get()
        if buf is None:
            self.free.put(None)
            raise FeedClosed("the feed was closed")
        if buf.nbytes < nbytes:
            raw = np.empty(nbytes + 4096, np.uint8)
            off = -raw.ctypes.data % 4096
            buf = raw[off:off + nbytes]
            buf[::4096] = 0  # fault every page in now, not during the read
        view = buf[:nbytes].view(dtype).reshape(n, dim)
        self.buffers[view.ctypes.data] = buf
        return view

    def give(self, tokens: np.ndarray) -> None:
        self.free.put(self.buffers.pop(tokens.ctypes.data))

    def close(self) -> None:
        """Keep the free buffers for later feeds (those still in flight are dropped)."""
        with _SPARE_LOCK:
            while not self.free.empty():
                buf = self.free.get_nowait()
                if buf is not None and buf.nbytes:
                    _SPARE.append(buf)
            del _SPARE[:-SPARE_BUFFERS]


class _DeviceWindow(NamedTuple):
    epoch: int
    tokens: jax.Array  # (n, C) storage dtype, on every local device
    order: jax.Array  # (n,) int32
    bad: frozenset[int]  # epoch batch indices holding a non-finite value
    host: object  # the cache.windows.Window, without its tokens (provenance)
    staged: np.ndarray | None  # the staging buffer the device array aliases (given back after its batches)


def _bad_batches(w, batch_size: int) -> frozenset[int]:
    """Epoch indices of the window's batches that hold a NaN/inf."""
    if all_finite(w.tokens):
        return frozenset()
    bad_rows = ~np.isfinite(w.tokens).all(axis=1)[w.order]
    return frozenset(w.first_batch + int(j) // batch_size for j in np.flatnonzero(bad_rows))


class DeviceFeed:
    """Iterator of float32 global batches (jax.Array) of epoch `epoch` from batch `start` on.

    `windows(alloc)` yields `cache.windows.Window`s, or (epoch, Window) pairs for several epochs in
    order (reading on across an epoch's end), with tokens read into `alloc(n, dim, dtype)`;
    `seek(epoch, 0)` moves on to a later epoch."""

    def __init__(self, windows: Callable[..., Iterator], dp: DataParallel, local_batch: int, dim: int,
                 start: int = 0, depth: int = 1, epoch: int = 0):
        self.layout = _layout(dp, local_batch, dim)
        self.batch_size = local_batch
        self.epoch, self.next_batch = epoch, start
        self._win: _DeviceWindow | None = None
        self._last: jax.Array | None = None  # the newest batch
        self._retired: tuple[np.ndarray, jax.Array] | None = None  # (buffer, its last batch), one window back
        self._staging = _Staging(depth + 3)  # the window before, in use, being put, being read
        self._read = Prefetcher(windows(self._staging.take), 1)  # reading overlaps checking and putting
        self._windows = Prefetcher(map(self._to_device, self._read), depth)

    def _to_device(self, item) -> _DeviceWindow:
        epoch, w = (self.epoch, item) if isinstance(item, Window) else item
        bad = _bad_batches(w, self.batch_size)
        tokens = jax.device_put(w.tokens, self.layout.replicated)
        order = jax.device_put(w.order, self.layout.replicated)
        address = w.tokens.ctypes.data
        if any(s.data.unsafe_buffer_pointer() == address for s in tokens.addressable_shards):
            staged = w.tokens  # zero-copy (CPU): the device reads the staging buffer itself
        else:
            tokens.block_until_ready()
            self._staging.give(w.tokens)
            staged = None
        return _DeviceWindow(epoch, tokens, order, bad, w._replace(tokens=None), staged)

    def __iter__(self) -> "DeviceFeed":
        return self

    def seek(self, epoch: int, start: int) -> None:
        """Continue with batch `start` of `epoch` (not behind the windows already read)."""
        self.epoch, self.next_batch = epoch, start

    def _behind(self, win: _DeviceWindow) -> bool:
        """Whether the current window is before the next batch wanted."""
        return win.epoch < self.epoch or (win.epoch == self.epoch and
                                          self.next_batch >= win.host.first_batch + win.host.n_batches)

    def __next__(self) -> jax.Array:
        if self._win is not None and self._win.epoch > self.epoch:
            raise StopIteration  # this epoch is over; the window is kept for the next
        while self._win is None or self._behind(self._win):
            if self._retired is not None:
                self._retired[1].block_until_ready()  # long done: the batches of a whole window ago
                self._staging.give(self._retired[0])
                self._retired = None
            if self._win is not None and self._win.staged is not None:
                self._retired = (self._win.staged, self._last)
            self._win = next(self._windows)
            if self._win.epoch > self.epoch:
                raise StopIteration
        win, i = self._win, self.next_batch
        if i < win.host.first_batch:
            raise ValueError(f"batch {i} of epoch {self.epoch} lies behind the windows read")
        if i in win.bad:
            raise NonFiniteBatch(i)
        a = (i - win.host.first_batch) * self.batch_size
        size = min(self.batch_size, len(win.host.order) - a)
        x = self._last = _gather_fn(self.layout.rows, size)(win.tokens, win.order, np.int32(a))
        self.next_batch += 1
        if self.layout.global_shape is None:
            return x
        shape = (size * jax.process_count(), x.shape[1])
        return jax.make_array_from_single_device_arrays(shape, self.layout.batch,
                                                        [s.data for s in x.addressable_shards])

    def device_windows(self) -> Iterator[jax.Array]:
        """The windows' device token arrays, materialised, without batching them (measures the feed alone)."""
        for win in self._windows:
            yield win.tokens.block_until_ready()
            if win.staged is not None:
                self._staging.give(win.staged)

    def provenance(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image index, h * W + w) of this process's rows of batch `index` of the current window."""
        w = self._win.host
        rows = w.order[(index - w.first_batch) * self.batch_size:][:self.batch_size]
        return w.image_index[rows], w.position[rows]

    def close(self) -> None:
        """Stop both threads (the reader may wait for a buffer: woken first) and keep the buffers."""
        self._staging.abort()
        self._windows.close()
        self._read.close()
        self._staging.close()


def put_finite_batch(dp: DataParallel, tokens: np.ndarray, index: int) -> jax.Array:
    """A host token batch on the devices as float32; NonFiniteBatch(index) if it holds NaN/inf."""
    if not all_finite(tokens):
        raise NonFiniteBatch(index)
    return dp.put_batch(np.ascontiguousarray(tokens, np.float32))


class StreamFeed:
    """The host stream as float32 global batches, from batch `start` (replayed up to it)."""

    def __init__(self, stream, dp: DataParallel, start: int = 0):
        self.stream, self.dp, self.next_batch = stream, dp, 0
        self._it = iter(stream)
        for _ in range(start):
            next(self._it)
            self.next_batch += 1

    def __iter__(self) -> "StreamFeed":
        return self

    def __next__(self) -> jax.Array:
        tokens = next(self._it).tokens
        self.next_batch += 1
        return put_finite_batch(self.dp, tokens, self.next_batch - 1)

    def close(self) -> None:
        self.stream.close()


class _Epoch:
    """One epoch's view of a DeviceFeed that reads on: closing it keeps the feed."""

    def __init__(self, feed: DeviceFeed):
        self.feed = feed

    def __iter__(self) -> "_Epoch":
        return self

    def __next__(self) -> jax.Array:
        return next(self.feed)

    def provenance(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.feed.provenance(index)

    def close(self) -> None:
        pass


class TrainFeed:
    """The training batches of successive epochs through `tc.feed`; the device feed reads on
    across an epoch's end (the next epoch's first window is ready when it starts). close() at the end."""

    def __init__(self, cache, tc: TrainConfig, dp: DataParallel, local_batch: int, images: np.ndarray,
                 n_epochs: int):
        self.cache, self.tc, self.dp, self.local_batch, self.images, self.n_epochs = (
            cache, tc, dp, local_batch, images, n_epochs)
        self._device: DeviceFeed | None = None
        self._next_epoch = -1

    def epoch(self, epoch: int, start: int = 0) -> DeviceFeed | StreamFeed | _Epoch:
        """The batches of `epoch` from batch `start` on; close() the result after the epoch."""
        if self.tc.feed == "stream":
            stream = token_stream(self.cache, self.tc, self.local_batch, self.tc.seed, epoch, self.images, True,
                                  self.tc.prefetch)
            return StreamFeed(stream, self.dp, start)
        if self._device is None or epoch != self._next_epoch or start:
            self.close()
            self._device = DeviceFeed(functools.partial(self._windows, epoch, start), self.dp, self.local_batch,
                                      self.cache.dim, start, epoch=epoch)
        self._device.seek(epoch, start)
        self._next_epoch = epoch + 1
        return _Epoch(self._device)

    def _windows(self, first: int, start: int, alloc) -> Iterator[tuple[int, Window]]:
        for e in range(first, max(first + 1, self.n_epochs)):
            for w in self.cache.iter_windows(self.local_batch, self.tc.seed, e, self.tc.token_fraction,
                                             images=self.images, window_mb=window_mb(self.tc),
                                             shard_index=jax.process_index(), shard_count=jax.process_count(),
                                             drop_last=True, start_batch=start if e == first else 0, alloc=alloc):
                yield e, w

    def close(self) -> None:
        if self._device is not None:
            self._device.close()
            self._device = None
