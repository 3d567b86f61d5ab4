"""The sweep's members and its concept report: the grid expansion x (l1 | k) x lr as `Member`s,
the optional concept head, and one `MemberReport` per member. The command is `mammosae_jax.cli.sweep`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple


class SweepError(Exception):
    """Bad sweep arguments (the message is one actionable line)."""


def member_grid(args: Any, d_in: int) -> list:
    """The sweep's members, in grid order (expansion, then l1 or k, then lr)."""
    from mammosae_jax.models.sae import SAEConfig
    from mammosae_jax.training.stacked import Member

    from mammosae_jax.models.variants import get_variant

    relu = not get_variant(args.variant).uses_k  # relu, jumprelu: sweep the sparsity coefficient --l1
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
                # a relu SAE has no k; topk/batchtopk ignore l1
                config = SAEConfig(d_in=d_in, n_latents=n, variant=args.variant,
                                   l1_coeff=knob if relu else 3e-5, k=None if relu else knob,
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


def resolve_concept(cache, args: Any) -> ConceptSetup | None:
    """The head and label (checked before any training), or None without --head."""
    if args.head is None:
        if args.label is not None:
            raise SweepError("--label needs --head (a head file or 'cache')")
        return None
    import numpy as np

    from mammosae_jax.analysis.concept_data import split_images, units
    from mammosae_jax.analysis.evaluation import resolve_head

    head, label = resolve_head(cache, None if args.head == "cache" else args.head, args.label)
    u = units(cache, label, split_images(cache, args.head_split), args.per)
    if head.n_outputs == 1 and len(np.unique(u.labels_U)) < 2:
        raise SweepError(f"the '{args.head_split}' split has only one class of '{label}' "
                         f"({len(u.labels_U)} {args.per}s); AUROC needs both; use another --head-split")
    return ConceptSetup(head, label, args.head_split, args.per, args.head)


def concept_scores(cache, run: Path, concept: ConceptSetup) -> tuple[dict, dict]:
    """(SAE-only metrics, raw-feature metrics) of one member; writes run/evaluation_<label>.json."""
    from mammosae_jax.analysis.concept_data import write_json
    from mammosae_jax.analysis.evaluation import evaluate
    from mammosae_jax.models.sae_io import load_sae

    ev = evaluate(cache, load_sae(run), concept.head, concept.label, split=concept.split, pers=(concept.per,))
    write_json(run / f"evaluation_{concept.label}.json",
               {"label": ev.label, "split": ev.split, "n_images": ev.n_images, "head": concept.source,
                "sae": str(run), "metrics": ev.metrics, "reconstruction": ev.reconstruction._asdict()})
    block = ev.metrics[concept.per]
    return block["sae"], block["raw"]


def build_reports(result, concept_results: list | None) -> list:
    from mammosae_jax.training.sweep_report import MemberReport

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


