"""Token streaming: shuffled spatial positions across the cache with bounded memory.

Plan of one epoch (all deterministic in (seed, epoch)):
1. selected images (all, or `images`) are cut into *runs*: up to `run_images` consecutive images of
   one shard, each run read with one sequential HDF5 read;
2. with `shard_count > 1` the runs are dealt to processes in index order, each to the process with
   the fewest tokens so far: the parts are disjoint, fixed across epochs, their union is the whole
   selection and their sizes differ by at most one run; each process permutes its runs with
   rng(seed, epoch);
3. the tokens of each run (all positions, or a per-image subset fixed by rng(subset_seed, image))
   are read straight into a shuffle window of `buffer_tokens` (at least two batches); when it is
   full, a random permutation of it is emitted in batches, except a random quarter that stays and
   mixes with the next runs; at the end the window is emitted in random order.
Every selected token is emitted exactly once per epoch. Memory: window + one run + the queue.
Each token is copied: read (page cache -> window), one gather into its batch, the float16 ->
float32 cast, plus on average 1/3 carry-over copy.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, NamedTuple

import numpy as np

from .convert import half_to_float
from .errors import CacheInputError
from .prefetch import Prefetcher


class TokenBatch(NamedTuple):
    """A batch of tokens with their provenance."""

    tokens: np.ndarray  # (B, C) float32 (the storage dtype with as_stored=True)
    image_index: np.ndarray  # (B,) int64, global image index
    h: np.ndarray  # (B,) int32, row in the feature grid
    w: np.ndarray  # (B,) int32, column in the feature grid


class Run(NamedTuple):
    """Consecutive images [start, stop) of one shard, read together."""

    shard: int
    start: int  # global image index
    stop: int


def tokens_per_image(n_positions: int, fraction: float) -> int:
    """Positions kept per image for `fraction` (at least one)."""
    if not 0.0 < fraction <= 1.0:
        raise CacheInputError(f"fraction must be in (0, 1], got {fraction}")
    return n_positions if fraction == 1.0 else max(1, int(round(fraction * n_positions)))


def position_subset(subset_seed: int, image_index: int, n_positions: int, k: int) -> np.ndarray:
    """The sorted positions (row-major h*W + w) that `fraction` keeps for one image."""
    if k == n_positions:
        return np.arange(n_positions)
    rng = np.random.default_rng([subset_seed, image_index, 0x5A5A])
    return np.sort(rng.permutation(n_positions)[:k])


def run_positions(run: Run, n_positions: int, k: int, subset_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image index, position h*W + w) of a run's tokens in reading order: for each image of the run
    all its positions, or the `k` that `position_subset` keeps."""
    idx = np.arange(run.start, run.stop)
    if k == n_positions:
        pos = np.tile(np.arange(n_positions, dtype=np.int32), len(idx))
    else:
        pos = np.concatenate([position_subset(subset_seed, int(i), n_positions, k) for i in idx]).astype(np.int32)
    return np.repeat(idx, k), pos


def make_runs(images: np.ndarray, shard_starts: np.ndarray, run_images: int) -> list[Run]:
    """Cut sorted image indices into runs of consecutive images within one shard."""
    runs: list[Run] = []
    if len(images) == 0:
        return runs
    shard_of = np.searchsorted(shard_starts, images, side="right") - 1
    breaks = np.flatnonzero((np.diff(images) != 1) | (np.diff(shard_of) != 0)) + 1
    for seg in np.split(np.arange(len(images)), breaks):
        first, last = images[seg[0]], images[seg[-1]] + 1
        for a in range(first, last, run_images):
            runs.append(Run(int(shard_of[seg[0]]), int(a), int(min(a + run_images, last))))
    return runs


def partition_runs(runs: list[Run], k: int, shard_index: int, shard_count: int) -> list[Run]:
    """The runs of process `shard_index`: dealt in index order to the least-loaded process (epoch independent)."""
    if not 0 <= shard_index < shard_count:
        raise CacheInputError(f"shard_index must be in 0..{shard_count - 1}, got {shard_index}")
    if shard_count == 1:
        return list(runs)
    load = np.zeros(shard_count, np.int64)
    mine = []
    for run in runs:
        p = int(np.argmin(load))
        load[p] += (run.stop - run.start) * k
        if p == shard_index:
            mine.append(run)
    return mine


def epoch_order(runs: list[Run], seed: int, epoch: int) -> list[Run]:
    """The runs in the reading order of one epoch."""
    return [runs[i] for i in np.random.default_rng([seed, epoch, 0x0E0E]).permutation(len(runs))]


CARRY = 0.25  # fraction of the window kept (shuffled) into the next window


