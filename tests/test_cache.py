"""Feature cache: round trips, layout, side files and every reader/writer error."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import cache
from cache import CacheWriter, open_cache
from helpers.cache_data import DIM, GRID, LABELS, add_images, image_features, image_meta, writer_kwargs, write_cache

N = 10


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(tmp_path, dtype):
    path = write_cache(tmp_path / "c", N, dtype=dtype)
    c = open_cache(path)
    assert len(c) == N and c.grid == GRID and c.dim == DIM and c.dtype == np.dtype(dtype)
    x = np.stack([image_features(i) for i in range(N)])
    for i in range(N):
        got = c.feature_map(i)
        assert got.dtype == np.float32 and got.shape == (*GRID, DIM)
        np.testing.assert_array_equal(got, x[i].astype(dtype).astype(np.float32))
    # pooled: mean of the float32 input (not of the stored float16 values), stored as float32
    ref = x.astype(np.float64).mean(axis=(1, 2)).astype(np.float32)
    np.testing.assert_array_equal(c.pooled(), ref)
    if dtype == "float16":
        assert not np.array_equal(c.pooled(), x.astype(np.float16).astype(np.float64).mean(axis=(1, 2)).astype(np.float32))
    np.testing.assert_array_equal(c.logits(), np.stack([image_meta(i)["logits"] for i in range(N)]))
    assert c.image_ids == tuple(image_meta(i)["image_id"] for i in range(N))
    expected = pd.DataFrame({k: [image_meta(i)[k] for i in range(N)] for k in ("patient_id", "image_id", "split")})
    for j, name in enumerate(LABELS):
        expected[name] = np.array([image_meta(i)["labels"][j] for i in range(N)], np.int64)
    pd.testing.assert_frame_equal(c.labels, expected)
    np.testing.assert_array_equal(c.split_indices("test"), [i for i in range(N) if image_meta(i)["split"] == "test"])
    got_idx, got_maps = zip(*c.iter_images(4, images=[9, 1, 2, 3, 7]))
    assert [list(i) for i in got_idx] == [[1, 2, 3, 7], [9]]
    np.testing.assert_array_equal(np.concatenate(got_maps), x[[1, 2, 3, 7, 9]].astype(dtype).astype(np.float32))
    assert c.verify() == cache.VerifyResult(3, N, sum(s["bytes"] for s in c.manifest["shards"]))


def test_layout_and_manifest(tmp_path):
    path = write_cache(tmp_path / "c", N, shard_size=4, batch=7)
    names = sorted(p.name for p in path.iterdir())
    assert names == ["manifest.json", "shard-00000.h5", "shard-00001.h5", "shard-00002.h5", "write.lock"]
    m = json.loads((path / "manifest.json").read_text())
    assert m["format_version"] == cache.FORMAT_VERSION and m["complete"] is True
    assert [s["n_images"] for s in m["shards"]] == [4, 4, 2]  # the last, partial shard is written on close
    assert m["encoder"]["layer"] == "_bn1" and m["label_names"] == list(LABELS) and m["n_logits"] == 3
    assert m["producer"]["package"] == "mammosae-jax"
    with h5py.File(path / "shard-00001.h5") as f:
        assert f["features"].chunks == (1, *GRID, DIM)  # one image per chunk
        assert f["features"].dtype == np.float16 and f["pooled"].dtype == np.float32
        assert [s.decode() for s in f["image_id"][()]] == [f"img{i:04d}.png" for i in range(4, 8)]
        raw = f["features"][()]
    assert m["shards"][1]["sha256"] == hashlib.sha256((path / "shard-00001.h5").read_bytes()).hexdigest()
    assert m["shards"][1]["bytes"] == (path / "shard-00001.h5").stat().st_size
    assert m["shards"][1]["digests"]["features"][0] == hashlib.sha256(raw[0].tobytes()).hexdigest()


def test_rows_and_head(tmp_path):
    rows = pd.DataFrame({"image_index": [0, 0, 1, 2], "laterality": ["L", "L", "R", "L"],
                         "xmin": [1.5, np.nan, 2.0, 3.25], "finding_categories": [["Mass"], ["Mass", "Asymmetry"], [], []],
                         "fold": np.array([1, 2, 3, 4], np.int64)})
    weight = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM) / 7
    with CacheWriter(tmp_path / "c", **writer_kwargs()) as w:
        add_images(w, range(3))
        w.set_rows(rows)
        w.save_head(weight, np.array([0.5, -0.5]), label="Mass", class_names=["no", "yes"])
    c = open_cache(tmp_path / "c")
    pd.testing.assert_frame_equal(c.rows, rows)
    head = c.head()
    np.testing.assert_array_equal(head.weight, weight)
    np.testing.assert_array_equal(head.bias, np.array([0.5, -0.5], np.float32))
    assert (head.label, head.class_names) == ("Mass", ("no", "yes"))
    # interoperable with the safetensors package
    from safetensors import safe_open
    with safe_open(str(tmp_path / "c" / "head.safetensors"), framework="numpy") as f:
        np.testing.assert_array_equal(f.get_tensor("weight"), weight)
        assert json.loads(f.metadata()["class_names"]) == ["no", "yes"] and f.metadata()["label"] == "Mass"


def test_rows_default_to_one_per_image(tmp_path):
    c = open_cache(write_cache(tmp_path / "c", 5))
    assert list(c.rows["image_index"]) == [0, 1, 2, 3, 4] and c.head() is None


def test_resume_after_clean_close_appends(tmp_path):
    path = tmp_path / "c"
    with CacheWriter(path, **writer_kwargs()) as w:
        add_images(w, range(6))
    with CacheWriter(path, **writer_kwargs()) as w:
        assert w.n_complete == 6
        add_images(w, range(6, N))
    c = open_cache(path)
    assert [s["n_images"] for s in c.manifest["shards"]] == [4, 2, 4]
    np.testing.assert_array_equal(c.feature_map(8), image_features(8).astype(np.float16).astype(np.float32))


def test_writer_keeps_finished_shards_when_the_caller_fails(tmp_path):
    path = tmp_path / "c"
    with pytest.raises(RuntimeError):
        with CacheWriter(path, **writer_kwargs()) as w:
            add_images(w, range(6))
            raise RuntimeError("extractor crashed")
    with pytest.raises(cache.CacheIncompleteError, match="writer stopped after 6 images"):
        open_cache(path)
    assert len(open_cache(path, allow_incomplete=True)) == 6


# ---------------------------------------------------------------------- errors
def _edit_manifest(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))
    return m


def _flip_feature_byte(path, shard, image_in_shard, new_value=None):
    """Overwrite bytes of one image's chunk in place (file size unchanged)."""
    with h5py.File(path / f"shard-{shard:05d}.h5") as f:
        info = f["features"].id.get_chunk_info_by_coord((image_in_shard, 0, 0, 0))
    with open(path / f"shard-{shard:05d}.h5", "r+b") as fh:
        fh.seek(info.byte_offset)
        old = fh.read(2)
        fh.seek(info.byte_offset)
        fh.write(new_value if new_value is not None else bytes(b ^ 0xFF for b in old))


