"""Cache reliability: each corrupt-cache variant is one named error (in the library and through a CLI);
the folder lock refuses a second writer and is taken at once after its holder is killed."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

import cache
from cache.lock import FolderLock
from helpers.train_data import write_train_cache
from mammosae_jax.cli.train import main as train_main

REDO = "restore the cache from a copy or re-extract it with --overwrite"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_train_cache(tmp_path_factory.mktemp("cache") / "c")  # 24 images, shards of 8


def _edit_manifest(path, edit):
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _no_shards(m):
    del m["shards"]


def _n_images(m):
    m["n_images"] = 25


def _shard_count(m):  # both counts edited consistently: only the shard itself can tell
    m["n_images"] = 25
    m["shards"][0]["n_images"] = 9


def _shard_bytes(m):
    m["shards"][1]["bytes"] = "many"


def _heap(path):  # the HDF5 global heap that holds the id strings, damaged in place
    shard = path / "shard-00000.h5"
    data = bytearray(shard.read_bytes())
    at = data.index(b"GCOL")
    data[at:at + 4] = b"XXXX"
    shard.write_bytes(bytes(data))


def _not_json(path):
    (path / "manifest.json").write_text('{"format_version": 1, "shards": [')


def _missing(path):
    (path / "shard-00002.h5").unlink()


def _truncated(path):
    shard = path / "shard-00001.h5"
    shard.write_bytes(shard.read_bytes()[:-100])


CASES = {
    "manifest without shards": (lambda p: _edit_manifest(p, _no_shards), cache.CacheDamagedError,
                                "{m}: 'shards' is missing, expected list; the manifest is damaged: " + REDO),
    "n_images edited": (lambda p: _edit_manifest(p, _n_images), cache.CacheDamagedError,
                        "{m}: n_images is 25 but the shards hold 24 images; the manifest was edited or is damaged: "
                        + REDO),
    "shard count edited": (lambda p: _edit_manifest(p, _shard_count), cache.CacheDamagedError,
                           "{p}/shard-00000.h5 holds 8 images but the manifest says 9; " + REDO),
    "shard bytes not a number": (lambda p: _edit_manifest(p, _shard_bytes), cache.CacheDamagedError,
                                 "{m}: shards[1].'bytes' is 'many', expected int; the manifest is damaged: " + REDO),
    "string heap damaged": (_heap, cache.CacheChecksumError,
                            "shard {p}/shard-00000.h5 cannot be read ("),
    "manifest not JSON": (_not_json, cache.CacheVersionError, "{m} is not a valid manifest ("),
    "shard missing": (_missing, cache.CacheMissingShardError, "shard {p}/shard-00002.h5 is missing; restore it "
                      "from a copy of the cache, or re-extract with --overwrite"),
    "shard truncated": (_truncated, cache.CacheChecksumError, "shard {p}/shard-00001.h5 has "),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_corrupt_cache_is_one_named_error_in_the_library_and_the_cli(good, tmp_path, capsys, case):
    damage, error, message = CASES[case]
    path = shutil.copytree(good, tmp_path / "c")
    damage(path)
    expected = message.format(p=path, m=path / "manifest.json")
    with pytest.raises(error) as e:
        cache.open_cache(path)
    assert str(e.value).startswith(expected)
    argv = ["--cache", str(path), "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "16", "--no-progress"]
    try:
        rc = train_main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {expected}"), err
    assert not (tmp_path / "run").exists()


def test_a_resuming_writer_refuses_a_damaged_manifest_by_name(good, tmp_path):
    path = shutil.copytree(good, tmp_path / "c")
    _edit_manifest(path, _no_shards)
    with pytest.raises(cache.CacheDamagedError, match="'shards' is missing, expected list"):
        cache.CacheWriter(path, grid=(2, 4), dim=16, dtype="float32", label_names=["Mass"], shard_size=8)


HOLD = ("import sys, time; from cache.lock import FolderLock; lock = FolderLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(60)")


def test_folder_lock_refuses_a_live_holder_and_takes_a_killed_ones_lock(tmp_path):
    folder = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(cache.FolderBusyError) as e:
            FolderLock(folder).acquire()
        assert str(e.value) == (f"{folder} is being written by another live process (pid {holder.pid}); "
                                "wait for it to finish or stop it, or use another output folder")
        assert isinstance(e.value, cache.CacheBusyError)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (folder / "write.lock").read_text() == str(holder.pid)  # the stale lock file is still there
    with FolderLock(folder) as lock:  # and is taken at once
        assert (folder / "write.lock").read_text() == str(os.getpid()) and lock.fd >= 0
    assert lock.fd == -1


def test_folder_lock_on_a_file_is_an_input_error(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    with pytest.raises(cache.CacheInputError, match=f"{path} is a file, not a folder; choose another output path"):
        FolderLock(path).acquire()
    with pytest.raises(cache.CacheInputError, match=f"{path} is a file, not a folder; choose another output path"):
        cache.CacheWriter(path, grid=(1, 1), dim=2, label_names=["y"])  # the writer's lock says so too
