"""Convert SAE weights between formats: the reference ``.pt``, SAELens ``.safetensors``, run folders.

    python -m mammosae_jax.convert sparse_autoencoder_final.pt mammosae.safetensors
    python -m mammosae_jax.convert runs/relu_8x mammosae_jax_export.pt
    python -m mammosae_jax.convert --from-hub out/published.safetensors

The format of SRC and DST comes from the name (a folder = a run folder). Weights are copied
bit for bit; DST is written atomically and is never overwritten without --force.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from mammosae_jax.formats.common import FormatError
from mammosae_jax.formats.hub import HUB_FILENAME, HUB_REPO

from mammosae_jax.models.conversion import Converted, convert
from cache.cli_errors import cli_main, print_error


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mammosae_jax.convert",
        description="Convert SAE weights between the reference PyTorch .pt (SPEC §3), SAELens "
                    ".safetensors (+ cfg.json beside it) and training run folders. The format "
                    "is chosen by the file name: .pt/.pth, .safetensors, or a folder.",
    )
    p.add_argument("src", metavar="SRC", nargs="?",
                   help="input weights; with --from-hub, the file name inside the Hub repo "
                        f"(default {HUB_FILENAME})")
    p.add_argument("dst", metavar="DST", help="output: x.pt, x.safetensors or a folder")
    p.add_argument("--from-hub", action="store_true",
                   help="download SRC from the Hugging Face Hub repo --repo first (needs network "
                        "and huggingface_hub; fails at once when offline)")
    p.add_argument("--repo", default=HUB_REPO, help=f"Hub model repo for --from-hub (default {HUB_REPO})")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    return p


def _run(args: argparse.Namespace) -> Converted:
    if args.from_hub:
        from mammosae_jax.formats.hub import fetch_from_hub

        return convert(fetch_from_hub(args.repo, args.src or HUB_FILENAME), args.dst, force=args.force)
    if args.src is None:
        raise FormatError("SRC is required (unless --from-hub)")
    return convert(args.src, args.dst, force=args.force)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            done = _run(args)
        except FormatError as e:
            error: FormatError | None = e
        else:
            error = None
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    if error is not None:
        print_error(error)
        return 2
    c = done.sae.config
    print(f"wrote {done.path} (d_in={c.d_in}, n_latents={c.n_latents}, variant={c.variant})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