def test_not_a_cache(tmp_path):
    with pytest.raises(cache.CacheNotFoundError, match="is not a feature cache"):
        open_cache(tmp_path)


@pytest.mark.parametrize("version, message", [(99, "newer than this code supports"), ("1", "unknown format_version '1'"),
                                              (0, "unknown format_version 0")])
def test_version_errors(tmp_path, version, message):
    path = write_cache(tmp_path / "c", 4)
    _edit_manifest(path, format_version=version)
    with pytest.raises(cache.CacheVersionError, match=message):
        open_cache(path)


def test_missing_shard(tmp_path):
    path = write_cache(tmp_path / "c", N)
    (path / "shard-00001.h5").unlink()
    with pytest.raises(cache.CacheMissingShardError, match=r"shard-00001\.h5 is missing; restore it"):
        open_cache(path)


def test_truncated_shard(tmp_path):
    path = write_cache(tmp_path / "c", N)
    data = (path / "shard-00002.h5").read_bytes()
    (path / "shard-00002.h5").write_bytes(data[:-100])
    with pytest.raises(cache.CacheChecksumError, match="bytes but the manifest records"):
        open_cache(path)


def test_checksum_mismatch_is_lazy_per_image_and_full_in_verify(tmp_path):
    path = write_cache(tmp_path / "c", N)
    _flip_feature_byte(path, shard=1, image_in_shard=2)  # image 6
    c = open_cache(path)  # sizes are intact: opening succeeds
    np.testing.assert_array_equal(c.feature_map(5), image_features(5).astype(np.float16).astype(np.float32))
    with pytest.raises(cache.CacheChecksumError, match="features of image 6 in shard .*shard-00001.h5 do not match"):
        c.feature_map(6)
    with pytest.raises(cache.CacheChecksumError, match="shard-00001.h5 does not match its sha256"):
        open_cache(path).verify()
    with pytest.raises(cache.CacheChecksumError, match="features of image 6"):
        list(open_cache(path).iter_tokens(8, seed=0, epoch=0))


