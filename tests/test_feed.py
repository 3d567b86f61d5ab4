"""The device feed over 4 simulated devices: batches equal the host windows' permutation, cast to float32."""
from __future__ import annotations

import threading
import time

import jax
import numpy as np
import pytest

from helpers.cache_data import DIM, GRID, P, TOKEN_MB, open_stream_cache
from mammosae_jax.training.config import TrainConfig
from mammosae_jax.training.feed import DEFAULT_WINDOW_MB, DeviceFeed, NonFiniteBatch, TrainFeed, window_mb
from mammosae_jax.training.mesh import make_data_parallel

B = 8


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    return open_stream_cache(tmp_path_factory, "feed")


def host_batches(c, **kw):
    """The reference: each window's rows in its order, float16 -> float32 on the host."""
    out = []
    for w in c.iter_windows(B, 5, 1, drop_last=True, **kw):
        for j in range(w.n_batches):
            out.append(w.tokens[w.order[j * B:(j + 1) * B]].astype(np.float32))
    return out


@pytest.mark.parametrize("start", [0, 4])
def test_device_batches_equal_the_host_reference_and_are_sharded(c, start):
    dp = make_data_parallel()
    assert dp.n_devices == 4
    kw = dict(window_mb=3 * B * TOKEN_MB, read_mb=2 * P * TOKEN_MB)
    want = host_batches(c, **kw)
    feed = DeviceFeed(lambda alloc: c.iter_windows(B, 5, 1, drop_last=True, start_batch=start, alloc=alloc, **kw),
                      dp, B, DIM, start)
    try:
        got = list(feed)
    finally:
        feed.close()
    assert len(got) == len(want) - start == 11 * P // B - start
    for x, ref in zip(got, want[start:]):
        assert x.dtype == np.float32 and x.sharding == dp.batch
        np.testing.assert_array_equal(np.asarray(x), ref)


def test_train_feed_reads_on_across_epochs_each_covered_once_with_provenance(c, monkeypatch):
    dp = make_data_parallel()
    tc = TrainConfig(steps=1, batch_size=B, window_mb=2 * B * TOKEN_MB, seed=5)
    calls = []
    real = c.iter_windows
    monkeypatch.setattr(c, "iter_windows", lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    feeds = TrainFeed(c, tc, dp, B, np.arange(11), n_epochs=3)
    try:
        for epoch in range(3):
            keys = []
            batches = feeds.epoch(epoch)
            for i, x in enumerate(batches):
                img, pos = batches.provenance(i)
                keys += list(zip(img.tolist(), pos.tolist()))
                for row, j, p in zip(np.asarray(x), img, pos):  # provenance names the row's token
                    np.testing.assert_array_equal(row, c.feature_map(int(j))[p // GRID[1], p % GRID[1]])
            batches.close()
            assert len(keys) == len(set(keys)) == 11 * P // B * B
    finally:
        feeds.close()
    assert calls == [0, 1, 2]  # one reader for the whole run, not one per epoch


@pytest.mark.parametrize("feed", ["device", "stream"])
def test_non_finite_batch_is_named(c, feed, monkeypatch):
    dp = make_data_parallel()
    tc = TrainConfig(steps=1, batch_size=B, window_mb=4 * B * TOKEN_MB, feed=feed, prefetch=1)
    real_windows, real_tokens = c.iter_windows, c.iter_tokens

    def poisoned_windows(*a, **kw):
        for w in real_windows(*a, **kw):
            if w.first_batch <= 5 < w.first_batch + w.n_batches:
                w.tokens[w.order[(5 - w.first_batch) * B + 3], 1] = np.inf
            yield w

    def poisoned_tokens(*a, **kw):
        for i, b in enumerate(real_tokens(*a, **kw)):
            if i == 5:
                b.tokens[3, 1] = np.inf
            yield b

    monkeypatch.setattr(c, "iter_windows", poisoned_windows)
    monkeypatch.setattr(c, "iter_tokens", poisoned_tokens)
    feeds = TrainFeed(c, tc, dp, B, np.arange(11), n_epochs=1)
    batches = feeds.epoch(0)
    try:
        for _ in range(5):
            next(batches)
        with pytest.raises(NonFiniteBatch) as e:
            next(batches)
        assert e.value.index == 5
    finally:
        batches.close()
        feeds.close()


def test_close_stops_the_reader_threads_even_while_they_wait_for_a_buffer(c):
    dp = make_data_parallel()
    feed = DeviceFeed(lambda alloc: c.iter_windows(B, 0, 0, drop_last=True, window_mb=B * TOKEN_MB, alloc=alloc),
                      dp, B, DIM)
    next(feed)
    time.sleep(1.0)  # the reader fills every staging buffer and waits for one back
    closer = threading.Thread(target=feed.close)
    closer.start()
    closer.join(timeout=20)
    assert not closer.is_alive(), "close() hung"
    assert not any(t.name == "cache-prefetch" and t.is_alive() for t in threading.enumerate())


def test_window_size_default_and_flag():
    assert window_mb(TrainConfig(steps=1, window_mb=12.5)) == 12.5
    assert jax.devices()[0].platform == "cpu"
    assert window_mb(TrainConfig(steps=1)) == DEFAULT_WINDOW_MB
    with pytest.raises(ValueError, match="feed must be one of device, stream, got 'gpu'"):
        TrainConfig(steps=1, feed="gpu")
