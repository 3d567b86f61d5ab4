"""`demo_out/report.md`: the demo's tables and figures, each with a sentence on what it shows."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from cache.atomic import write_text_atomic
from typing import Any

from mammosae_jax.demo.gates import GATE_CONCEPTS, SPECTRUM_FILE, GateResult


def _read_json(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.exists() else None


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _evaluation_section(out: Path) -> list[str]:
    parts = ["## Concept heads and the SAE",
             "Logistic-regression heads fitted on pooled training features, evaluated on the test split "
             "on the raw features, on the SAE reconstruction (error dropped, as the reference did) and on "
             "reconstruction + error (which must equal raw: a check that nothing is lost)."]
    rows = []
    recon = None
    for label in GATE_CONCEPTS:
        ev = _read_json(out / "evaluation" / f"evaluation_{label}.json")
        if ev is None:
            continue
        recon = ev["reconstruction"]
        for per, block in ev["metrics"].items():
            for cond in ("raw", "sae", "sae+error"):
                if cond in block:
                    m = block[cond]
                    rows.append([label, per, cond, m.get("aucroc"), m.get("auprc"), m.get("f1")])
    parts.append(_table(["concept", "unit", "features", "AUROC", "AUPRC", "F1@0.5"], rows))
    if recon:
        parts.append("Reconstruction on every position of the test images:")
        parts.append(_table(["MSE", "FVU", "mean L0", "dead fraction", "dense fraction", "latents ever active"],
                            [[recon["mse"], recon["fvu"], recon["l0"], recon["dead_fraction"],
                              recon["dense_fraction"], recon["n_ever_active"]]]))
    spectrum = _read_json(out / SPECTRUM_FILE)
    if spectrum:
        bound = spectrum["pca_fvu"]
        parts.append("How many dimensions the features need: the FVU of the best rank-r linear reconstruction "
                     "(PCA) of the test tokens. A sparse code with mean L0 = r beats it only by choosing "
                     "different latents for different tokens, so this curve says whether an FVU target is "
                     "within reach at a given sparsity.")
        parts.append(_table(["r (dims)", *bound], [["PCA FVU", *bound.values()]]))
    return parts


def _intervention_section(out: Path) -> list[str]:
    parts = ["## Top-k latent interventions (the paper's Figure 2)",
             "T_k is the union of each class's k highest-ranked latents (ranked on the training split). "
             "*Activated*: only T_k kept; *deactivated*: T_k removed. If a few latents carry the concept, "
             "the activated curve reaches the SAE-only AUROC at small k and the deactivated curve collapses."]
    for label in GATE_CONCEPTS:
        on = _read_json(out / "interventions" / f"topk_on_{label}.json")
        off = _read_json(out / "interventions" / f"topk_off_{label}.json")
        if on is None or off is None:
            continue
        off_by_k = {r["k"]: r for r in off}
        rows = [[r["k"], r["n_latents_kept_or_removed"], r["aucroc"], off_by_k.get(r["k"], {}).get("aucroc", "")]
                for r in on]
        parts += [f"### {label}", f"![{label} interventions](interventions/topk_{label}.png)",
                  _table(["k", "latents in T_k", "AUROC activated", "AUROC deactivated"], rows)]
        ranking_fig = out / "ranking" / label
        figs = sorted(p.name for p in ranking_fig.glob("*.png")) if ranking_fig.exists() else []
        for name in figs:
            parts.append(f"![{label} class means](ranking/{label}/{name})")
    return parts


def _localisation_section(out: Path) -> list[str]:
    parts = ["## Where the top class-1 latents fire",
             "Each top-ranked class-1 latent's activation map is upsampled to the image and thresholded at "
             "0.3 × its maximum (the reference rule) to give boxes, scored against the ground-truth boxes of "
             "the positive test images: hit = the map's peak lies in a lesion box (pointing game), max IoU, "
             "and AP over all test images ranked by the latent's mean activation."]
    for label in GATE_CONCEPTS:
        path = out / "heatmaps" / label / "latent_scores.csv"
        if not path.exists():
            continue
        with path.open() as f:
            rows = [r for r in csv.DictReader(f) if r["rule"] == "threshold"]
        parts += [f"### {label}", _table(
            ["rank", "latent", "images", "hit rate", "mean max IoU", "AP"],
            [[r["rank"], r["latent"], r["n_images"], float(r["hit_rate"]), float(r["mean_max_iou"]), float(r["ap"])]
             for r in rows])]
        if (out / "heatmaps" / label / "summary_grid.png").exists():
            parts.append(f"![{label} heatmaps](heatmaps/{label}/summary_grid.png)")
        galleries = sorted((out / "heatmaps" / label / "galleries").glob("*.png"))[:2]
        for g in galleries:
            parts.append(f"Gallery — the cache's most activating patches for {g.stem}:\n\n"
                         f"![gallery](heatmaps/{label}/galleries/{g.name})")
    return parts


ENCODER_TEXT = {
    "fine-tune": "started from random weights with BatchNorm calibrated on the data, then fine-tuned on "
                 "Mass and Suspicious_Calcification with Mammo-CLIP's downstream recipe, `python -m extract.finetune`",
    "linear-probe": "random weights, frozen; only a linear head trained (Mammo-CLIP's linear-probe mode)",
    "random": "random weights with BatchNorm calibrated on the data",
}


def _contrast_sentence(rows: list[list[Any]]) -> str:
    """What the table shows, from its numbers: does fine-tuning concentrate each concept in few latents?"""
    by = {(r[0], r[1]): r for r in rows}
    said = []
    for label in GATE_CONCEPTS:
        drop = by[(label, "AUROC drop, top-50 class latents removed")]
        one = by[(label, "AUROC, only the top-1 class latents kept")]
        said.append(f"{label}: removing the top-50 latents costs {drop[3]:.3f} AUROC after fine-tuning vs "
                    f"{drop[2]:.3f} after the linear probe, and the top-1 latents alone give {one[3]:.3f} vs {one[2]:.3f}")
    sharper = all(by[(c, "AUROC, only the top-1 class latents kept")][4] > 0 for c in GATE_CONCEPTS)
    verdict = ("As in Mammo-SAE, fine-tuning sharpens concept separation in the SAE latent space: after "
               "fine-tuning the top-ranked latents alone separate the classes better." if sharper else
               "Here fine-tuning does not make the top-ranked latents separate every concept better.")
    if any(by[(c, "AUROC drop, top-50 class latents removed")][3] < 0.2 for c in GATE_CONCEPTS):
        verdict += (" Removing the top-50 latents still leaves most of the signal: at this resolution every token "
                    "sees most of the image, and the concept is carried redundantly by many latents.")
    return "; ".join(said) + ". " + verdict


def _comparison_section(out: Path, config: Any) -> list[str]:
    """The paper's comparison, when the linear-probe pipeline ran beside this one (--compare linear-probe)."""
    from mammosae_jax.demo.compare import LP_DIR, comparison_table, plot_curves

    if config.compare != "linear-probe" or config.encoder != "fine-tune":
        return []
    try:
        header, rows = comparison_table(out, out / LP_DIR)
        figures = plot_curves(out, out / LP_DIR, out)
    except (OSError, KeyError, ValueError) as err:
        return ["## Linear probe vs fine-tuned", f"Not available: {type(err).__name__}: {err}"]
    parts = ["## Linear probe vs fine-tuned",
             "The same phantoms, encoder start, SAE settings and analysis; only the encoder training differs: "
             "a linear probe (encoder frozen, as Mammo-CLIP's `_lp` checkpoints) or fine-tuning "
             "(`_ft`). Test split, image-level labels.",
             _table(header, rows),
             _contrast_sentence(rows) + " The curves, both pipelines on one plot per concept:"]
    parts += [f"![{p.stem}]({p.relative_to(out)})" for p in figures]
    return parts


