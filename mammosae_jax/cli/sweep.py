"""Train many SAEs in one pass over a feature cache: `python -m mammosae_jax.sweep --cache C --out SWEEP`.

The sweep is the grid expansion x (l1 for relu | k for topk/batchtopk) x lr. Members that share
every array shape (same width, same k) train as one *stack*: their parameters and Adam states are
stacked along a leading axis and one jitted, vmap-ed step trains them all on the same token
batch; other widths / k values are further stacks fed from the same batches, so the cache is
read once for the whole sweep. Each member is a normal run folder `SWEEP/<member>/` (config.json,
metrics.jsonl, sae_weights.safetensors + cfg.json; load it with `mammosae_jax.load_sae`). The report is
`SWEEP/summary.json`, `SWEEP/pareto.png` (validation FVU vs L0) and a printed table; with --head,
each member's SAE-only concept AUROC (head on the reconstruction, error term dropped).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from cache.config_options import add_config_options, config_from_args
from mammosae_jax.cli.options import add_train_options
from cache.cli_errors import cli_main, print_error
from cache.lock import lock_output

EPILOG = """examples:
  python -m mammosae_jax.sweep --cache feats/ --out sweeps/l1 --variant relu --l1 1e-5,3e-5,1e-4 --expansion 8 --epochs 20
  python -m mammosae_jax.sweep --cache feats/ --out sweeps/k --variant topk --k 8,16,32,64 --lr 2e-4,5e-4 --steps 20000
  (add --head cache, or --head head.safetensors, for each member's SAE-only concept AUROC on --head-split)
"""

SUMMARY = "summary.json"
PARETO = "pareto.png"


def _number_list(kind: type, what: str):
    def parse(text: str):
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}") from None
        if any(v != v or v in (float("inf"), float("-inf")) for v in values):
            raise argparse.ArgumentTypeError(f"values must be finite, got {text!r}")
        if any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"duplicate values in {text!r}")
        return values

    return parse


SAE_GRID_SKIP = ("d_in", "n_latents", "variant", "k", "l1_coeff", "threshold")  # grid axes, or from the cache
TRAIN_GRID_SKIP = ("lr", "checkpoint_every", "keep_checkpoints")  # lr is a grid axis; sweeps keep no checkpoints


def build_parser() -> argparse.ArgumentParser:
    from mammosae_jax.models.sae import INITS, SAEConfig
    from mammosae_jax.models.variants import VARIANTS

    p = argparse.ArgumentParser(prog="python -m mammosae_jax.sweep", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="feature cache folder (written by the extractor)")
    p.add_argument("--out", required=True, help="sweep folder to create (one run folder per member inside)")
    g = p.add_argument_group("grid (comma-separated lists; the sweep is their product)")
    g.add_argument("--variant", default="relu", choices=tuple(VARIANTS), help="SAE variant (default relu)")
    g.add_argument("--expansion", type=_number_list(int, "integers"), default=(8,),
                   help="n_latents = expansion x feature dim; each width is its own stack (default 8)")
    g.add_argument("--l1", type=_number_list(float, "numbers"), default=None,
                   help="L1 coefficients, relu only (default 3e-5); one stack")
    g.add_argument("--k", type=_number_list(int, "integers"), default=None,
                   help="active latents per token, topk/batchtopk only (default 32); one stack per k")
    g.add_argument("--lr", type=_number_list(float, "numbers"), default=(5e-4,),
                   help="Adam learning rates, constant (default 5e-4); same stack")
    g = p.add_argument_group("model (SAEConfig, shared by every member)")
    add_config_options(g, SAEConfig, skip=SAE_GRID_SKIP, choices={"init": INITS})
    g = add_train_options(p, "training (TrainConfig, shared)", skip=TRAIN_GRID_SKIP)
    g.add_argument("--train-split", default="training", help="cache split to train on (default training)")
    g = p.add_argument_group("concept report")
    g.add_argument("--head", default=None,
                   help="concept head .safetensors, or 'cache' for the head stored in the cache (default: none)")
    g.add_argument("--label", default=None, help="label to score against (default: the head's label)")
    g.add_argument("--head-split", default="test", help="split the concept AUROC is measured on (default test)")
    g.add_argument("--per", default="image", choices=["image", "row"],
                   help="AUROC units: images (max over rows) or CSV rows (reference parity) (default image)")
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import cache as cache_lib
    from mammosae_jax.analysis.concept_data import ConceptError
    from mammosae_jax.formats.common import FormatError
    from mammosae_jax.analysis.heads import HeadError
    from mammosae_jax.analysis.metrics import MetricsError
    from mammosae_jax.training.sweep_report import format_table, pareto_front
    from mammosae_jax.viz.concept_figures import plot_pareto
    from mammosae_jax.training.config import TrainConfig
    from mammosae_jax.training.data import DataError
    from mammosae_jax.training.loop import TrainError
    from mammosae_jax.training.run_files import write_json_atomic
    from mammosae_jax.training.sweep_loop import train_sweep
    from mammosae_jax.training.sweep_setup import SweepError, build_reports, concept_scores, member_grid, resolve_concept

    out = Path(args.out)
    try:
        lock_output(out, what="trained")  # held until main returns
        if (out / SUMMARY).exists():
            raise SweepError(f"{out} already holds a finished sweep ({SUMMARY}); choose a new --out")
        feats = cache_lib.open_cache(args.cache)
        members = member_grid(args, feats.dim)
        tc = config_from_args(TrainConfig, args, lr=args.lr[0])
        concept = resolve_concept(feats, args)
        command = ["python", "-m", "mammosae_jax.sweep", *(argv if argv is not None else sys.argv[1:])]
        result = train_sweep(feats, out, members, tc, train_split=args.train_split,
                             progress=not args.no_progress, extra={"command": command})
        concept_results = [concept_scores(feats, run, concept) for run in result.runs] if concept else None
        rows = build_reports(result, concept_results)
        front = pareto_front([(r.val_l0, r.val_fvu) for r in rows])
        plot_pareto(rows, front, out / PARETO,
                    title=f"{len(rows)} {args.variant} SAEs on {Path(args.cache).name}, {result.steps} steps")
        summary = {
            "command": command,
            "cache": str(Path(args.cache).absolute()),
            "steps": result.steps,
            "train_seconds": result.train_seconds,
            "data_read_once": result.data._asdict(),
            "train": {k: v for k, v in tc.to_dict().items() if k != "lr"},
            "stacks": [{"members": [members[i].name for i in s.members], "n_latents": s.template.n_latents,
                        "variant": s.template.variant, "k": s.template.k} for s in result.stacks],
            "concept": None if concept is None else {
                "label": concept.label, "split": concept.split, "per": concept.per, "head": concept.source,
                "raw_features": concept_results[0][1]},
            "members": [r._asdict() for r in rows],
            "pareto_front": [rows[i].name for i in front],
        }
        write_json_atomic(out / SUMMARY, summary)
    except (SweepError, TrainError, DataError, FormatError, cache_lib.CacheError, ConceptError, HeadError,
            MetricsError, ValueError) as e:
        print_error(e)
        return 2
    print(format_table(rows, front))
    if concept is not None:
        raw = concept_results[0][1]
        print(f"concept '{concept.label}' on {concept.split} per {concept.per}: raw-feature AUROC {raw['aucroc']:.4f}")
    print(f"trained {len(rows)} SAEs in {len(result.stacks)} stack(s), {result.steps} steps over one pass of the "
          f"cache ({result.train_seconds:.1f} s); wrote {out}/{SUMMARY} and {out}/{PARETO}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
