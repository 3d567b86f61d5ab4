"""Token windows for the device feed: exactly-once coverage, provenance, determinism, resume, process parts."""
from __future__ import annotations

import numpy as np
import pytest

from cache import CacheInputError
from cache.windows import window_tokens_for
from helpers.cache_data import GRID, P, STREAM_IMAGES as N, TOKEN_MB, image_features, open_stream_cache


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    return open_stream_cache(tmp_path_factory, "win")


def batches(windows, batch_size):
    """[(keys, float16 tokens)] per batch, in epoch order, applying each window's permutation."""
    out = []
    for w in windows:
        assert w.tokens.dtype == np.float16 and sorted(w.order.tolist()) == list(range(len(w.order)))
        for j in range(w.n_batches):
            rows = w.order[j * batch_size:(j + 1) * batch_size]
            keys = list(zip(w.image_index[rows].tolist(), (w.position[rows] // GRID[1]).tolist(),
                            (w.position[rows] % GRID[1]).tolist()))
            out.append((keys, w.tokens[rows]))
    return out


@pytest.mark.parametrize("fraction", [1.0, 0.5])
@pytest.mark.parametrize("window_batches, read_images", [(1, 1), (3, 2), (100, 64)])
def test_every_token_exactly_once_with_its_stored_value(c, fraction, window_batches, read_images):
    got = batches(c.iter_windows(5, 3, 0, fraction, window_mb=window_batches * 5 * TOKEN_MB,
                                 read_mb=read_images * P * TOKEN_MB), 5)
    keys = [k for ks, _ in got for k in ks]
    assert len(keys) == len(set(keys)) == c.n_tokens(fraction)
    # the same token set as the host stream, and every value as stored
    stream = {k for b in c.iter_tokens(5, seed=3, epoch=0, fraction=fraction)
              for k in zip(b.image_index.tolist(), b.h.tolist(), b.w.tolist())}
    assert set(keys) == stream
    for ks, tok in got:
        for (i, h, w), row in zip(ks, tok):
            np.testing.assert_array_equal(row, image_features(i)[h, w].astype(np.float16))
    assert [len(ks) for ks, _ in got][:-1] == [5] * (len(got) - 1)


def test_window_mixes_images_and_is_deterministic_per_seed_and_epoch(c):
    kw = dict(window_mb=4 * 5 * TOKEN_MB, read_mb=2 * P * TOKEN_MB)
    a = [ks for ks, _ in batches(c.iter_windows(5, 1, 2, **kw), 5)]
    assert a == [ks for ks, _ in batches(c.iter_windows(5, 1, 2, **kw), 5)]
    assert a != [ks for ks, _ in batches(c.iter_windows(5, 1, 3, **kw), 5)]
    assert a != [ks for ks, _ in batches(c.iter_windows(5, 2, 2, **kw), 5)]
    assert max(len({i for i, _, _ in ks}) for ks in a) > 1  # a batch draws from several images


@pytest.mark.parametrize("start", [0, 1, 5, 7, 12])
def test_start_batch_reads_from_its_window_and_matches_the_full_epoch(c, start):
    kw = dict(window_mb=3 * 5 * TOKEN_MB, read_mb=2 * P * TOKEN_MB)
    full = list(c.iter_windows(5, 4, 1, **kw))
    tail = list(c.iter_windows(5, 4, 1, start_batch=start, **kw))
    assert tail[0].first_batch == start // 3 * 3
    assert len(tail) == len(full) - start // 3
    for a, b in zip(full[start // 3:], tail):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_drop_last_drops_only_the_partial_batch(c):
    got = batches(c.iter_windows(7, 0, 0, drop_last=True, window_mb=2 * 7 * TOKEN_MB), 7)
    assert [len(ks) for ks, _ in got] == [7] * (N * P // 7)


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_process_parts_are_disjoint_cover_the_epoch_and_match_the_stream(c, fraction):
    kw = dict(window_mb=2 * 6 * TOKEN_MB, read_mb=P * TOKEN_MB)
    parts = [{k for ks, _ in batches(c.iter_windows(6, 0, 1, fraction, shard_index=r, shard_count=3, **kw), 6)
              for k in ks} for r in range(3)]
    assert sum(map(len, parts)) == len(set().union(*parts)) == c.n_tokens(fraction)
    for r, part in enumerate(parts):
        assert len(part) == c.n_tokens(fraction, shard_index=r, shard_count=3, read_mb=P * TOKEN_MB)
        stream = {k for b in c.iter_tokens(6, seed=0, epoch=1, fraction=fraction, shard_index=r, shard_count=3,
                                           read_mb=P * TOKEN_MB)
                  for k in zip(b.image_index.tolist(), b.h.tolist(), b.w.tolist())}
        assert part == stream


def test_window_size_rounds_to_whole_batches():
    assert window_tokens_for(10 * 12, 12, 4) == 8 and window_tokens_for(1, 12, 4) == 4
    assert window_tokens_for(256 * 2**20, 4096, 4096) == 65536


def test_bad_batch_size(c):
    with pytest.raises(CacheInputError, match="batch_size must be >= 1, got 0"):
        c.iter_windows(0, 0, 0)