class _Window:
    """Shuffle window: runs are read straight into it; when it holds >= `capacity` tokens, a random
    permutation is emitted except a random CARRY part, which moves to the front and mixes with the
    next runs (so consecutive windows overlap, as in a reservoir, at ~CARRY/(1-CARRY) extra copies)."""

    def __init__(self, capacity: int, longest_run: int, dim: int, dtype: np.dtype, rng: np.random.Generator):
        self.capacity = capacity
        self.tok = np.empty((capacity + longest_run, dim), dtype)
        self.img = np.empty(capacity + longest_run, np.int64)
        self.pos = np.empty(capacity + longest_run, np.int32)
        self.n = 0
        self.rng = rng

    def take(self, n_emit: int, batch_size: int) -> Iterator[np.ndarray]:
        """Emit `n_emit` random tokens as batches of window indices; afterwards keep the rest in front."""
        perm = self.rng.permutation(self.n)
        for j in range(0, n_emit, batch_size):
            yield perm[j:min(j + batch_size, n_emit)]
        keep = perm[n_emit:]
        self.tok[:len(keep)], self.img[:len(keep)], self.pos[:len(keep)] = self.tok[keep], self.img[keep], self.pos[keep]
        self.n = len(keep)


def token_batches(read_run: Callable[[Run, np.ndarray], np.ndarray], runs: list[Run], *, grid: tuple[int, int],
                  dim: int, dtype: np.dtype, batch_size: int, k: int, subset_seed: int, rng: np.random.Generator,
                  buffer_tokens: int, drop_last: bool, as_stored: bool = False,
                  workers: int = 1) -> Iterator[TokenBatch]:
    """Generate the batches of one process for one epoch (see the module docstring); `workers`
    threads gather and cast float16 batches to float32 (numpy releases the GIL there)."""
    H, W = grid
    P = H * W
    longest = max((r.stop - r.start for r in runs), default=0)
    capacity = max(buffer_tokens, 2 * batch_size)
    win = _Window(capacity, longest * k, dim, dtype, rng)
    scratch = np.empty((longest, H, W, dim), dtype) if k < P else None

    cast = not as_stored and dtype == np.float16
    pool = ThreadPoolExecutor(workers, thread_name_prefix="cache-cast") if workers > 1 and cast else None

    def batch(idx: np.ndarray) -> TokenBatch:
        if as_stored or dtype != np.float16:
            tok = win.tok[idx]  # one gather (fancy indexing beats np.take(out=) here)
            tok = tok if as_stored else tok.astype(np.float32, copy=False)
        elif pool is None or len(idx) < 2 * workers:
            tok = half_to_float(win.tok[idx])
        else:  # gather + cast in parallel slices
            tok = np.empty((len(idx), dim), np.float32)
            bounds = np.linspace(0, len(idx), workers + 1).astype(int)
            list(pool.map(lambda a, b: half_to_float(win.tok[idx[a:b]], tok[a:b]), bounds[:-1], bounds[1:]))
        pos = win.pos[idx]
        return TokenBatch(tok, win.img[idx], pos // W, pos % W)

    try:
        yield from _fill_and_emit(runs, win, read_run, batch, grid=grid, dim=dim, batch_size=batch_size, k=k,
                                  subset_seed=subset_seed, capacity=capacity, scratch=scratch, drop_last=drop_last)
    finally:
        if pool is not None:
            pool.shutdown()


def _fill_and_emit(runs: list[Run], win: _Window, read_run: Callable[[Run, np.ndarray], np.ndarray],
                   batch: Callable[[np.ndarray], TokenBatch], *, grid: tuple[int, int], dim: int, batch_size: int,
                   k: int, subset_seed: int, capacity: int, scratch: np.ndarray | None,
                   drop_last: bool) -> Iterator[TokenBatch]:
    """Read the runs into the window and emit batches whenever it is full, then empty it."""
    H, W = grid
    P = H * W
    for run in runs:
        n = run.stop - run.start
        dst = win.tok[win.n:win.n + n * k]
        img, pos = run_positions(run, P, k, subset_seed)
        if k == P:  # a run's (n, H, W, C) layout is (n*P, C) rows: read straight into the window
            read_run(run, dst.reshape(n, H, W, dim))
        else:
            block = read_run(run, scratch).reshape(n, P, dim)
            dst[:] = block[np.repeat(np.arange(n), k), pos]
        win.pos[win.n:win.n + n * k] = pos
        win.img[win.n:win.n + n * k] = img
        win.n += n * k
        if win.n >= capacity:
            n_emit = (win.n - int(CARRY * capacity)) // batch_size * batch_size
            for idx in win.take(n_emit, batch_size):
                yield batch(idx)
    n_emit = win.n // batch_size * batch_size if drop_last else win.n
    for idx in win.take(n_emit, batch_size):
        yield batch(idx)


class TokenStream:
    """Iterator of `TokenBatch` with an optional background prefetch thread; close() stops it."""

    def __init__(self, source: Iterator[TokenBatch], *, n_tokens: int, n_batches: int, prefetch: int):
        self.n_tokens = n_tokens
        self.n_batches = n_batches
        self._it: Iterator[TokenBatch] = Prefetcher(source, prefetch) if prefetch > 0 else source

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> TokenBatch:
        return next(self._it)

    def close(self) -> None:
        """Stop reading (safe to call more than once)."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "TokenStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
