"""Extraction reliability: no mixed cache on resume, bad inputs refused early, write failures resume."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.encoder_data import ONE_THREAD_ENV, write_classifier_pth
from PIL import Image
from test_dump_features import classifier, cli, data, one_torch_thread, run_error  # noqa: F401 - fixtures

from cache import CacheChecksumError, open_cache
from cache.integrity import CacheFingerprintWarning
from extract.dump_features import main

REPO = Path(__file__).resolve().parents[1]
WAY_OUT = "use the same settings to resume, or rerun with --overwrite (or use a new --out) to start again"


def _argv(data: Path, out: Path, ckpt: Path, *extra: str) -> list[str]:
    """The extraction command of these tests (float32, batches of 4, shards of 5) with `ckpt`."""
    return cli(data, out, "--checkpoint", str(ckpt), "--dtype", "float32", "--batch-size", "4", "--shard-size", "5",
               *extra)


def _extract(data: Path, out: Path, ckpt: Path, *extra: str) -> None:
    main(_argv(data, out, ckpt, *extra))


def _refusal(capsys, argv: list[str], out: Path) -> list[str]:
    """The refused resume's settings differences (its one error line, split), after checking the frame."""
    line = run_error(capsys, argv)
    head = f"error: {out} was written with different settings ("
    assert line.startswith(head) and line.endswith(f"); {WAY_OUT}"), line
    return line[len(head):-len(f"); {WAY_OUT}")].split("; ")


def _unchanged(out: Path, manifest_before: str) -> None:
    assert (out / "manifest.json").read_text() == manifest_before
    open_cache(out, allow_incomplete=True).verify()


def _as_if_killed(out: Path) -> None:
    """Leave `out` as an extraction killed after its first shard leaves it (resumable)."""
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(complete=False, n_images=manifest["shards"][0]["n_images"], shards=manifest["shards"][:1],
                    rows=None, head=None)
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_test_split_then_all_on_one_out_is_refused(data, classifier, tmp_path, capsys):
    out = tmp_path / "c"
    _extract(data, out, classifier[0], "--split", "test")
    before = (out / "manifest.json").read_text()
    diff = _refusal(capsys, _argv(data, out, classifier[0], "--split", "all"), out)
    n_test = len(open_cache(out))
    assert [d.split(":")[0] for d in diff] == ["fingerprint images_sha256", "fingerprint n_images",
                                               "fingerprint rows_sha256", "fingerprint split"]
    assert f"fingerprint n_images: existing {n_test} != requested 12" in diff
    assert "fingerprint split: existing 'test' != requested 'all'" in diff
    _unchanged(out, before)


def test_a_killed_extraction_rerun_with_another_csv_is_refused(data, classifier, tmp_path, capsys):
    out = tmp_path / "c"
    _extract(data, out, classifier[0])
    _as_if_killed(out)
    before = (out / "manifest.json").read_text()
    other = tmp_path / "other.csv"
    rows = pd.read_csv(data / "vindr_detection_v1_folds.csv", dtype=str, keep_default_na=False)
    rows.loc[0, "breast_birads"] = "BI-RADS 5" if rows.loc[0, "breast_birads"] != "BI-RADS 5" else "BI-RADS 1"
    rows.to_csv(other, index=False)
    argv = _argv(data, out, classifier[0])
    argv[argv.index("--csv") + 1] = str(other)
    diff = _refusal(capsys, argv, out)
    assert len(diff) == 1 and diff[0].startswith("fingerprint rows_sha256: existing '")
    _unchanged(out, before)