def test_corrupt_small_array_detected(tmp_path):
    path = write_cache(tmp_path / "c", N)
    with h5py.File(path / "shard-00000.h5", "r+") as f:
        f["pooled"][0, 0] += 1.0
    with pytest.raises(cache.CacheChecksumError, match="pooled of shard .*shard-00000.h5 do not match"):
        open_cache(path, allow_incomplete=True).pooled()


def test_non_finite_features(tmp_path):
    path = write_cache(tmp_path / "c", N)
    _flip_feature_byte(path, shard=0, image_in_shard=3, new_value=np.array([np.nan], np.float16).tobytes())
    # a writer bug, not corruption: the recorded digest matches the NaN data
    m = json.loads((path / "manifest.json").read_text())
    with h5py.File(path / "shard-00000.h5") as f:
        m["shards"][0]["digests"]["features"][3] = cache.format.sha256_array(f["features"][3])
    (path / "manifest.json").write_text(json.dumps(m))
    c = open_cache(path)
    with pytest.raises(cache.CacheNonFiniteError, match=r"image 3 \(img0003.png\) contain NaN or Inf"):
        c.feature_map(3)
    with pytest.raises(cache.CacheNonFiniteError):
        for _ in open_cache(path).iter_tokens(5, seed=0, epoch=0, prefetch=2):
            pass


def test_cache_being_written_is_refused(tmp_path):
    path = tmp_path / "c"
    w = CacheWriter(path, **writer_kwargs())
    add_images(w, range(6))
    with pytest.raises(cache.CacheIncompleteError, match=r"still being written \(writer pid \d+, 4 images so far\)"):
        open_cache(path)
    prefix = open_cache(path, allow_incomplete=True)
    assert len(prefix) == 4  # only the complete shard
    w.close()
    assert len(open_cache(path)) == 6


def test_different_settings_refused_unless_overwrite(tmp_path):
    path = write_cache(tmp_path / "c", 5)
    with pytest.raises(cache.CacheSettingsError, match=r"dtype: existing 'float16' != requested 'float32'"):
        CacheWriter(path, **writer_kwargs(dtype="float32"))
    with pytest.raises(cache.CacheSettingsError, match="shard_size: existing 4 != requested 8"):
        CacheWriter(path, **writer_kwargs(shard_size=8))
    with CacheWriter(path, **writer_kwargs(dtype="float32"), overwrite=True) as w:
        assert w.n_complete == 0
        add_images(w, range(2))
    c = open_cache(path)
    assert len(c) == 2 and c.dtype == np.float32 and sorted(p.name for p in path.glob("shard-*")) == ["shard-00000.h5"]


def test_second_writer_is_refused(tmp_path):
    with CacheWriter(tmp_path / "c", **writer_kwargs()):
        with pytest.raises(cache.CacheBusyError, match=r"being written by another live process \(pid \d+\)"):
            CacheWriter(tmp_path / "c", **writer_kwargs())


def test_bad_writer_input(tmp_path):
    with CacheWriter(tmp_path / "c", **writer_kwargs()) as w:
        meta = dict(patient_id=["a"], image_id=["a.png"], split=["training"], labels=np.zeros((1, 2), int))
        with pytest.raises(cache.CacheInputError, match=r"feature_maps must be float \(n, 3, 4, 6\)"):
            w.add(np.zeros((1, 4, 3, DIM), np.float32), **meta)
        with pytest.raises(cache.CacheInputError, match="contain NaN or Inf"):
            w.add(np.full((1, *GRID, DIM), np.nan, np.float32), **meta)
        with pytest.raises(cache.CacheInputError, match="exceed the float16 range .* dtype='float32'"):
            w.add(np.full((1, *GRID, DIM), 1e5, np.float32), **meta)
        with pytest.raises(cache.CacheInputError, match=r"labels must be integer \(n=1, L=2\)"):
            w.add(np.zeros((1, *GRID, DIM), np.float32), **{**meta, "labels": np.zeros((1, 3), int)})
        with pytest.raises(cache.CacheInputError, match="need 1 entries each"):
            w.add(np.zeros((1, *GRID, DIM), np.float32), **{**meta, "split": []})
        w.add(np.zeros((1, *GRID, DIM), np.float32), **meta, logits=np.zeros((1, 3)))
        with pytest.raises(cache.CacheInputError, match="logits must be given with K=3"):
            w.add(np.zeros((1, *GRID, DIM), np.float32), **meta)
        with pytest.raises(cache.CacheInputError, match="'image_index' column"):
            w.set_rows(pd.DataFrame({"x": [1]}))
    with pytest.raises(cache.CacheInputError, match="split 'validation'"):
        open_cache(tmp_path / "c").split_indices("validation")


