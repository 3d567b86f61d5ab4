"""Analysis reliability: bad rankings, counts, one-class labels, PNGs that do not fit, locked outputs."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_visualize import DIM, GRID, IMAGE_HW, IMAGES, LABEL, feature_map, world  # noqa: F401 - fixture

from cache import CacheWriter
from helpers.train_data import write_train_cache
from mammosae_jax.cli import concepts, fit_head, intervene, visualize


def _error(capsys, main, argv) -> list[str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]  # minus progress bars


@pytest.fixture()
def framed(world, tmp_path):  # noqa: F811 - the imported fixture
    """The visualize world with a cache that records its PNG frame, as the extractor's do."""
    root = shutil.copytree(world, tmp_path / "w", ignore=shutil.ignore_patterns("out_*", "cache"))
    with CacheWriter(root / "cache", grid=GRID, dim=DIM, dtype="float32", label_names=[LABEL], shard_size=3,
                     preprocessing={"input_hw": list(IMAGE_HW)}) as w:
        w.add(np.stack([feature_map(cell, s) for _, _, _, cell, s, _ in IMAGES]),
              patient_id=[r[0] for r in IMAGES], image_id=[r[1] for r in IMAGES], split=[r[2] for r in IMAGES],
              labels=np.array([[int(bool(r[5]))] for r in IMAGES]))
    return root


def _viz_args(root, out, *extra):
    return ["--cache", str(root / "cache"), "--csv", str(root / "rows.csv"), "--images", str(root / "png"),
            "--sae", str(root / "sae.safetensors"), "--out", str(out), *extra]


def test_visualize_refuses_a_png_of_another_size_than_the_cache_was_extracted_from(framed, capsys):
    out = framed / "out"
    assert visualize.main(_viz_args(framed, out, "--latents", "0", "--gallery-size", "0")) == 0  # the frame fits
    capsys.readouterr()
    victim = framed / "png" / "p1" / "imgA.png"
    Image.open(victim).resize((IMAGE_HW[1] * 2, IMAGE_HW[0] * 2)).save(victim)
    err = _error(capsys, visualize.main, _viz_args(framed, framed / "out2", "--latents", "0"))
    assert err == [f"error: image {victim} is {IMAGE_HW[0] * 2}x{IMAGE_HW[1] * 2} (HxW) but the cache was extracted "
                   f"from {IMAGE_HW[0]}x{IMAGE_HW[1]} images; give --images the PNG folder the cache was extracted from"]


def test_visualize_on_a_truncated_png_writes_nothing(framed, capsys):
    victim = framed / "png" / "p1" / "imgB.png"
    victim.write_bytes(victim.read_bytes()[:200])  # the header survives, the pixels do not
    out = framed / "out"
    err = _error(capsys, visualize.main, _viz_args(framed, out, "--latents", "0,1", "--gallery-size", "2"))
    assert len(err) == 1 and err[0].startswith(f"error: cannot read {victim} (")
    assert err[0].endswith("); restore the PNG and rerun (nothing was written)")
    assert not out.exists()  # no partial images/ or galleries/


def _bad_ranking(world, tmp_path, record):  # noqa: F811
    ranking = shutil.copytree(world / "ranking", tmp_path / "ranking")
    path = sorted(ranking.glob("*class=0*"))[0]
    records = json.loads(path.read_text())
    records[0].update(record)
    path.write_text(json.dumps(records))
    return ranking, path


@pytest.mark.parametrize("record, what", [({"index": 1.5}, "index 1.5"), ({"index": "2"}, "index '2'"),
                                          ({"rank": True}, "rank True")])
def test_a_non_integer_ranking_index_is_refused_by_visualize_and_intervene(world, tmp_path, capsys, record, what):  # noqa: F811
    ranking, path = _bad_ranking(world, tmp_path, record)
    expected = [f"error: {path.name}: record 0 has {what}, expected an integer"]
    err = _error(capsys, visualize.main, _viz_args(world, tmp_path / "v", "--ranking", str(ranking), "--label", LABEL))
    assert err == expected
    err = _error(capsys, intervene.main, ["--cache", str(world / "cache"), "--sae", str(world / "sae.safetensors"),
                                          "--ranking", str(ranking), "--label", LABEL, "--out", str(tmp_path / "i")])
    assert err == expected


@pytest.mark.parametrize("flag", ["--top", "--batch-size"])
def test_concepts_counts_must_be_positive(world, tmp_path, capsys, flag):  # noqa: F811
    err = _error(capsys, concepts.main, ["--cache", str(world / "cache"), "--sae", str(world / "sae.safetensors"),
                                         "--label", LABEL, "--out", str(tmp_path / "c"), flag, "-5"])
    assert err[-1] == f"python -m mammosae_jax.concepts: error: argument {flag}: must be >= 1, got -5"
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("flag, value, minimum", [("--top", "0", 1), ("--window", "0", 1), ("--batch-size", "0", 1),
                                                  ("--n-images", "-1", 0), ("--gallery-size", "-1", 0)])
def test_visualize_counts_must_be_in_range(world, tmp_path, capsys, flag, value, minimum):  # noqa: F811
    err = _error(capsys, visualize.main, _viz_args(world, tmp_path / "v", "--latents", "0", flag, value))
    assert err[-1] == f"python -m mammosae_jax.visualize: error: argument {flag}: must be >= {minimum}, got {value}"


@pytest.mark.parametrize("C", ["auto", "1.0"])
def test_fit_head_on_a_one_class_label_is_one_error(tmp_path, capsys, C):
    cache = write_train_cache(tmp_path / "c")  # every image has Mass = 0
    err = _error(capsys, fit_head.main, ["--cache", str(cache), "--label", "Mass", "--C", C,
                                         "--out", str(tmp_path / "head.safetensors")])
    assert err == ["error: fitting a 'Mass' head needs every class 0..1 in the training split, got [0]"]
    assert not (tmp_path / "head.safetensors").exists()


HOLD = ("import sys, time; from cache.lock import lock_output; lock = lock_output(sys.argv[1], is_file=sys.argv[2] == '1'); "
        "print('held', flush=True); time.sleep(60)")


@pytest.mark.parametrize("command", ["visualize", "fit_head"])
def test_a_second_writer_of_an_analysis_output_is_refused(world, tmp_path, capsys, command):  # noqa: F811
    out = tmp_path / ("head.safetensors" if command == "fit_head" else "v")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "1" if command == "fit_head" else "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        if command == "fit_head":
            err = _error(capsys, fit_head.main, ["--cache", str(world / "cache"), "--label", LABEL, "--out", str(out)])
        else:
            err = _error(capsys, visualize.main, _viz_args(world, out, "--latents", "0"))
        assert err == [f"error: {out} is being written by another live process (pid {holder.pid}); "
                       "wait for it to finish or stop it, or use another output folder"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    if command == "visualize":  # the killed holder's lock is stale: the next run takes it
        assert visualize.main(_viz_args(world, out, "--latents", "0", "--gallery-size", "0")) == 0
