"""Windows of tokens for a shuffle done by the consumer (the accelerator): the host only reads.

Plan of one epoch of one process (deterministic in (seed, epoch)):
1. the runs are the token stream's (cache/tokens.py): up to `read_mb` of consecutive images of one
   shard, dealt to processes once, permuted per epoch;
2. their tokens (all positions, or the per-image subset of `fraction`), concatenated in that order,
   are cut into windows of `window_tokens` (a whole number of batches; the last window holds the
   rest, less a partial batch with drop_last);
3. each window carries `order`, a permutation drawn from rng(seed, epoch, shard_index, window):
   batch j of the window is rows order[j*B:(j+1)*B].
The windows partition the epoch and each order is a bijection, so every selected token is in
exactly one batch. Tokens stay in the storage dtype (no cast, no gather on the host): each run is
read with one sequential read straight into its window (a run cut by a window boundary goes through
one scratch run); `alloc(n, dim, dtype)` gives each window's token buffer (a consumer's reusable
staging buffers). Starting at batch `start_batch` reads only the windows from the one holding it.
"""
from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import numpy as np

from .errors import CacheInputError
from .tokens import Run, epoch_order, run_positions


class Window(NamedTuple):
    """A slice of one epoch's reading order, with the permutation that turns it into batches."""

    tokens: np.ndarray  # (n, C) storage dtype, reading order
    image_index: np.ndarray  # (n,) int64, global image index of each row
    position: np.ndarray  # (n,) int32, h * W + w of each row
    order: np.ndarray  # (n,) int32 permutation: batch j is rows order[j*B:(j+1)*B]
    first_batch: int  # index within the epoch of the window's first batch
    n_batches: int  # batches in this window (the last one may be partial)


def window_tokens_for(window_bytes: float, token_bytes: int, batch_size: int) -> int:
    """Tokens per window: `window_bytes` rounded down to whole batches, at least one batch."""
    return max(1, int(window_bytes) // (token_bytes * batch_size)) * batch_size


def window_order(n: int, seed: int, epoch: int, shard_index: int, window: int) -> np.ndarray:
    """The seeded permutation of a window's `n` rows."""
    return np.random.default_rng([seed, epoch, shard_index, window, 0x3D3D]).permutation(n).astype(np.int32)


class _RunTokens:
    """One run's tokens with provenance; remembers the last run cut by a window boundary."""

    def __init__(self, read_run: Callable[[Run, np.ndarray], np.ndarray], grid: tuple[int, int], dim: int,
                 dtype: np.dtype, k: int, subset_seed: int, longest: int):
        self.read_run, self.grid, self.dim, self.k, self.subset_seed = read_run, grid, dim, k, subset_seed
        self.scratch = np.empty((longest, *grid, dim), dtype)
        self.cached: tuple[Run, np.ndarray] | None = None
        self.positions: tuple[Run, tuple[np.ndarray, np.ndarray]] | None = None

    def provenance(self, run: Run) -> tuple[np.ndarray, np.ndarray]:
        """(image index, position) of the run's tokens in reading order (`tokens.run_positions`), once per run."""
        if self.positions is None or self.positions[0] != run:
            self.positions = (run, run_positions(run, self.grid[0] * self.grid[1], self.k, self.subset_seed))
        return self.positions[1]

    def tokens(self, run: Run, pos: np.ndarray) -> np.ndarray:
        """All the run's tokens (n*k, C), read once even if two windows ask."""
        if self.cached is not None and self.cached[0] == run:
            return self.cached[1]
        n, P = run.stop - run.start, self.grid[0] * self.grid[1]
        block = self.read_run(run, self.scratch).reshape(n, P, self.dim)
        tok = block.reshape(n * P, self.dim) if self.k == P else block[np.repeat(np.arange(n), self.k), pos]
        self.cached = (run, tok)
        return tok

    def read_into(self, run: Run, dst: np.ndarray) -> None:
        """A whole run of all positions straight into `dst` (n*P, C)."""
        self.read_run(run, dst.reshape(run.stop - run.start, *self.grid, self.dim))


def iter_windows(read_run: Callable[[Run, np.ndarray], np.ndarray], runs: list[Run], *, grid: tuple[int, int],
                 dim: int, dtype: np.dtype, batch_size: int, k: int, subset_seed: int, window_tokens: int,
                 seed: int, epoch: int, shard_index: int, drop_last: bool, start_batch: int = 0,
                 alloc: Callable[[int, int, np.dtype], np.ndarray] | None = None) -> Iterator[Window]:
    """The windows of one process for one epoch (see the module docstring)."""
    if window_tokens % batch_size:
        raise ValueError(f"window_tokens {window_tokens} is not a multiple of the batch size {batch_size}")
    sizes = np.array([(r.stop - r.start) * k for r in runs], np.int64)
    cum = np.concatenate([[0], np.cumsum(sizes)])
    end = int(cum[-1]) // batch_size * batch_size if drop_last else int(cum[-1])
    per_window = window_tokens // batch_size
    w = start_batch // per_window
    src = _RunTokens(read_run, grid, dim, dtype, k, subset_seed, max((r.stop - r.start for r in runs), default=0))
    P = grid[0] * grid[1]
    while w * window_tokens < end:
        lo, hi = w * window_tokens, min((w + 1) * window_tokens, end)
        tok = np.empty((hi - lo, dim), dtype) if alloc is None else alloc(hi - lo, dim, dtype)
        img = np.empty(hi - lo, np.int64)
        pos = np.empty(hi - lo, np.int32)
        i = int(np.searchsorted(cum, lo, side="right")) - 1
        at = lo
        while at < hi:
            a, b = at - int(cum[i]), min(int(sizes[i]), hi - int(cum[i]))  # part [a, b) of run i
            run_img, run_pos = src.provenance(runs[i])
            dst = slice(at - lo, at - lo + b - a)
            if k == P and a == 0 and b == sizes[i]:
                src.read_into(runs[i], tok[dst])
            else:
                tok[dst] = src.tokens(runs[i], run_pos)[a:b]
            img[dst], pos[dst] = run_img[a:b], run_pos[a:b]
            at += b - a
            i += 1
        n = hi - lo
        yield Window(tok, img, pos, window_order(n, seed, epoch, shard_index, w), w * per_window, -(-n // batch_size))
        w += 1


def cache_windows(cache, batch_size: int, seed: int, epoch: int, fraction: float = 1.0, images=None, *,
                  window_mb: float = 256, shard_index: int = 0, shard_count: int = 1, drop_last: bool = False,
                  start_batch: int = 0, read_mb: float = 64,
                  alloc: Callable[[int, int, np.dtype], np.ndarray] | None = None) -> Iterator[Window]:
    """The windows of ~`window_mb` MiB (whole batches) of `cache` for one process and epoch; the runs,
    process parts and per-image subsets (chosen by `seed`) are those of `cache.iter_tokens`."""
    if batch_size < 1:
        raise CacheInputError(f"batch_size must be >= 1, got {batch_size}")
    k, runs = cache._process_runs(fraction, images, read_mb, shard_index, shard_count)
    window = window_tokens_for(window_mb * (1 << 20), cache.dim * cache.dtype.itemsize, batch_size)
    return iter_windows(cache.read_run, epoch_order(runs, seed, epoch), grid=cache.grid, dim=cache.dim,
                        dtype=cache.dtype, batch_size=batch_size, k=k, subset_seed=seed, window_tokens=window,
                        seed=seed, epoch=epoch, shard_index=shard_index, drop_last=drop_last,
                        start_batch=start_batch, alloc=alloc)
