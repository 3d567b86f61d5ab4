"""Train an SAE on a feature cache: `python -m mammosae_jax.train --cache CACHE --out RUN`.

Writes RUN/config.json, RUN/metrics.jsonl, RUN/checkpoints/ (orbax) and, at the end,
RUN/sae.safetensors + RUN/cfg.json (SAELens layout, readable by `mammosae_jax.load_sae`).
Uses every local device (data parallel); with --coordinator-address/--num-processes/--process-id
each process of a multi-host run streams its own disjoint part of the tokens.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

EPILOG = """examples:
  python -m mammosae_jax.train --cache feats/ --out runs/relu --epochs 200 --token-fraction 0.25
  python -m mammosae_jax.train --cache feats/ --out runs/topk --variant topk --k 32 --steps 50000
  (same command) --resume          continue from the latest checkpoint in --out
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mammosae_jax.train", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="feature cache folder (written by the extractor)")
    p.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    g = p.add_argument_group("model")
    g.add_argument("--variant", default="relu", help="relu | topk | batchtopk (default relu)")
    g.add_argument("--expansion", type=int, default=8, help="n_latents = expansion x feature dim (default 8)")
    g.add_argument("--d-in", type=int, default=None, help="expected feature dim; checked against the cache")
    g.add_argument("--l1", type=float, default=3e-5, help="L1 coefficient, relu (default 3e-5)")
    g.add_argument("--k", type=int, default=32, help="active latents per token, topk/batchtopk (default 32)")
    g.add_argument("--aux-k", type=int, default=None, help="AuxK dead latents (default d_in/2)")
    g.add_argument("--aux-coeff", type=float, default=1 / 32, help="AuxK coefficient (default 1/32; 0 = off)")
    g.add_argument("--init", default="reference", choices=["reference", "tied"],
                   help="reference: SPEC init; tied: W_enc = W_dec^T (default reference)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate, constant (default 5e-4)")
    g.add_argument("--batch-size", type=int, default=4096, help="global batch in tokens (default 4096)")
    n = g.add_mutually_exclusive_group(required=True)
    n.add_argument("--epochs", type=int, help="epochs over the training tokens")
    n.add_argument("--steps", type=int, help="optimiser steps")
    g.add_argument("--seed", type=int, default=0, help="seed of init, sampling, split, resampling (default 0)")
    g.add_argument("--resample-every-epochs", type=int, default=10,
                   help="relu dead-latent resampling period in epochs, 0 = never (default 10)")
    g.add_argument("--resample-stop-epochs", type=int, default=11,
                   help="no resampling in the last this many epochs (default 11)")
    g.add_argument("--resample-tokens", type=int, default=20_000, help="tokens drawn per resampling (default 20000)")
    g.add_argument("--dead-after-tokens", type=int, default=10_000_000,
                   help="a latent silent this many tokens is dead (AuxK, dead fraction; default 1e7)")
    g = p.add_argument_group("data")
    g.add_argument("--token-fraction", type=float, default=1.0,
                   help="fraction of each image's positions used (reference: 0.25; default 1.0)")
    g.add_argument("--train-split", default="training", help="cache split to train on (default training)")
    g.add_argument("--val-fraction", type=float, default=0.05,
                   help="fraction of the split's patients held out for validation (default 0.05)")
    g.add_argument("--val-max-tokens", type=int, default=200_000, help="validation tokens per epoch (default 2e5)")
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    g.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints (default 1000)")
    g.add_argument("--keep-checkpoints", type=int, default=3, help="checkpoints kept (default 3)")
    g.add_argument("--log-every", type=int, default=100, help="steps between metrics lines (default 100)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    g = p.add_argument_group("multi-host (all three together)")
    g.add_argument("--coordinator-address", help="host:port of process 0")
    g.add_argument("--num-processes", type=int, help="processes in the job")
    g.add_argument("--process-id", type=int, help="this process's index")
    return p


def _init_distributed(args: argparse.Namespace) -> None:
    given = [args.coordinator_address is not None, args.num_processes is not None, args.process_id is not None]
    if any(given) and not all(given):
        raise ValueError("--coordinator-address, --num-processes and --process-id go together")
    if all(given):
        import jax

        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes, process_id=args.process_id)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import cache as cache_lib
    from mammosae_jax.formats.common import FormatError
    from mammosae_jax.sae import SAEConfig
    from mammosae_jax.training.config import TrainConfig
    from mammosae_jax.training.data import DataError
    from mammosae_jax.training.loop import TrainError, train

    try:
        _init_distributed(args)
        feats = cache_lib.open_cache(args.cache)
        if args.d_in is not None and args.d_in != feats.dim:
            raise TrainError(f"the cache's feature dim is {feats.dim} but --d-in is {args.d_in}")
        config = SAEConfig(d_in=feats.dim, n_latents=args.expansion * feats.dim, variant=args.variant,
                           k=args.k, l1_coeff=args.l1, aux_k=args.aux_k, aux_coeff=args.aux_coeff, init=args.init)
        tc = TrainConfig(lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, steps=args.steps,
                         token_fraction=args.token_fraction, seed=args.seed,
                         resample_every_epochs=args.resample_every_epochs,
                         resample_stop_epochs=args.resample_stop_epochs, resample_tokens=args.resample_tokens,
                         dead_after_tokens=args.dead_after_tokens, val_fraction=args.val_fraction,
                         val_max_tokens=args.val_max_tokens, checkpoint_every=args.checkpoint_every,
                         keep_checkpoints=args.keep_checkpoints, log_every=args.log_every)
        result = train(feats, args.out, config, tc, resume=args.resume, train_split=args.train_split,
                       progress=not args.no_progress, extra={"command": ["python", "-m", "mammosae_jax.train",
                                                                          *(argv if argv is not None else sys.argv[1:])]})
    except (TrainError, DataError, FormatError, cache_lib.CacheError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import jax

    if jax.process_index() == 0:
        val = f", val FVU {result.val.fvu:.4f}, L0 {result.val.l0:.1f}" if result.val else ""
        print(f"trained {result.steps} steps{val}; wrote {args.out}/sae.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