def write_report(out: Path, config: Any, gates: list[GateResult], run_info: dict) -> Path:
    """Write `out/report.md` atomically and return its path."""
    parts = ["# mammosae-jax demo on the phantom data set",
             f"Everything here ran on synthetic mammograms through an EfficientNet {config.arch.upper()} "
             f"({ENCODER_TEXT[config.encoder]}) — the pipeline of Mammo-SAE end to end, not Mammo-CLIP's numbers.",
             "Browse every latent that fires — its name, class means, top images with heatmaps and boxes, top "
             "patches and single-latent attribution — in [report.html](report.html), one self-contained page "
             "that opens offline (`report.html#latent=N` opens latent N's card)."]
    parts += _comparison_section(out, config)
    parts += ["## Quality gates", "```\n" + "\n".join(g.line() for g in gates) + "\n```",
             "## Run",
             _table(["stage", "seconds (0 = reused)"], [[k, v] for k, v in run_info["stage_seconds"].items()]),
             f"Total {run_info['total_seconds']:.0f} s for the stages run now; peak memory "
             f"{run_info['peak_memory_gb']:.2f} GB. Settings: `{json.dumps(run_info['config'])}`."]
    parts += _evaluation_section(out)
    parts += _intervention_section(out)
    parts += _localisation_section(out)
    path = out / "report.md"
    write_text_atomic(path, "\n\n".join(parts) + "\n")
    return path
