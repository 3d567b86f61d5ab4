"""Train an SAE on a feature cache: `python -m mammosae_jax.train --cache CACHE --out RUN`.

Writes RUN/config.json, RUN/metrics.jsonl, RUN/checkpoints/ (orbax) and, at the end,
RUN/sae_weights.safetensors + RUN/cfg.json (SAELens layout: `sae_lens.SAE.load_from_disk(RUN)` and
`mammosae_jax.load_sae(RUN)` open it).
Uses every local device (data parallel); with --coordinator-address/--num-processes/--process-id
each process of a multi-host run streams its own disjoint part of the tokens.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from cache.config_options import add_config_options, config_from_args
from mammosae_jax.cli.options import add_train_options, sae_config_from_args
from cache.cli_errors import cli_main, print_error

EPILOG = """examples:
  python -m mammosae_jax.train --cache feats/ --out runs/relu --epochs 200 --token-fraction 0.25
  python -m mammosae_jax.train --cache feats/ --out runs/topk --variant topk --k 32 --steps 50000
  (same command) --resume          continue from the latest checkpoint in --out
"""


SAE_FLAGS = {"l1_coeff": "--l1"}
SAE_SKIP = ("d_in", "n_latents", "threshold")  # from the cache / --expansion; threshold is learned


def build_parser() -> argparse.ArgumentParser:
    from mammosae_jax.models.sae import INITS, SAEConfig
    from mammosae_jax.models.variants import VARIANTS

    p = argparse.ArgumentParser(prog="python -m mammosae_jax.train", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="feature cache folder (written by the extractor)")
    p.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    g = p.add_argument_group("model (SAEConfig)")
    g.add_argument("--expansion", type=int, default=8, help="n_latents = expansion x feature dim (default 8)")
    g.add_argument("--d-in", type=int, default=None, help="expected feature dim; checked against the cache")
    add_config_options(g, SAEConfig, skip=SAE_SKIP, flags=SAE_FLAGS, choices={"variant": VARIANTS, "init": INITS})
    add_train_options(p, "training (TrainConfig)")
    g = p.add_argument_group("run")
    g.add_argument("--train-split", default="training", help="cache split to train on (default training)")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
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


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import cache as cache_lib
    from mammosae_jax.formats.common import FormatError
    from mammosae_jax.models.sae import SAEConfig
    from mammosae_jax.training.config import TrainConfig
    from mammosae_jax.training.data import DataError
    from mammosae_jax.training.loop import TrainError, train

    try:
        _init_distributed(args)
        feats = cache_lib.open_cache(args.cache)
        if args.d_in is not None and args.d_in != feats.dim:
            raise TrainError(f"the cache's feature dim is {feats.dim} but --d-in is {args.d_in}")
        config = sae_config_from_args(SAEConfig, args, d_in=feats.dim, n_latents=args.expansion * feats.dim)
        tc = config_from_args(TrainConfig, args)
        result = train(feats, args.out, config, tc, resume=args.resume, train_split=args.train_split,
                       progress=not args.no_progress, extra={"command": ["python", "-m", "mammosae_jax.train",
                                                                          *(argv if argv is not None else sys.argv[1:])]})
    except (TrainError, DataError, FormatError, cache_lib.CacheError, ValueError) as e:
        print_error(e)
        return 2
    import jax

    if jax.process_index() == 0:
        val = f", val FVU {result.val.fvu:.4f}, L0 {result.val.l0:.1f}" if result.val else ""
        print(f"trained {result.steps} steps{val}; wrote {args.out}/sae_weights.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
