"""Sweep results: per-member rows, the FVU-vs-L0 Pareto front, summary.json, pareto.png, a table."""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence


class MemberReport(NamedTuple):
    """One member's hyper-parameters and results (None where not measured)."""

    name: str
    variant: str
    n_latents: int
    expansion: float
    l1_coeff: float | None  # relu only
    k: int | None  # topk / batchtopk only
    lr: float
    run: str  # run folder, relative to the sweep folder
    stack: int
    val_fvu: float | None
    val_l0: float | None
    val_dead_fraction: float | None
    val_dense_fraction: float | None
    val_mse: float | None
    auroc_sae: float | None  # SAE-only concept AUROC (reconstruction, error term dropped)
    auprc_sae: float | None


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices of the non-dominated points (lower L0 and lower FVU both better), by increasing L0.

    `points` are (l0, fvu); a point with a missing value is never on the front. A point is
    dominated when another is no worse in both and strictly better in one.
    """
    ok = [i for i, (l0, fvu) in enumerate(points) if l0 is not None and fvu is not None
          and math.isfinite(l0) and math.isfinite(fvu)]
    front = []
    for i in ok:
        li, fi = points[i]
        dominated = any(points[j][0] <= li and points[j][1] <= fi and (points[j][0] < li or points[j][1] < fi)
                        for j in ok if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: Sequence[MemberReport], front: Sequence[int]) -> str:
    """One line per member; `*` marks the Pareto front."""
    head = ("member", "variant", "latents", "l1", "k", "lr", "FVU", "L0", "dead", "AUROC(sae)", "front")
    lines = [head]
    for i, r in enumerate(rows):
        lines.append((r.name, r.variant, str(r.n_latents), _fmt(r.l1_coeff, "g"), _fmt(r.k, "d"), f"{r.lr:g}",
                      _fmt(r.val_fvu, ".4f"), _fmt(r.val_l0, ".2f"), _fmt(r.val_dead_fraction, ".3f"),
                      _fmt(r.auroc_sae, ".4f"), "*" if i in front else ""))
    widths = [max(len(line[c]) for line in lines) for c in range(len(head))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
