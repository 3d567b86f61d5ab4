"""Linear probe vs fine-tuned: the paper's comparison, read from two pipelines' output folders.

Per concept and pipeline: head test AUROC on raw features and through the SAE, the AUROC with only
the top-1 class latents kept (how well one latent separates the classes), the drop with the top-50
removed, the best class-1 latent's hit rate, and both intervention curves on one plot per concept.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mammosae_jax.demo.gates import (GATE_CONCEPTS, best_hit_latent, head_aurocs, intervention_reference,
                                    sweep_aurocs)

LP_DIR = "linear_probe"
"""Subfolder of the linear-probe pipeline that `--compare linear-probe` runs beside the fine-tuned one."""
COMPARE_FIGURE = "comparison/topk_linear_probe_vs_fine_tuned_{label}.png"


def pipeline_numbers(out: Path, label: str) -> dict[str, float]:
    """The comparison's numbers for one pipeline and concept (KeyError/OSError when outputs are missing)."""
    aurocs, reference = head_aurocs(out, label), intervention_reference(out, label)
    return {"raw": aurocs["raw"], "sae": aurocs["sae"], "top1_on": sweep_aurocs(out, "on", label)[1],
            "top50_off_drop": reference - sweep_aurocs(out, "off", label)[50],
            "best_hit_rate": float(best_hit_latent(out, label)["hit_rate"])}


ROWS = (("raw", "head AUROC, raw features"), ("sae", "head AUROC, SAE reconstruction"),
        ("top1_on", "AUROC, only the top-1 class latents kept"),
        ("top50_off_drop", "AUROC drop, top-50 class latents removed"),
        ("best_hit_rate", "best class-1 latent hit rate (of those drawn)"))


def comparison_table(fine_tuned: Path, linear_probe: Path) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: one row per (concept, number), linear probe and fine-tuned side by side."""
    rows = []
    for label in GATE_CONCEPTS:
        lp, ft = pipeline_numbers(linear_probe, label), pipeline_numbers(fine_tuned, label)
        rows += [[label, name, lp[key], ft[key], ft[key] - lp[key]] for key, name in ROWS]
    return ["concept", "measure", "linear probe", "fine-tuned", "fine-tuned − LP"], rows


def plot_curves(fine_tuned: Path, linear_probe: Path, out: Path) -> list[Path]:
    """One figure per concept: top-k activated and deactivated AUROC of both pipelines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mammosae_jax.viz.figures import save_figure

    paths = []
    for label in GATE_CONCEPTS:
        fig, ax = plt.subplots(figsize=(6, 4))
        for folder, name, colour in ((linear_probe, "linear probe", "tab:grey"), (fine_tuned, "fine-tuned", "tab:red")):
            for mode, style in (("on", "-"), ("off", "--")):
                curve = sweep_aurocs(folder, mode, label)
                ks = sorted(k for k in curve if k > 0)
                ax.plot(ks, [curve[k] for k in ks], style, color=colour, marker="o", ms=3,
                        label=f"{name}, top-k {'activated' if mode == 'on' else 'deactivated'}")
        ax.set_xscale("log")
        ax.set_xlabel("k (class latents per class)")
        ax.set_ylabel("test AUROC")
        ax.set_title(f"{label}: linear probe vs fine-tuned")
        ax.axhline(0.5, color="black", lw=0.5)
        ax.legend(fontsize=7)
        path = out / COMPARE_FIGURE.format(label=label)
        save_figure(fig, path)
        paths.append(path)
    return paths
