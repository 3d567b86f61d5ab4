"""The files the stages already wrote, read for the dashboard (anything missing is simply absent).

An analysis folder has the demo's layout (each part optional): ``heads/<label>.safetensors``,
``ranking/<label>/``, ``evaluation/evaluation_<label>.json``, ``interventions/topk_{on,off}_<label>.json``
and ``intervene_summary_<label>.json``, ``heatmaps/<label>/latent_scores.csv``,
``names/latent_names.csv`` (`name_latents`), ``gates.json`` (the demo's gates) and
``linear_probe/`` (a second pipeline, the paper's comparison).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mammosae_jax.analysis.heads import Head, load_head
from mammosae_jax.analysis.ranking import Ranking, RankingError, read_ranking
from mammosae_jax.demo.compare import LP_DIR
from mammosae_jax.demo.gates import GATES_FILE

NAMES_FILE = "names/latent_names.csv"


def _json(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def concepts_of(analysis: Path, labels: list[str]) -> list[str]:
    """The binary labels among `labels` that have a ranking and a head under `analysis`."""
    return [lab for lab in labels if (analysis / "ranking" / lab).is_dir()
            and (analysis / "heads" / f"{lab}.safetensors").is_file()]


def ranking_of(analysis: Path, label: str, n_latents: int) -> Ranking:
    return read_ranking(analysis / "ranking" / label, label, n_latents=n_latents, n_classes=2)


def head_of(analysis: Path, label: str) -> Head:
    return load_head(analysis / "heads" / f"{label}.safetensors")


def reconstruction(analysis: Path, labels: list[str]) -> dict[str, Any] | None:
    """The `evaluate` stage's reconstruction statistics (the same for every label)."""
    for label in labels:
        ev = _json(analysis / "evaluation" / f"evaluation_{label}.json")
        if ev is not None:
            return ev["reconstruction"]
    return None


def head_metrics(analysis: Path, label: str) -> dict[str, Any] | None:
    """``{unit: {features: {aucroc, ...}}}`` from the `evaluate` stage."""
    ev = _json(analysis / "evaluation" / f"evaluation_{label}.json")
    return None if ev is None else ev["metrics"]


def curves(analysis: Path, label: str) -> dict[str, Any] | None:
    """The `intervene` stage's sweep: ``{"on": [[k, auroc]...], "off": [...], "sae": auroc}``."""
    on = _json(analysis / "interventions" / f"topk_on_{label}.json")
    off = _json(analysis / "interventions" / f"topk_off_{label}.json")
    if on is None or off is None:
        return None
    summary = _json(analysis / "interventions" / f"intervene_summary_{label}.json") or {}
    sae = summary.get("reference", {}).get("sae", {}).get("aucroc")
    return {"on": [[r["k"], r["aucroc"]] for r in on], "off": [[r["k"], r["aucroc"]] for r in off], "sae": sae}


def localisation(analysis: Path, label: str) -> dict[int, dict[str, float]]:
    """Per latent scored by `visualize` (threshold rule): hit rate, mean max IoU, AP, images."""
    path = analysis / "heatmaps" / label / "latent_scores.csv"
    if not path.is_file():
        return {}
    with path.open() as f:
        return localisation_scores(list(csv.DictReader(f)))


def localisation_scores(rows: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Hit rate, mean max IoU, AP and images per latent of `visualize`'s table rows (threshold rule)."""
    return {int(r["latent"]): {"hit": float(r["hit_rate"]), "iou": float(r["mean_max_iou"]), "ap": float(r["ap"]),
                               "n": int(r["n_images"])} for r in rows if r["rule"] == "threshold"}


def names(analysis: Path) -> dict[int, list[list[Any]]]:
    """``{latent: [[prompt, cosine], ...]}`` best first, from `name_latents`' table."""
    path = analysis / NAMES_FILE
    if not path.is_file():
        return {}
    out: dict[int, list[tuple[int, str, float]]] = {}
    with path.open() as f:
        for r in csv.DictReader(f):
            out.setdefault(int(r["latent"]), []).append((int(r["k"]), r["prompt"], float(r["cosine"])))
    return {j: [[p, c] for _, p, c in sorted(rows)] for j, rows in out.items()}


def gates(analysis: Path) -> list[dict[str, Any]] | None:
    return _json(analysis / GATES_FILE)


def comparison(analysis: Path, labels: list[str]) -> dict[str, Any] | None:
    """Linear probe vs fine-tuned: the demo's comparison table and the probe's curves."""
    from mammosae_jax.demo.compare import comparison_table

    lp = analysis / LP_DIR
    if not lp.is_dir():
        return None
    try:
        header, rows = comparison_table(analysis, lp)
    except (OSError, KeyError, ValueError, RankingError):
        return None
    return {"header": header, "rows": rows, "curves": {lab: curves(lp, lab) for lab in labels}}


def run_config(run: Path) -> dict[str, Any]:
    """The SAE's ``cfg.json``, the training command (``config.json``) and the last logged metrics."""
    train = _json(run / "config.json") or {}
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return {"cfg": _json(run / "cfg.json") or {}, "command": train.get("command"),
            "last_metrics": json.loads(lines[-1]) if lines else None}