def test_a_killed_extraction_rerun_with_another_checkpoint_of_the_same_file_name_is_refused(data, classifier, tmp_path, capsys):
    out = tmp_path / "c"
    _extract(data, out, classifier[0])
    _as_if_killed(out)
    before = (out / "manifest.json").read_text()
    _, state, weight, bias = classifier
    twin = tmp_path / "twin" / classifier[0].name
    twin.parent.mkdir()
    write_classifier_pth(twin, {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, weight, bias)
    diff = _refusal(capsys, _argv(data, out, twin), out)
    assert len(diff) == 1 and diff[0].startswith("fingerprint checkpoint_sha256: existing '")
    _unchanged(out, before)


def test_a_renamed_copy_of_the_checkpoint_resumes(data, classifier, tmp_path):
    out = tmp_path / "c"
    one = ("--limit", "6", "--batch-size", "1")  # batches of one: the same arithmetic before and after the kill
    _extract(data, out, classifier[0], *one)
    _as_if_killed(out)
    renamed = shutil.copy(classifier[0], tmp_path / "renamed.pth")
    _extract(data, out, Path(renamed), *one)
    whole = tmp_path / "whole"
    _extract(data, whole, classifier[0], *one)
    a, b = open_cache(whole), open_cache(out)
    assert len(b) == 6 and b.verify().n_images == 6
    for i in range(6):
        np.testing.assert_array_equal(a.feature_map(i), b.feature_map(i))


def test_a_cache_without_fingerprint_warns_in_verify_and_refuses_to_resume(data, classifier, tmp_path, capsys):
    out = tmp_path / "c"
    _extract(data, out, classifier[0])
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["fingerprint"]  # as written before fingerprints existed
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(CacheFingerprintWarning, match=f"{out} records no fingerprint"):
        assert open_cache(out).verify().n_images == 12
    diff = _refusal(capsys, _argv(data, out, classifier[0]), out)
    assert diff == ["fingerprint: the existing cache records none (written by an older version), so what it "
                    "holds cannot be checked"]


def test_verify_catches_a_row_table_or_image_list_from_elsewhere(data, classifier, tmp_path):
    out = tmp_path / "c"
    _extract(data, out, classifier[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_cache(out).verify()  # a fingerprinted cache verifies without a warning
    table = json.loads((out / "rows.json").read_text())
    table["data"]["Mass"] = [1 - v for v in table["data"]["Mass"]]
    (out / "rows.json").write_text(json.dumps(table))
    from cache.format import sha256_file

    manifest = json.loads((out / "manifest.json").read_text())
    manifest["rows"]["sha256"] = sha256_file(out / "rows.json")  # checksums patched: only the fingerprint knows
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheChecksumError, match="rows.json is not the row table of the fingerprint's CSV rows"):
        open_cache(out).verify()
    manifest["fingerprint"]["n_images"] = 13
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheChecksumError, match="holds 12 images but its fingerprint says 13"):
        open_cache(out).verify()


LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
import cache.writer
if sys.argv.pop(1) == "no-preflight":  # as if the room vanished between the check and the write
    cache.writer.check_room = lambda *args: None
finish = cache.writer.CacheWriter._finish_shard
def finish_then_limit(self):
    finish(self)
    if len(self._manifest["shards"]) == 2:  # from now on no file may grow past 4 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
cache.writer.CacheWriter._finish_shard = finish_then_limit
from extract.dump_features import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("where", ["preflight", "no-preflight"])
def test_a_write_failure_mid_extraction_is_one_error_and_the_cache_resumes_identically(data, classifier, tmp_path,
                                                                                       where):
    argv = cli(data, tmp_path / "c", "--checkpoint", str(classifier[0]), "--dtype", "float32",
               "--batch-size", "1", "--shard-size", "2")
    failed = subprocess.run([sys.executable, "-c", LIMITED, where, *argv], cwd=REPO, capture_output=True, text=True,
                            env=ONE_THREAD_ENV)
    err = failed.stderr.strip().splitlines()
    assert failed.returncode == 2, failed.stderr  # not 139: HDF5 never gets to crash at exit
    if where == "preflight":  # the writer sees the limit coming: nothing but the one line
        assert err == [f"error: not enough room to write {tmp_path / 'c'}: the next batch needs about "
                       f"{8448 * 4 + (1 << 20)} bytes, the file size limit (ulimit -f) is 4096 bytes; the 4 images "
                       "in complete shards are kept: free space (or raise the limit) and rerun the same command "
                       "to resume"]
    else:  # HDF5 itself failed: the last line says so
        assert err[-1] == (f"error: writing {tmp_path / 'c'} failed (File too large); the 4 images in complete "
                           "shards are kept: free space (or raise the file size limit) and rerun the same command "
                           "to resume")
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert not manifest["complete"] and manifest["n_images"] == 4
    assert sorted(p.name for p in (tmp_path / "c").glob("shard-*")) == ["shard-00000.h5", "shard-00001.h5"]
    main(argv)  # the same command without the limit resumes
    whole = tmp_path / "whole"
    argv[argv.index(str(tmp_path / "c"))] = str(whole)
    main(argv)
    a, b = open_cache(whole), open_cache(tmp_path / "c")
    assert a.image_ids == b.image_ids and b.verify().n_images == 12
    for i in range(12):
        np.testing.assert_array_equal(a.feature_map(i), b.feature_map(i))
    np.testing.assert_array_equal(a.logits(), b.logits())
    pd.testing.assert_frame_equal(a.rows, b.rows)


def test_integer_cast_encoder_weights_are_refused(data, classifier, tmp_path, capsys):
    _, state, weight, bias = classifier
    cast = tmp_path / "cast.pth"
    write_classifier_pth(cast, {k: v.to(torch.int64) for k, v in state.items()}, weight, bias)
    line = run_error(capsys, cli(data, tmp_path / "c", "--checkpoint", str(cast)))
    assert line.startswith(f"error: {cast} holds non-float encoder weights (")
    assert line.endswith("); it was cast or damaged: use the original checkpoint")
    assert "torch.int64 (expected torch.float32)" in line
    assert not list((tmp_path / "c").glob("shard-*"))


def test_nan_encoder_weights_are_refused(data, classifier, tmp_path, capsys):
    _, state, weight, bias = classifier
    bad = tmp_path / "nan.pth"
    state = dict(state, **{"_conv_stem.weight": state["_conv_stem.weight"].clone().fill_(float("nan"))})
    write_classifier_pth(bad, state, weight, bias)
    line = run_error(capsys, cli(data, tmp_path / "c", "--checkpoint", str(bad)))
    assert line == f"error: {bad} has NaN/inf encoder weights (1: _conv_stem.weight); use an undamaged checkpoint"


def test_a_zero_byte_pth_is_called_empty(data, tmp_path, capsys):
    empty = tmp_path / "model.pth"
    empty.write_bytes(b"")
    line = run_error(capsys, cli(data, tmp_path / "c", "--checkpoint", str(empty)))
    assert line == f"error: checkpoint {empty} is empty (0 bytes); the download or copy did not finish"
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"<html>not found</html>")
    line = run_error(capsys, cli(data, tmp_path / "c", "--checkpoint", str(garbage)))
    assert line == (f"error: {garbage} is not a torch checkpoint (it starts with neither a zip nor a pickle "
                    "header); the file is damaged or not a Mammo-CLIP checkpoint")


def test_out_that_is_a_file_is_refused_before_any_work(data, classifier, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    assert run_error(capsys, cli(data, out, "--checkpoint", str(classifier[0]))) == (
        f"error: --out {out} is an existing file, not a folder; choose another --out")
    assert run_error(capsys, cli(data, out / "sub", "--checkpoint", str(classifier[0]))) == (
        f"error: cannot write --out {out / 'sub'}: {out} is a file")
    assert out.read_text() == "not a folder"


def test_an_empty_csv_is_named(data, classifier, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    argv = cli(data, tmp_path / "c", "--checkpoint", str(classifier[0]))
    argv[argv.index("--csv") + 1] = str(empty)
    line = run_error(capsys, argv)
    assert line.startswith(f"error: {empty}: ") and "No columns to parse" in line


def test_a_blank_image_is_warned_by_name(data, classifier, tmp_path, capsys):
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    victim = sorted((bad / "images_png").rglob("*.png"))[3]
    Image.fromarray(np.full((96, 64), 17, np.uint8)).save(victim)
    _extract(bad, tmp_path / "c", classifier[0])
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("warning:")] == [
        f"warning: {victim} is a constant (blank) image; its features carry no image content"]
    assert len(open_cache(tmp_path / "c")) == 12

