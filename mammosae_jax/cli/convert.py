"""Convert SAE weights between formats: the reference ``.pt``, SAELens ``.safetensors``, run folders.

    python -m mammosae_jax.convert sparse_autoencoder_final.pt mammosae.safetensors
    python -m mammosae_jax.convert runs/relu_8x mammosae_jax_export.pt
    python -m mammosae_jax.convert --from-hub out/published.safetensors          # the published .pt
    python -m mammosae_jax.convert --from-hub USER/REPO SAE_ID runs/theirs        # a SAELens Hub SAE
    python -m mammosae_jax.convert --from-hub hub_dir runs/theirs                 # a local copy of one
    python -m mammosae_jax.convert runs/topk_8x hub_dir --to-hub topk_8x          # ready to upload

The format of SRC and DST comes from the name (a folder = a run folder). Weights are copied
bit for bit; DST is written atomically and is never overwritten without --force.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

from mammosae_jax.formats.common import FormatError
from mammosae_jax.formats.hub import HUB_FILENAME, HUB_REPO

from mammosae_jax.models.conversion import Converted, convert
from cache.cli_errors import cli_main, print_error

_FILE_SUFFIXES = (".pt", ".pth", ".safetensors")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mammosae_jax.convert",
        description="Convert SAE weights between the reference PyTorch .pt (SPEC §3), SAELens "
                    ".safetensors (+ cfg.json beside it) and training run folders (sae_weights."
                    "safetensors + cfg.json: what SAELens's SAE.load_from_disk opens). The format "
                    "is chosen by the file name: .pt/.pth, .safetensors, or a folder.",
    )
    p.add_argument("src", metavar="SRC", nargs="?",
                   help="input weights; with --from-hub, the file or SAE folder inside the repo (default: "
                        f"{HUB_FILENAME} for {HUB_REPO}, else the repo's only SAE)")
    p.add_argument("dst", metavar="DST", nargs="?", help="output: x.pt, x.safetensors or a folder")
    p.add_argument("--from-hub", metavar="REPO_OR_DIR", nargs="?", const=HUB_REPO,
                   help=f"read SRC from a Hugging Face Hub repo (default {HUB_REPO}; needs network and "
                        "huggingface_hub, fails at once when offline) or from a local folder laid out "
                        "like one (SAELens's: SAE_ID/cfg.json + SAE_ID/sae_weights.safetensors)")
    p.add_argument("--repo", default=HUB_REPO, help=f"Hub repo for a bare --from-hub (default {HUB_REPO})")
    p.add_argument("--to-hub", metavar="SAE_ID",
                   help="write DST as a folder ready to upload as a Hub repo, laid out as SAELens repos "
                        "are: README.md + SAE_ID/cfg.json + SAE_ID/sae_weights.safetensors "
                        "(upload: huggingface-cli upload USER/REPO DST .)")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    return p


def _hub_arguments(args: argparse.Namespace) -> tuple[str, str | None, str]:
    """(repo or folder, path inside it or None, DST) of a --from-hub call.

    A --from-hub value with a weights-file suffix is the older form `--from-hub [SRC] DST`
    (SRC inside --repo), kept working.
    """
    given = [a for a in (args.src, args.dst) if a is not None]
    value = args.from_hub
    if value != HUB_REPO and Path(value).suffix.lower() in _FILE_SUFFIXES and not Path(value).is_dir():
        given, value = [value, *given], args.repo
    if not given or len(given) > 2:
        raise FormatError("--from-hub REPO_OR_DIR takes [SRC] DST: the file or SAE folder inside it, then the output")
    return value, (given[0] if len(given) == 2 else None), given[-1]


def _run(args: argparse.Namespace) -> Converted:
    if args.from_hub is not None:
        from mammosae_jax.formats.hub import resolve_hub_source

        repo, path, dst = _hub_arguments(args)
        return convert(resolve_hub_source(repo, path), dst, force=args.force, hub_sae_id=args.to_hub)
    return convert(args.src, args.dst, force=args.force, hub_sae_id=args.to_hub)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.from_hub is None and (args.src is None or args.dst is None):
        parser.error("the following arguments are required: SRC, DST (unless --from-hub)")
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
