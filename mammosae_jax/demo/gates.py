"""The quality gates of the embedded default, read from the demo's own output files.

A gate compares one measured number with a bound. Missing outputs make the gate fail with the
reason, never pass silently.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

GATE_CONCEPTS = ("Suspicious_Calcification", "Mass")
METRIC_UNIT = "image"  # gates use per-image metrics (label = max over the image's rows)
SPECTRUM_FILE = "evaluation/feature_spectrum.json"  # PCA bound on the FVU, written by the demo
GATES_FILE = "gates.json"  # the gates' results, written by the demo once they are evaluated (read by the dashboard)


@dataclass(frozen=True)
class GateResult:
    """One gate: what was measured, the bound, and whether it held."""

    name: str
    value: float | None
    bound: str
    passed: bool
    note: str = ""

    def line(self) -> str:
        shown = "missing" if self.value is None else f"{self.value:.4f}"
        verdict = "PASS" if self.passed else "FAIL"
        note = f"  ({self.note})" if self.note else ""
        return f"[{verdict}] {self.name}: {shown} (needs {self.bound}){note}"


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _gate(name: str, bound: str, compute: Callable[[], tuple[float, bool] | tuple[float, bool, str]]) -> GateResult:
    """Evaluate one gate; a missing or malformed output file fails the gate with the reason."""
    try:
        value, passed, *note = compute()
    except (OSError, KeyError, ValueError, IndexError, TypeError) as err:
        return GateResult(name, None, bound, False, f"{type(err).__name__}: {err}")
    return GateResult(name, float(value), bound, bool(passed), note[0] if note else "")


def head_aurocs(out: Path, label: str) -> dict[str, float]:
    """Test AUROC of the head on raw features and on the SAE reconstruction (image units)."""
    metrics = _load_json(out / "evaluation" / f"evaluation_{label}.json")["metrics"][METRIC_UNIT]
    return {cond: metrics[cond]["aucroc"] for cond in ("raw", "sae")}


def sweep_aurocs(out: Path, mode: str, label: str) -> dict[int, float]:
    """{k: AUROC} of the top-k activated (`on`) or deactivated (`off`) sweep."""
    records = _load_json(out / "interventions" / f"topk_{mode}_{label}.json")
    return {int(r["k"]): float(r["aucroc"]) for r in records}


def intervention_reference(out: Path, label: str) -> float:
    """SAE-only AUROC in the intervention's own units (rows, reference parity)."""
    summary = _load_json(out / "interventions" / f"intervene_summary_{label}.json")
    return float(summary["reference"]["sae"]["aucroc"])


def best_hit_latent(out: Path, label: str) -> dict[str, str]:
    """The `latent_scores.csv` row (threshold rule) of the latent with the highest hit rate."""
    with (out / "heatmaps" / label / "latent_scores.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["rule"] == "threshold"]
    return max(rows, key=lambda r: float(r["hit_rate"]))


def _best_hit_rate(out: Path, label: str) -> tuple[float, bool, str]:
    best = best_hit_latent(out, label)
    value = float(best["hit_rate"])
    return value, value >= 0.6, f"latent {best['latent']}, ranked {best['rank']} for class 1"


def _pca_note(out: Path, l0: float) -> str:
    """'PCA bound: r dims -> FVU ...' at the ranks nearest the SAE's L0 and 5 % of its latents."""
    path = out / SPECTRUM_FILE
    if not path.exists():
        return ""
    bound = {int(r): v for r, v in _load_json(path)["pca_fvu"].items()}
    n_latents = _load_json(out / "sae_run" / "cfg.json")["d_sae"]
    ranks = sorted({min(bound, key=lambda r: abs(r - l0)), min(bound, key=lambda r: abs(r - 0.05 * n_latents))})
    return "PCA bound: " + ", ".join(f"{r} dims -> FVU {bound[r]:.2f}" for r in ranks)


def evaluate_gates(out: Path, config: Any) -> list[GateResult]:
    """All gates of issue 9, in the order they are printed."""
    gates: list[GateResult] = []
    for label in GATE_CONCEPTS:
        gates.append(_gate(f"{label}: raw-feature head test AUROC", ">= 0.85",
                           lambda label=label: (a := head_aurocs(out, label)["raw"], a >= 0.85)))
    recon = _load_json(out / "evaluation" / f"evaluation_{GATE_CONCEPTS[0]}.json")["reconstruction"] \
        if (out / "evaluation" / f"evaluation_{GATE_CONCEPTS[0]}.json").exists() else None

    def fvu() -> tuple[float, bool, str]:
        if recon is None:
            raise ValueError("no evaluation output")
        return recon["fvu"], recon["fvu"] <= 0.25, _pca_note(out, recon["l0"])

    def l0_fraction() -> tuple[float, bool, str]:
        if recon is None:
            raise ValueError("no evaluation output")
        n_latents = _load_json(out / "sae_run" / "cfg.json")["d_sae"]
        frac = recon["l0"] / n_latents
        return frac, frac <= 0.05, f"mean L0 {recon['l0']:.1f} of {n_latents} latents"

    gates.append(_gate("SAE: FVU on held-out (test) images", "<= 0.25", fvu))
    gates.append(_gate("SAE: mean L0 as a fraction of the latents", "<= 0.05", l0_fraction))
    for label in GATE_CONCEPTS:
        def keep(label: str = label) -> tuple[float, bool]:
            a = head_aurocs(out, label)
            gap = abs(a["raw"] - a["sae"])
            return gap, gap <= 0.03
        gates.append(_gate(f"{label}: |AUROC raw - AUROC SAE reconstruction|", "<= 0.03", keep))
    for label in GATE_CONCEPTS:
        def on10(label: str = label) -> tuple[float, bool]:
            gap = abs(intervention_reference(out, label) - sweep_aurocs(out, "on", label)[10])
            return gap, gap <= 0.05

        def off50(label: str = label) -> tuple[float, bool]:
            drop = intervention_reference(out, label) - sweep_aurocs(out, "off", label)[50]
            return drop, drop >= 0.2
        gates.append(_gate(f"{label}: |AUROC SAE-only - AUROC top-10 activated|", "<= 0.05", on10))
        gates.append(_gate(f"{label}: AUROC drop with top-50 deactivated", ">= 0.2", off50))
    gates.append(_gate("Suspicious_Calcification: best class-1 latent hit rate (positive test images)", ">= 0.6",
                       lambda: _best_hit_rate(out, "Suspicious_Calcification")))
    return gates
