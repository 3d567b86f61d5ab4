"""Writer crash safety (SIGKILL at random moments, then resume) and multi-rank write + merge."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cache
from cache import CacheWriter, merge_ranks, open_cache, rank_block
from helpers.cache_data import add_images, writer_kwargs, write_cache

N = 20
REPO = Path(cache.__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# Adds one image at a time with a short pause, so that a kill lands anywhere in the write cycle.
WRITER_SCRIPT = f"""
import sys, time
sys.path[:0] = [{str(REPO)!r}, {str(TESTS)!r}]
from cache import CacheWriter
from helpers.cache_data import add_images, writer_kwargs
with CacheWriter(sys.argv[1], **writer_kwargs(shard_size=3)) as w:
    print(w.n_complete, flush=True)
    for i in range(w.n_complete, {N}):
        add_images(w, [i])
        print(i, flush=True)
        time.sleep(0.01)
"""


def assert_same_contents(a: cache.FeatureCache, b: cache.FeatureCache, n: int | None = None) -> None:
    """Equal feature maps, pooled, logits, labels and ids (of the first n images)."""
    n = len(b) if n is None else n
    assert len(a) >= n
    for i in range(n):
        np.testing.assert_array_equal(a.feature_map(i), b.feature_map(i))
    np.testing.assert_array_equal(a.pooled()[:n], b.pooled()[:n])
    if n:
        np.testing.assert_array_equal(a.logits()[:n], b.logits()[:n])
    pd.testing.assert_frame_equal(a.labels.iloc[:n], b.labels.iloc[:n])


@pytest.mark.parametrize("kills", [3, pytest.param(12, marks=pytest.mark.slow)])
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path, kills):
    reference = open_cache(write_cache(tmp_path / "ref", N, shard_size=3, batch=1))
    path = tmp_path / "killed"
    rng = np.random.default_rng(kills)
    starts = []
    for attempt in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True)
        starts.append(int(proc.stdout.readline()))
        if starts[-1] >= N - 1:  # almost done already: nothing left to interrupt
            proc.kill()
            proc.wait()
            proc.stdout.close()
            break
        target = int(rng.integers(starts[-1], N - 1))  # let it add images up to `target`, then kill soon after
        while int(proc.stdout.readline()) < target:
            pass
        time.sleep(rng.uniform(0.0, 0.08))  # lands in the pause, an add, a shard's fsync/rename or the manifest
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        # what is on disk is either refused as unfinished (and readable as a prefix) or complete
        try:
            prefix = open_cache(path)
            assert len(prefix) == N  # the kill came after close()
        except cache.CacheIncompleteError as e:
            assert "was not finished" in str(e)
            prefix = open_cache(path, allow_incomplete=True)
            assert len(prefix) % 3 == 0 or len(prefix) == N  # complete shards (or close() wrote the last one)
        assert_same_contents(prefix, reference, len(prefix))
        starts_next = len(prefix)
    done = subprocess.run([sys.executable, "-c", WRITER_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    assert int(done.stdout.split()[0]) == starts_next  # resumed after the last complete shard
    assert starts == sorted(starts) and starts[-1] > 0
    result = open_cache(path)
    assert len(result) == N
    assert_same_contents(result, reference)
    # identical shard layout and per-array digests: nothing of a killed shard survived
    strip = lambda m: [{k: s[k] for k in ("file", "n_images", "digests")} for s in m["shards"]]  # noqa: E731
    assert strip(result.manifest) == strip(reference.manifest)
    assert not list(path.glob("*.tmp"))
    result.verify()


def test_stray_tmp_and_unlisted_shard_are_discarded_on_resume(tmp_path):
    path = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        with CacheWriter(path, **writer_kwargs()) as w:
            add_images(w, range(4))
            raise KeyboardInterrupt
    (path / "shard-00001.h5.tmp").write_bytes(b"half a shard")
    (path / "shard-00001.h5").write_bytes(b"renamed, but the manifest was never updated")
    with CacheWriter(path, **writer_kwargs()) as w:
        assert w.n_complete == 4
        assert not (path / "shard-00001.h5.tmp").exists() and not (path / "shard-00001.h5").exists()
        add_images(w, range(4, 9))
    assert_same_contents(open_cache(path), open_cache(write_cache(tmp_path / "ref", 9)))


# ---------------------------------------------------------------------- multi-rank
def write_rank(path, rank, world, n, rows=None, **over):
    block = rank_block(n, rank, world)
    with CacheWriter(path, **writer_kwargs(**over), rank=rank, world_size=world) as w:
        start = w.n_complete
        add_images(w, range(block.start + start, block.stop))
        if rows is not None:
            w.set_rows(rows)
    return block


def test_rank_block_partitions_contiguously():
    blocks = [rank_block(10, r, 4) for r in range(4)]
    assert [list(b) for b in blocks] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]


def test_multi_rank_write_and_merge_equals_single_writer(tmp_path):
    n, world = 13, 3
    rows = pd.DataFrame({"image_index": np.arange(n).repeat(2), "row": np.arange(2 * n)})
    path = tmp_path / "ranks"
    for rank in (2, 0, 1):  # any completion order
        write_rank(path, rank, world, n, rows=rows if rank == 0 else None)
    assert sorted(p.name for p in path.glob("manifest*.json")) == ["manifest-r00.json", "manifest-r01.json", "manifest-r02.json"]
    with pytest.raises(cache.CacheIncompleteError, match=r"never merged; call cache\.merge_ranks"):
        open_cache(path)
    merged = merge_ranks(path)
    assert merged["n_images"] == n and [r["n_images"] for r in merged["ranks"]] == [5, 4, 4]
    assert sorted(p.name for p in path.glob("*.json")) == ["manifest.json", "rows.json"]
    single = tmp_path / "single"
    with CacheWriter(single, **writer_kwargs()) as w:
        add_images(w, range(n))
        w.set_rows(rows)
    a, b = open_cache(path), open_cache(single)
    assert_same_contents(a, b)
    assert a.image_ids == b.image_ids
    pd.testing.assert_frame_equal(a.rows, b.rows)
    a.verify()
    assert merge_ranks(path) == a.manifest  # idempotent
    # a rank rerun after the merge has nothing left to do
    with CacheWriter(path, **writer_kwargs(), rank=1, world_size=world) as w:
        assert w.n_complete == 4
        with pytest.raises(cache.CacheError, match="already merged and complete"):
            add_images(w, [0])


def test_merge_refuses_unfinished_or_inconsistent_ranks(tmp_path):
    path = tmp_path / "c"
    write_rank(path, 0, 2, 6)
    with pytest.raises(cache.CacheIncompleteError, match=r"ranks \[1\] of 2 have not written a manifest"):
        merge_ranks(path)
    w = CacheWriter(path, **writer_kwargs(), rank=1, world_size=2)
    with pytest.raises(cache.CacheIncompleteError, match="rank 1 has not finished"):
        merge_ranks(path)
    w.close()
    m = json.loads((path / "manifest-r01.json").read_text())
    m["dim"] = 99
    (path / "manifest-r01.json").write_text(json.dumps(m))
    with pytest.raises(cache.CacheSettingsError, match="rank 1 differs from rank 0 .*dim: existing 6 != requested 99"):
        merge_ranks(path)
    with pytest.raises(cache.CacheSettingsError, match="unmerged multi-process extraction"):
        CacheWriter(path, **writer_kwargs())


def test_interrupted_merge_resumes(tmp_path):
    path = tmp_path / "c"
    for rank in range(2):
        write_rank(path, rank, 2, 11)
    plan = cache.merge._plan(path)
    cache.format.atomic_write_json(path / cache.format.MERGE_PLAN, plan)
    src, dst = plan["renames"][0]
    os.replace(path / src, path / dst)  # "crash" after the first rename
    merge_ranks(path)
    assert_same_contents(open_cache(path), open_cache(write_cache(tmp_path / "ref", 11)))


def test_rank_resume(tmp_path):
    path = tmp_path / "c"
    block = rank_block(10, 1, 2)
    with pytest.raises(RuntimeError):
        with CacheWriter(path, **writer_kwargs(), rank=1, world_size=2) as w:
            add_images(w, range(block.start, block.start + 4))
            raise RuntimeError
    write_rank(path, 1, 2, 10)  # resumes after its 4 images
    write_rank(path, 0, 2, 10)
    merge_ranks(path)
    assert_same_contents(open_cache(path), open_cache(write_cache(tmp_path / "ref", 10)))
