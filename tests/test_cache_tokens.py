"""Token stream: exactly-once coverage, determinism, fraction, subsets, process slices, shutdown."""
from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

import cache
from cache import open_cache
from helpers.cache_data import (DIM, GRID, P, STREAM_IMAGES as N, TOKEN_MB, image_features, open_stream_cache,
                                write_cache)

@pytest.fixture(scope="module")
def c(tmp_path_factory):
    return open_stream_cache(tmp_path_factory, "tok")


def reference_tokens(images=range(N)) -> dict[tuple[int, int, int], np.ndarray]:
    """(image, h, w) -> the float16-rounded feature vector, computed from the synthetic source."""
    out = {}
    for i in images:
        x = image_features(i).astype(np.float16).astype(np.float32)
        for h in range(GRID[0]):
            for w in range(GRID[1]):
                out[(i, h, w)] = x[h, w]
    return out


def collect(stream):
    keys, toks, sizes = [], [], []
    for b in stream:
        assert b.tokens.dtype == np.float32 and b.tokens.shape == (len(b.image_index), DIM)
        keys += list(zip(b.image_index.tolist(), b.h.tolist(), b.w.tolist()))
        toks.append(b.tokens)
        sizes.append(len(b.tokens))
    return keys, np.concatenate(toks), sizes


