"""The one top-level error handler (cache/cli_errors.py): applied to every CLI, one `error:` line and
exit 2 for known errors, tracebacks for bugs and under --debug."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from cache import CacheDamagedError
from cache.cli_errors import cli_main, error_line, is_known
from mammosae_jax.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
EXTRACT_CLIS = ("dump_features", "convert_checkpoint", "embed_prompts", "finetune", "phantoms", "preprocess_dicom")


@pytest.mark.parametrize("module", [f"mammosae_jax.cli.{c}" for c in COMMANDS] + ["mammosae_jax.cli"]
                         + [f"extract.{c}" for c in EXTRACT_CLIS])
def test_every_cli_main_is_wrapped(module):
    main = importlib.import_module(module).main
    assert getattr(main, "__wrapped__", None) is not None and main.__module__ == module
    assert main.__code__ is cli_main(lambda argv=None: None).__code__  # the wrapper's own code


class ProjectError(Exception):
    pass


ProjectError.__module__ = "mammosae_jax.somewhere"


def _run(capsys, raise_, argv=None):
    seen = []

    @cli_main
    def main(argv=None):
        seen.append(argv)
        raise raise_

    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err, seen


@pytest.mark.parametrize("exc, line", [
    (ValueError("--lr must be a finite number > 0, got -1.0"), "error: --lr must be a finite number > 0, got -1.0"),
    (ProjectError("two\nlines"), "error: two lines"),
    (CacheDamagedError("m.json: 'shards' is missing"), "error: m.json: 'shards' is missing"),
    (FileNotFoundError(2, "No such file or directory", "x.h5"), "error: [Errno 2] No such file or directory: 'x.h5'"),
    (OSError("Unable to synchronously open file (bad object header version number)"),
     "error: Unable to synchronously open file (bad object header version number)"),
])
def test_known_errors_are_one_line_and_exit_2(capsys, exc, line):
    code, err, _ = _run(capsys, exc, ["--x"])
    assert code == 2 and err == line + "\n"


def test_debug_shows_the_traceback_and_is_removed_from_argv(capsys):
    code, err, seen = _run(capsys, ValueError("bad"), ["--out", "o", "--debug"])
    assert code == 2 and seen == [["--out", "o"]]
    assert err.startswith("Traceback (most recent call last):") and err.endswith("ValueError: bad\nerror: bad\n")


def test_a_bug_keeps_its_traceback(capsys):
    @cli_main
    def main(argv=None):
        return {}["missing"]

    with pytest.raises(KeyError):
        main([])
    assert not is_known(KeyError("k")) and not is_known(ZeroDivisionError()) and is_known(ProjectError())


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    code, err, _ = _run(capsys, KeyboardInterrupt(), [])
    assert code == 130 and err == "error: interrupted\n"


def test_error_line_of_an_empty_message_names_the_class():
    assert error_line(ProjectError()) == "error: ProjectError"


def test_a_real_cli_under_debug_prints_traceback_then_the_line(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    r = subprocess.run([sys.executable, "-m", "extract.convert_checkpoint", str(tmp_path / "x.pth"), str(folder),
                        "--debug"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback (most recent call last):" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: {folder} is a folder; give the output file's name"
    r = subprocess.run([sys.executable, "-m", "extract.convert_checkpoint", str(tmp_path / "x.pth"), str(folder)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == f"error: {folder} is a folder; give the output file's name\n"


def test_an_output_lock_is_released_when_its_command_returns_even_if_a_traceback_keeps_the_frame(tmp_path):
    import gc

    from cache.lock import lock_output

    out = tmp_path / "interventions"
    kept = []

    @cli_main
    def command(argv=None):
        lock_output(out)
        try:
            raise ValueError("caught inside the command")
        except ValueError as e:
            kept.append(e)  # its traceback references this frame: a cycle only the collector frees
        return 0

    gc.disable()
    try:
        assert command([]) == 0
        assert command([]) == 0  # the demo runs one command after another in one process
        lock_output(out).release()  # outside a command: released by hand
        @cli_main
        def twice(argv=None):
            lock_output(out)
            lock_output(out)

        with pytest.raises(SystemExit) as e:  # within one command the lock is still held
            twice([])
        assert e.value.code == 2
        lock_output(out).release()  # and released when that command failed
    finally:
        gc.enable()


def test_debug_given_to_the_dispatcher_reaches_the_command(tmp_path):
    argv = [sys.executable, "-m", "mammosae_jax", "fit_head", "--cache", str(tmp_path / "none"), "--label", "Mass",
            "--out", str(tmp_path / "h.safetensors")]
    line = f"error: {tmp_path / 'none'} is not a feature cache (no manifest.json); check the path or extract it first"
    plain = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert plain.returncode == 2 and plain.stderr == line + "\n"
    debug = subprocess.run([*argv, "--debug"], cwd=REPO, capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback (most recent call last):" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == line
