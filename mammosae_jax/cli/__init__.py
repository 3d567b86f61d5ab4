"""The command-line layer: one thin module per command, the only place argparse is used.

Each command is `python -m mammosae_jax.<name>` (the documented form), `mammosae <name>` and
`mammosae-<name>` (console scripts). No command module imports another.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

from cache.cli_errors import cli_main

COMMANDS: dict[str, str] = {
    "train": "train one SAE on a feature cache",
    "sweep": "train many SAEs in one pass over a cache",
    "convert": "convert SAE weights between the reference .pt, SAELens safetensors and run folders",
    "fit_head": "fit a concept head on pooled training features",
    "evaluate": "concept metrics on raw features and through an SAE",
    "concepts": "rank latents per concept class",
    "intervene": "top-k latent interventions on a concept head",
    "visualize": "heatmaps, localisation scores and galleries of latents",
    "name_latents": "name latents with Mammo-CLIP's text encoder",
    "dashboard": "one self-contained HTML page to browse a run's latents",
    "demo": "the whole pipeline on the embedded phantom data set",
}
"""Every command and its one-line job (`python -m mammosae_jax` prints them)."""


def usage() -> str:
    lines = ["usage: mammosae <command> [options]   (or python -m mammosae_jax.<command>)", "", "commands:"]
    lines += [f"  {name:<13} {job}" for name, job in COMMANDS.items()]
    return "\n".join(lines)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """`mammosae <command> ...`: run one command; no command (or --help) lists them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name = argv[0].replace("-", "_")
    if name not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    code = importlib.import_module(f"mammosae_jax.cli.{name}").main(argv[1:])
    return 0 if code is None else int(code)