@pytest.mark.parametrize("buffer_tokens, read_images", [(10_000, 64), (7, 1), (30, 2)])
def test_every_token_exactly_once_with_correct_provenance(c, buffer_tokens, read_images):
    stream = c.iter_tokens(16, seed=3, epoch=0, buffer_mb=buffer_tokens * TOKEN_MB,
                           read_mb=read_images * P * TOKEN_MB)
    keys, toks, sizes = collect(stream)
    ref = reference_tokens()
    assert sorted(keys) == sorted(ref) and len(keys) == len(set(keys)) == N * P == c.n_tokens()
    np.testing.assert_array_equal(toks, np.stack([ref[k] for k in keys]))
    assert sizes == [16] * (N * P // 16) + [N * P % 16] and len(stream) == len(sizes)


def test_drop_last(c):
    keys, _, sizes = collect(c.iter_tokens(16, seed=3, epoch=0, drop_last=True))
    assert sizes == [16] * (N * P // 16) and len(set(keys)) == len(keys) == 16 * (N * P // 16)


def test_deterministic_per_seed_and_epoch(c):
    kw = dict(buffer_mb=20 * TOKEN_MB, read_mb=2 * P * TOKEN_MB)
    a, ta, _ = collect(c.iter_tokens(8, seed=5, epoch=2, **kw))
    b, tb, _ = collect(c.iter_tokens(8, seed=5, epoch=2, prefetch=0, **kw))
    assert a == b
    np.testing.assert_array_equal(ta, tb)
    other_epoch, _, _ = collect(c.iter_tokens(8, seed=5, epoch=3, **kw))
    other_seed, _, _ = collect(c.iter_tokens(8, seed=6, epoch=2, **kw))
    assert other_epoch != a and other_seed != a
    assert sorted(other_epoch) == sorted(a) == sorted(other_seed)
    # first-batch overlap between epochs is small: they are really reshuffled
    assert len(set(a[:8]) & set(other_epoch[:8])) < 4


def test_shuffle_mixes_images(c):
    keys, _, _ = collect(c.iter_tokens(32, seed=0, epoch=0))  # buffer holds the whole (tiny) cache
    first_images = {k[0] for k in keys[:32]}
    assert len(first_images) >= 8  # 32 tokens from >= 8 of 11 images, not one image's positions in order


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_fraction_keeps_a_fixed_seeded_subset_per_image(c, fraction):
    k = int(round(fraction * P))
    assert c.n_tokens(fraction) == N * k
    e0, t0, _ = collect(c.iter_tokens(7, seed=1, epoch=0, fraction=fraction, buffer_mb=9 * TOKEN_MB))
    e1, _, _ = collect(c.iter_tokens(7, seed=1, epoch=1, fraction=fraction))
    other, _, _ = collect(c.iter_tokens(7, seed=2, epoch=0, fraction=fraction))
    assert len(e0) == len(set(e0)) == N * k
    for i in range(N):
        assert sum(1 for key in e0 if key[0] == i) == k
    assert set(e0) == set(e1)  # same subset every epoch
    assert set(other) != set(e0)  # another seed keeps other positions
    assert len({tuple(sorted((h, w) for j, h, w in e0 if j == i)) for i in range(N)}) > 1  # not the same per image
    ref = reference_tokens()
    np.testing.assert_array_equal(t0, np.stack([ref[key] for key in e0]))


def test_images_restricts_the_stream(c):
    subset = [0, 1, 2, 5, 6, 9]
    keys, _, _ = collect(c.iter_tokens(5, seed=0, epoch=0, images=subset, read_mb=2 * P * TOKEN_MB))
    assert sorted(keys) == sorted(reference_tokens(subset)) and c.n_tokens(images=subset) == len(subset) * P
    with pytest.raises(cache.CacheInputError, match=r"image indices must lie in 0\.\.10"):
        c.iter_tokens(5, seed=0, epoch=0, images=[3, 11])


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_process_slices_are_disjoint_and_cover_the_epoch(c, fraction):
    kw = dict(seed=4, epoch=1, fraction=fraction, read_mb=P * TOKEN_MB)
    parts = [collect(c.iter_tokens(6, shard_index=r, shard_count=3, **kw))[0] for r in range(3)]
    whole, _, _ = collect(c.iter_tokens(6, **kw))
    assert sorted(sum(parts, [])) == sorted(whole)
    assert sum(len(set(p)) for p in parts) == len(whole)
    k = len(whole) // N
    assert [len(p) for p in parts] == [c.n_tokens(fraction, shard_index=r, shard_count=3, read_mb=P * TOKEN_MB)
                                       for r in range(3)]
    assert max(map(len, parts)) - min(map(len, parts)) <= k  # balanced within one run (one image here)
    again = collect(c.iter_tokens(6, shard_index=1, shard_count=3, **kw))[0]
    assert again == parts[1]


def test_stopping_early_shuts_the_thread_down(c):
    before = threading.active_count()
    stream = c.iter_tokens(4, seed=0, epoch=0, prefetch=2)
    next(stream)
    stream.close()
    assert not stream._it.alive
    for _ in c.iter_tokens(4, seed=0, epoch=0, prefetch=2):
        break  # the abandoned stream is collected and closed
    gc.collect()
    deadline = threading.Event()
    deadline.wait(0.3)
    assert threading.active_count() == before


def test_bad_arguments(c):
    with pytest.raises(cache.CacheInputError, match=r"fraction must be in \(0, 1\]"):
        c.iter_tokens(4, seed=0, epoch=0, fraction=0.0)
    with pytest.raises(cache.CacheInputError, match="shard_index must be in 0..1"):
        c.iter_tokens(4, seed=0, epoch=0, shard_index=2, shard_count=2)
    with pytest.raises(cache.CacheInputError, match="batch_size must be >= 1"):
        c.iter_tokens(0, seed=0, epoch=0)


def test_as_stored_and_worker_count_do_not_change_the_stream(c):
    kw = dict(seed=9, epoch=4, buffer_mb=40 * TOKEN_MB, read_mb=2 * P * TOKEN_MB, prefetch=0)
    one = list(c.iter_tokens(16, workers=1, **kw))
    two = list(c.iter_tokens(16, workers=2, **kw))
    stored = list(c.iter_tokens(16, as_stored=True, **kw))
    assert len(one) == len(two) == len(stored)
    for a, b, s in zip(one, two, stored):
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.image_index, s.image_index)
        assert s.tokens.dtype == np.float16
        np.testing.assert_array_equal(s.tokens.astype(np.float32), a.tokens)


def test_float32_cache_streams_exact_values(tmp_path):
    c32 = open_cache(write_cache(tmp_path / "c32", 5, dtype="float32"))
    for b in c32.iter_tokens(7, seed=0, epoch=0):
        for t, i, h, w in zip(b.tokens, b.image_index, b.h, b.w):
            np.testing.assert_array_equal(t, image_features(int(i))[h, w])


def test_iter_images_after_consumer_stops(c):
    it = c.iter_images(2, prefetch=2)
    idx, maps = next(it)
    assert list(idx) == [0, 1] and maps.dtype == np.float32
    it.close()
    assert not it.alive