def test_error_classes_are_cache_errors():
    for name in ("CacheNotFoundError", "CacheVersionError", "CacheIncompleteError", "CacheMissingShardError",
                 "CacheChecksumError", "CacheNonFiniteError", "CacheSettingsError", "CacheBusyError", "CacheInputError"):
        assert issubclass(getattr(cache, name), cache.CacheError)


def test_cache_imports_only_numpy_and_h5py():
    code = ("import sys, cache; bad = [m for m in ('torch', 'jax', 'pandas', 'safetensors') if m in sys.modules];"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(cache.__file__).parents[1]))
    assert out.stdout.strip() == "[]"


def test_half_to_float_is_exact_for_every_finite_half():
    from cache.convert import half_to_float
    every = np.arange(65536, dtype=np.uint16).view(np.float16)
    finite = every[np.isfinite(every)].reshape(-1, 31)  # 2-D input, odd row length
    got = half_to_float(finite)
    assert got.dtype == np.float32 and got.shape == finite.shape
    np.testing.assert_array_equal(got, finite.astype(np.float32))
    np.testing.assert_array_equal(np.signbit(got), np.signbit(finite))  # -0.0 keeps its sign


def test_raw_chunk_reads_match_hdf5_reads(tmp_path):
    c = open_cache(write_cache(tmp_path / "c", N))
    assert c._chunk_offsets(1) is not None  # the fast path is in use for our own shards
    run = cache.tokens.Run(1, 4, 8)
    with h5py.File(tmp_path / "c" / "shard-00001.h5") as f:
        np.testing.assert_array_equal(c.read_run(run), f["features"][0:4])


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_all_finite_matches_isfinite(dtype):
    from cache.convert import all_finite
    x = np.linspace(-3, 3, 50).astype(dtype)
    assert all_finite(x) and all_finite(x[:0])
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[17] = bad
        assert not all_finite(y)
    tiny = np.array([np.finfo(dtype).max, -np.finfo(dtype).max, np.finfo(dtype).smallest_subnormal, -0.0], dtype)
    assert all_finite(tiny)
    from cache.convert import _BLOCK
    big = np.ones(3 * _BLOCK + 5, dtype)  # whole blocks and a remainder
    assert all_finite(big)
    for at in (0, _BLOCK - 1, _BLOCK, 3 * _BLOCK + 4):
        y = big.copy()
        y.reshape(-1)[at] = np.nan
        assert not all_finite(y), at


def test_repacked_shard_is_read_through_hdf5(tmp_path):
    """A shard rewritten with compression (e.g. by h5repack) has no raw chunks: the h5py path reads it."""
    path = write_cache(tmp_path / "c", N)
    src, dst = path / "shard-00001.h5", path / "repacked.h5"
    with h5py.File(src) as f, h5py.File(dst, "w") as g:
        for name in f:
            g.create_dataset(name, data=f[name][()], compression="gzip" if name == "features" else None,
                             chunks=f[name].chunks)
        g.attrs.update(dict(f.attrs))
    dst.replace(src)
    m = json.loads((path / "manifest.json").read_text())
    m["shards"][1].update(bytes=src.stat().st_size, sha256=hashlib.sha256(src.read_bytes()).hexdigest())
    (path / "manifest.json").write_text(json.dumps(m))
    c = open_cache(path)
    assert c._chunk_offsets(1) is None and c._chunk_offsets(0) is not None
    for i in range(N):
        np.testing.assert_array_equal(c.feature_map(i), image_features(i).astype(np.float16).astype(np.float32))
    c.verify()
