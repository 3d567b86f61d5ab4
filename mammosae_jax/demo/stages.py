"""A tiny stage runner: each stage is a command with declared outputs, skipped when they exist.

Used by `mammosae_jax.demo`. A stage's outputs are only trusted if its marker file exists, and
the marker is written after the command succeeded, so an interrupted stage is simply rerun.
A `python -m module ...` stage may run in this process (`in_process=True`): the module's
``main(argv)`` is called with the same arguments and its output goes to the same log, which
saves the interpreter and library start-up (~10 s per JAX stage on a 2-core machine).
Every stage's output goes to `logs/<stage>.log` and, live, to the terminal (`demo.live_log`).
"""
from __future__ import annotations

import codecs
import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

from cache.atomic import write_json_atomic
from mammosae_jax.demo.live_log import LiveLog


class StageFailed(RuntimeError):
    """A stage's command exited non-zero."""


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: a command and the folder where its completion marker lives."""

    name: str
    argv: tuple[str, ...]
    marker_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    clean: bool = False
    """remove `marker_dir` before running (for commands that refuse to overwrite their output)."""
    in_process: bool = False
    """call the module's ``main(argv)`` here instead of starting `argv` (`python -m` stages only)."""

    def __post_init__(self) -> None:
        if self.in_process and (len(self.argv) < 3 or self.argv[1] != "-m" or self.env):
            raise ValueError(f"stage {self.name!r}: only a `python -m module ...` stage without extra "
                             "environment can run in process")

    @property
    def marker(self) -> Path:
        return self.marker_dir / f".stage-{self.name}.done.json"

    def is_done(self) -> bool:
        if not self.marker.exists():
            return False
        recorded = json.loads(self.marker.read_text())
        return recorded.get("argv") == list(self.argv)


@dataclass
class StageResult:
    name: str
    seconds: float
    skipped: bool


def run_stage(stage: Stage, log_dir: Path, force: bool = False) -> StageResult:
    """Run `stage` unless it already completed with the same command; log to `log_dir/<name>.log`."""
    if stage.is_done() and not force:
        print(f"[{stage.name}] done already, reusing ({stage.marker.parent})", flush=True)
        return StageResult(stage.name, 0.0, skipped=True)
    if stage.clean and stage.marker_dir.exists():
        shutil.rmtree(stage.marker_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{stage.name}.log"
    print(f"[{stage.name}] {shlex.join(stage.argv)}", flush=True)
    started = time.perf_counter()
    with log_path.open("w") as log_file:
        log = LiveLog(log_file, stage.name)
        if stage.in_process:
            returncode = _call_main(stage.argv[2], list(stage.argv[3:]), log)
        else:
            returncode = _run_streamed(stage, log)
        log.close_line()
    seconds = time.perf_counter() - started
    if returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise StageFailed(f"stage {stage.name!r} failed (exit {returncode}); log {log_path}:\n{tail}")
    stage.marker.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage.marker, {"argv": list(stage.argv), "seconds": seconds})
    print(f"[{stage.name}] finished in {seconds:.1f} s", flush=True)
    return StageResult(stage.name, seconds, skipped=False)


def _run_streamed(stage: Stage, log: LiveLog) -> int:
    """Run the stage's command, its stdout and stderr streamed into `log` as they come."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **stage.env}
    with subprocess.Popen(stage.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc:
        assert proc.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := proc.stdout.read1(65536):
            log.write(decoder.decode(chunk))
        log.write(decoder.decode(b"", final=True))
    return proc.returncode


def _call_main(module_name: str, args: list[str], log) -> int:
    """Run ``module_name.main(args)`` with stdout and stderr going to `log`; its exit status."""
    with redirect_stdout(log), redirect_stderr(log):
        try:
            code = importlib.import_module(command_module(module_name)).main(args)
        except SystemExit as exit_:
            code = exit_.code
        except Exception:  # noqa: BLE001 - the stage fails with its traceback in the log
            traceback.print_exc()
            return 1
        if isinstance(code, str):  # sys.exit("message")
            print(code)
            return 1
    return 0 if code is None else int(code)


def command_module(module_name: str) -> str:
    """The module whose ``main`` `python -m module_name` runs: `mammosae_jax.<command>` is a shim
    that forwards to `mammosae_jax.cli.<command>`."""
    package, _, command = module_name.partition(".")
    return f"mammosae_jax.cli.{command}" if package == "mammosae_jax" and command and "." not in command else module_name


def python_module(module: str, *args: str) -> tuple[str, ...]:
    """argv running `python -m module args...` with this interpreter."""
    return (sys.executable, "-m", module, *args)
