"""Embed prompts with Mammo-CLIP's text tower into a prompt-embedding file (`cache.prompt_embeddings`).

    python -m extract.embed_prompts --checkpoint CLIP.tar --tokenizer Bio_ClinicalBERT/ --prompts P.json --out E.safetensors

`P.json`: {"texts": [...], "groups": [...], "meta": {...}} (meta: strings recorded in the file).
The JAX half (`mammosae_jax name_latents`) runs this as a subprocess, so torch never enters its
process. Bad input: one `error:` line, exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence
from cache.cli_errors import cli_main, print_error


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m extract.embed_prompts", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="Mammo-CLIP checkpoint with the text tower")
    p.add_argument("--tokenizer", required=True, help="local Bio_ClinicalBERT tokenizer folder")
    p.add_argument("--prompts", required=True, help="JSON file: texts, groups, meta")
    p.add_argument("--out", required=True, help="prompt-embedding file to write")
    p.add_argument("--pooling", default=None, help="text pooling (default: the checkpoint's config)")
    p.add_argument("--max-length", type=int, default=None, help="token limit (default: the checkpoint's config)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per forward pass (default 32)")
    a = p.parse_args(argv)
    from extract.checkpoints import CheckpointError
    from extract.text_tower import TextTowerError, compute_prompt_embeddings

    spec = json.loads(open(a.prompts, encoding="utf-8").read())
    try:
        compute_prompt_embeddings(a.checkpoint, a.tokenizer, spec["texts"], spec["groups"], a.out, meta=spec["meta"],
                                  pooling=a.pooling, max_length=a.max_length, batch_size=a.batch_size)
    except (TextTowerError, CheckpointError) as e:
        print_error(e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
