"""Train many SAEs in one pass over a feature cache: `python -m mammosae_jax.sweep --cache C --out SWEEP`.

The sweep is the grid expansion x (l1 for relu | k for topk/batchtopk) x lr. Members that share
every array shape (same width, same k) train as one *stack*: their parameters and Adam states are
stacked along a leading axis and one jitted, vmap-ed step trains them all on the same token
batch; other widths / k values are further stacks fed from the same batches, so the cache is
read once for the whole sweep. Each member is a normal run folder `SWEEP/<member>/` (config.json,
metrics.jsonl, sae.safetensors + cfg.json; load it with `mammosae_jax.load_sae`). The report is
`SWEEP/summary.json`, `SWEEP/pareto.png` (validation FVU vs L0) and a printed table; with --head,
each member's SAE-only concept AUROC (head on the reconstruction, error term dropped).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

EPILOG = """examples:
  python -m mammosae_jax.sweep --cache feats/ --out sweeps/l1 --variant relu --l1 1e-5,3e-5,1e-4 --expansion 8 --epochs 20
  python -m mammosae_jax.sweep --cache feats/ --out sweeps/k --variant topk --k 8,16,32,64 --lr 2e-4,5e-4 --steps 20000
  (add --head cache, or --head head.safetensors, for each member's SAE-only concept AUROC on --head-split)
"""

SUMMARY = "summary.json"
PARETO = "pareto.png"


class SweepError(Exception):
    """Bad sweep arguments (the message is one actionable line)."""


def _number_list(kind: type, what: str):
    def parse(text: str):
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}") from None
        if any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"duplicate values in {text!r}")
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mammosae_jax.sweep", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="feature cache folder (written by the extractor)")
    p.add_argument("--out", required=True, help="sweep folder to create (one run folder per member inside)")
    g = p.add_argument_group("grid (comma-separated lists; the sweep is their product)")
    g.add_argument("--variant", default="relu", choices=["relu", "topk", "batchtopk"], help="SAE variant (default relu)")
    g.add_argument("--expansion", type=_number_list(int, "integers"), default=(8,),
                   help="n_latents = expansion x feature dim; each width is its own stack (default 8)")
    g.add_argument("--l1", type=_number_list(float, "numbers"), default=None,
                   help="L1 coefficients, relu only (default 3e-5); one stack")
    g.add_argument("--k", type=_number_list(int, "integers"), default=None,
                   help="active latents per token, topk/batchtopk only (default 32); one stack per k")
    g.add_argument("--lr", type=_number_list(float, "numbers"), default=(5e-4,),
                   help="Adam learning rates, constant (default 5e-4); same stack")
    g = p.add_argument_group("model (shared by every member)")
    g.add_argument("--aux-k", type=int, default=None, help="AuxK dead latents (default d_in/2)")
    g.add_argument("--aux-coeff", type=float, default=1 / 32, help="AuxK coefficient (default 1/32; 0 = off)")
    g.add_argument("--init", default="reference", choices=["reference", "tied"], help="initialisation (default reference)")
    g = p.add_argument_group("optimisation (shared)")
    g.add_argument("--batch-size", type=int, default=4096, help="global batch in tokens (default 4096)")
    n = g.add_mutually_exclusive_group(required=True)
    n.add_argument("--epochs", type=int, help="epochs over the training tokens")
    n.add_argument("--steps", type=int, help="optimiser steps")
    g.add_argument("--seed", type=int, default=0, help="seed of init, sampling, split, resampling (default 0)")
    g.add_argument("--resample-every-epochs", type=int, default=10, help="relu resampling period, 0 = never (default 10)")
    g.add_argument("--resample-stop-epochs", type=int, default=11, help="no resampling in the last N epochs (default 11)")
    g.add_argument("--resample-tokens", type=int, default=20_000, help="tokens drawn per resampling (default 20000)")
    g.add_argument("--dead-after-tokens", type=int, default=10_000_000,
                   help="a latent silent this many tokens is dead (AuxK, dead fraction; default 1e7)")
    g = p.add_argument_group("data")
    g.add_argument("--token-fraction", type=float, default=1.0, help="fraction of each image's positions (default 1.0)")
    g.add_argument("--train-split", default="training", help="cache split to train on (default training)")
    g.add_argument("--val-fraction", type=float, default=0.05,
                   help="fraction of the split's patients held out for validation (default 0.05)")
    g.add_argument("--val-max-tokens", type=int, default=200_000, help="validation tokens per evaluation (default 2e5)")
    g = p.add_argument_group("concept report")
    g.add_argument("--head", default=None,
                   help="concept head .safetensors, or 'cache' for the head stored in the cache (default: none)")
    g.add_argument("--label", default=None, help="label to score against (default: the head's label)")
    g.add_argument("--head-split", default="test", help="split the concept AUROC is measured on (default test)")
    g.add_argument("--per", default="image", choices=["image", "row"],
                   help="AUROC units: images (max over rows) or CSV rows (reference parity) (default image)")
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--log-every", type=int, default=100, help="steps between metrics lines (default 100)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def member_grid(args: argparse.Namespace, d_in: int) -> list:
    """The sweep's members, in grid order (expansion, then l1 or k, then lr)."""
    from mammosae_jax.sae import SAEConfig
    from mammosae_jax.training.stacked import Member

    relu = args.variant == "relu"
    if relu and args.k is not None:
        raise SweepError("--k applies to --variant topk/batchtopk; a relu sweep varies --l1")
    if not relu and args.l1 is not None:
        raise SweepError(f"--l1 applies to --variant relu; a {args.variant} sweep varies --k")
    knobs = (args.l1 or (3e-5,)) if relu else (args.k or (32,))
    members = []
    for expansion in args.expansion:
        for knob in knobs:
            for lr in args.lr:
                n = expansion * d_in
                if not relu and knob > n:
                    raise SweepError(f"--k {knob} exceeds n_latents {n} (expansion {expansion} x dim {d_in})")
                # relu ignores k (it must only fit n_latents); topk/batchtopk ignore l1
                config = SAEConfig(d_in=d_in, n_latents=n, variant=args.variant,
                                   l1_coeff=knob if relu else 3e-5, k=min(32, n) if relu else knob,
                                   aux_k=args.aux_k, aux_coeff=args.aux_coeff, init=args.init)
                what = f"l1_{knob:g}" if relu else f"k{knob}"
                members.append(Member(f"{args.variant}-x{expansion}-{what}-lr_{lr:g}", config, lr))
    return members


class ConceptSetup(NamedTuple):
    head: object  # heads.Head
    label: str
    split: str
    per: str
    source: str


def resolve_concept(cache, args: argparse.Namespace) -> ConceptSetup | None:
    """The head and label (checked before any training), or None without --head."""
    if args.head is None:
        if args.label is not None:
            raise SweepError("--label needs --head (a head file or 'cache')")
        return None
    import numpy as np

    from mammosae_jax.concept_data import split_images, units
    from mammosae_jax.evaluate import resolve_head

    head, label = resolve_head(cache, None if args.head == "cache" else args.head, args.label)
    u = units(cache, label, split_images(cache, args.head_split), args.per)
    if head.n_outputs == 1 and len(np.unique(u.labels_U)) < 2:
        raise SweepError(f"the '{args.head_split}' split has only one class of '{label}' "
                         f"({len(u.labels_U)} {args.per}s); AUROC needs both; use another --head-split")
    return ConceptSetup(head, label, args.head_split, args.per, args.head)


def concept_scores(cache, run: Path, concept: ConceptSetup) -> tuple[dict, dict]:
    """(SAE-only metrics, raw-feature metrics) of one member; writes run/evaluation_<label>.json."""
    from mammosae_jax.concept_data import write_json
    from mammosae_jax.evaluate import evaluate
    from mammosae_jax.io import load_sae

    ev = evaluate(cache, load_sae(run), concept.head, concept.label, split=concept.split, pers=(concept.per,))
    write_json(run / f"evaluation_{concept.label}.json",
               {"label": ev.label, "split": ev.split, "n_images": ev.n_images, "head": concept.source,
                "sae": str(run), "metrics": ev.metrics, "reconstruction": ev.reconstruction._asdict()})
    block = ev.metrics[concept.per]
    return block["sae"], block["raw"]


def build_reports(result, concept_results: list | None) -> list:
    from mammosae_jax.sweep_report import MemberReport

    stack_of = {i: j for j, s in enumerate(result.stacks) for i in s.members}
    rows = []
    for i, (m, val) in enumerate(zip(result.members, result.val)):
        c = m.config
        sae_metrics = concept_results[i][0] if concept_results else {}
        rows.append(MemberReport(
            name=m.name, variant=c.variant, n_latents=c.n_latents, expansion=c.n_latents / c.d_in,
            l1_coeff=c.l1_coeff if c.variant == "relu" else None, k=None if c.variant == "relu" else c.k,
            lr=m.lr, run=m.name, stack=stack_of[i],
            val_fvu=val.fvu if val else None, val_l0=val.l0 if val else None,
            val_dead_fraction=val.dead_fraction if val else None,
            val_dense_fraction=val.dense_fraction if val else None, val_mse=val.mse if val else None,
            auroc_sae=sae_metrics.get("aucroc"), auprc_sae=sae_metrics.get("auprc")))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import cache as cache_lib
    from mammosae_jax.concept_data import ConceptError
    from mammosae_jax.formats.common import FormatError
    from mammosae_jax.heads import HeadError
    from mammosae_jax.metrics import MetricsError
    from mammosae_jax.sweep_report import format_table, pareto_front, plot_pareto
    from mammosae_jax.training.config import TrainConfig
    from mammosae_jax.training.data import DataError
    from mammosae_jax.training.loop import TrainError
    from mammosae_jax.training.run_files import write_json_atomic
    from mammosae_jax.training.sweep_loop import train_sweep

    out = Path(args.out)
    try:
        if (out / SUMMARY).exists():
            raise SweepError(f"{out} already holds a finished sweep ({SUMMARY}); choose a new --out")
        feats = cache_lib.open_cache(args.cache)
        members = member_grid(args, feats.dim)
        tc = TrainConfig(lr=args.lr[0], batch_size=args.batch_size, epochs=args.epochs, steps=args.steps,
                         token_fraction=args.token_fraction, seed=args.seed,
                         resample_every_epochs=args.resample_every_epochs,
                         resample_stop_epochs=args.resample_stop_epochs, resample_tokens=args.resample_tokens,
                         dead_after_tokens=args.dead_after_tokens, val_fraction=args.val_fraction,
                         val_max_tokens=args.val_max_tokens, log_every=args.log_every)
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
        print(f"error: {e}", file=sys.stderr)
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
