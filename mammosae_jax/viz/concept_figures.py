"""The figures of the concept commands: class means of top latents (concepts), the Figure-2
intervention sweep (intervene), prompt similarities (name_latents), the sweep's Pareto plot."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from cache.prompt_embeddings import PromptEmbeddings
from mammosae_jax.analysis.intervention_run import InterventionResult, headline
from mammosae_jax.analysis.ranking import ClassMeans, Ranking
from mammosae_jax.training.sweep_report import MemberReport
from mammosae_jax.viz.figures import save_figure


def plot_class_means(stats: ClassMeans, ranking: Ranking, path: str | os.PathLike, top: int = 10) -> None:
    """Bar chart per class: the class means of that class's ``top`` latents, all classes side by side."""
    import matplotlib.pyplot as plt

    n_cls = ranking.n_classes
    top = min(top, ranking.n_latents)
    fig, axes = plt.subplots(n_cls, 1, figsize=(max(6, 0.6 * top + 2), 2.6 * n_cls), squeeze=False)
    width = 0.8 / n_cls
    for c, ax in enumerate(axes[:, 0]):
        latents = ranking.order_Cn[c, :top]
        x = np.arange(top)
        for c2 in range(n_cls):
            ax.bar(x + (c2 - (n_cls - 1) / 2) * width, stats.means_Cn[c2, latents], width, label=f"class {c2}")
        ax.set_xticks(x, [str(j) for j in latents], rotation=45, fontsize=8)
        ax.set_ylabel("mean z̄")
        ax.set_title(f"{ranking.label}: top {top} latents of class {c}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_sweep(result: InterventionResult, path: Path) -> None:
    """Figure-2 style plot: headline metric against k (symlog axis, so k = 0 shows)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    key = headline(result.reference["raw"])
    for mode, recs in result.records.items():
        ax.plot([r["k"] for r in recs], [r[key] for r in recs], "o-", label=f"top-k {'activated' if mode == 'on' else 'deactivated'}")
    ax.axhline(result.reference["raw"][key], color="k", ls="--", lw=1, label=f"raw features ({result.reference['raw'][key]:.3f})")
    ax.axhline(result.reference["sae"][key], color="gray", ls=":", lw=1, label=f"SAE only ({result.reference['sae'][key]:.3f})")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("k (latents per class)")
    ax.set_ylabel(key)
    ax.set_title(f"{result.label}: top-k latent interventions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_similarities(sim_LP: np.ndarray, latents: np.ndarray, emb: PromptEmbeddings, path: Path) -> None:
    """Heatmap of cosines (latents x prompts, prompts grouped), each latent's best prompt circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_lat, n_prompt = sim_LP.shape
    label_in = 0.055 * max(len(t) + len(g) for t, g in zip(emb.texts, emb.groups))  # rotated prompt labels
    fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * n_prompt + 3), 0.2 * n_lat + 1.5 + min(label_in, 3.0)),
                           layout="constrained")
    vmax = float(np.abs(sim_LP).max()) or 1.0
    im = ax.imshow(sim_LP, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    best_L = sim_LP.argmax(axis=1)
    ax.scatter(best_L, np.arange(n_lat), s=18, facecolors="none", edgecolors="k", linewidths=0.8)
    labels = [f"[{g}] {t}" if len(t) <= 40 else f"[{g}] {t[:37]}..." for t, g in zip(emb.texts, emb.groups)]
    ax.set_xticks(np.arange(n_prompt), labels, rotation=90, fontsize=6)
    ax.set_yticks(np.arange(n_lat), [str(int(j)) for j in latents], fontsize=6)
    for x in np.flatnonzero(np.array(emb.groups[1:]) != np.array(emb.groups[:-1])):
        ax.axvline(x + 0.5, color="0.3", lw=0.5)
    ax.set_xlabel("prompt")
    ax.set_ylabel("latent")
    ax.set_title("cosine(W_img · decoder direction, prompt embedding)")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    save_figure(fig, path)


def plot_pareto(rows: Sequence[MemberReport], front: Sequence[int], path: str | Path, title: str = "") -> None:
    """`path` (png): validation FVU vs L0, one labelled point per member, the front as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    shown = [r for r in rows if r.val_l0 is not None and r.val_fvu is not None]
    by_stack: dict[int, list[MemberReport]] = {}
    for r in shown:
        by_stack.setdefault(r.stack, []).append(r)
    for stack, members in sorted(by_stack.items()):
        first = members[0]
        label = f"{first.variant} x{first.expansion:g}" + (f" k={first.k}" if first.k is not None else "")
        ax.scatter([m.val_l0 for m in members], [m.val_fvu for m in members], s=36, label=label, zorder=3)
    for n, r in enumerate(shown):  # alternate label offsets: near-equal points stay readable
        ax.annotate(r.name, (r.val_l0, r.val_fvu), textcoords="offset points",
                    xytext=(5, 4 if n % 2 == 0 else -10), fontsize=7)
    if len(front) > 1:
        ax.plot([rows[i].val_l0 for i in front], [rows[i].val_fvu for i in front], "k--", lw=1,
                label="Pareto front", zorder=2)
    ax.set_xlabel("L0 (active latents per token, validation)")
    ax.set_ylabel("FVU (validation)")
    ax.set_title(title or "SAE sweep: reconstruction vs sparsity")
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no validation metrics (val fraction 0?)", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    save_figure(fig, path)
