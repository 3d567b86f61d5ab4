"""The embedded default, end to end: phantoms → features → cache → SAE → concepts → report.

    python -m mammosae_jax.demo --out demo_out [--n-images 480 --height 512 --width 304 ...]

Every stage is one of this package's own CLIs, run with the arguments a user would type. The
PyTorch stages (phantoms, extraction) are subprocesses, so torch and jax never share a process;
the JAX stages call their CLI's ``main(argv)`` in this process (``--subprocess``: start each one
as its own process, as a user would; slower by the start-up of every stage). A stage whose
command already completed is reused; change a flag and that stage and everything after it run
again. The quality gates of the embedded default are checked at the end, printed, and written
with the report.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cache.config_options import add_config_options, config_from_args
from mammosae_jax.demo.plan import CHOICES, DemoConfig, run_demo
from cache.cli_errors import cli_main


def parse_config(argv: list[str] | None) -> tuple[DemoConfig, Path, bool, bool]:
    parser = argparse.ArgumentParser(prog="python -m mammosae_jax.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    parser.add_argument("--force", action="store_true", help="rerun every stage even if it completed before")
    parser.add_argument("--subprocess", action="store_true",
                        help="run the JAX stages as subprocesses too (default: in this process, which saves "
                             "their start-up time); the outputs are the same")
    add_config_options(parser, DemoConfig, choices=CHOICES)
    args = parser.parse_args(argv)
    return config_from_args(DemoConfig, args), args.out, args.force, args.subprocess


@cli_main
def main(argv: list[str] | None = None) -> int:
    config, out, force, subprocess_only = parse_config(argv)
    return run_demo(config, out, force=force, in_process=not subprocess_only)


if __name__ == "__main__":
    sys.exit(main())
