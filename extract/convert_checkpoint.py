"""Convert a Mammo-CLIP `.tar` / classifier `.pth` into our encoder safetensors, once.

    python -m extract.convert_checkpoint b5-model-best-epoch-7.tar mammoclip_b5.safetensors
    python -m extract.convert_checkpoint calc_finetuned.pth calc_b5.safetensors --label Suspicious_Calcification

The torch file is read with `torch.load(weights_only=True)` (omegaconf classes allow-listed);
the output holds the encoder tensors, the classifier head if any, and a JSON config, so later
runs never unpickle anything.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from extract.checkpoints import CheckpointError, infer_arch, load_encoder_state, read_checkpoint, write_safetensors
from extract.encoder import build_encoder
from extract.extract_checks import output_file_problem
from cache.cli_errors import cli_main, print_error


def convert(src: str, dst: str, label: str | None = None) -> str:
    """Check `src` against the encoder it declares and write `dst`; returns the arch ("b5"/"b2")."""
    if (problem := output_file_problem(Path(dst))) is not None:
        raise CheckpointError(problem)
    ckpt = read_checkpoint(src, head_label=label)
    arch = infer_arch(ckpt, src)
    load_encoder_state(build_encoder(arch), ckpt.encoder, src)  # strict key and shape check
    write_safetensors(dst, ckpt, arch)
    return arch


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m extract.convert_checkpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="Mammo-CLIP .tar, classifier .pth (or one of our .safetensors)")
    parser.add_argument("dst", help="output .safetensors")
    parser.add_argument("--label", default=None,
                        help="concept name of the classifier head (default: guessed from the file name)")
    args = parser.parse_args(argv)
    try:
        arch = convert(args.src, args.dst, args.label)
    except CheckpointError as exc:
        print_error(exc)
        sys.exit(2)
    print(f"wrote {args.dst} (EfficientNet-{arch.upper()})")


if __name__ == "__main__":
    main()
