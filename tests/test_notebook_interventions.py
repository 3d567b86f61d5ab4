"""Execute notebooks/intervention_sweeps.ipynb on a tiny cache + SAE so it cannot rot."""
import json
from pathlib import Path

import nbformat
import numpy as np
from nbclient import NotebookClient

from helpers import concept_data as cf

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "intervention_sweeps.ipynb"


def test_notebook_runs_and_its_sweep_is_consistent(tmp_path, monkeypatch):
    fx = cf.build(tmp_path)
    monkeypatch.setenv("MAMMOSAE_CACHE", str(fx.cache_path))
    monkeypatch.setenv("MAMMOSAE_SAE", str(fx.sae_path))
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parents[1]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    summary = json.loads((tmp_path / "intervention_sweeps.json").read_text())  # written by the notebook
    assert summary["logits_shape"] == [5, 10, 16, 1]  # (rankings, interventions, images, outputs): ks clipped to 48
    assert summary["ks"] == [0, 1, 5, 10, 48] and summary["metric"] == "aucroc"
    assert "centered/row" in summary["top_latents"] and len(summary["top_latents"]) == 5
    on = [r for r in summary["records"] if r["mode"] == "on"]
    assert len(on) == 5 * 5 and np.isfinite([r["aucroc"] for r in summary["records"]]).all()
    assert all(r["aucroc"] == 0.5 for r in on if r["k"] == 0)  # k = 0 keeps nothing: chance
    assert len({r["aucroc"] for r in on if r["k"] == 48}) == 1  # k = all latents: the same for every ranking
    figure_cell = nb.cells[-2]
    assert any(o.get("output_type") == "display_data" and "image/png" in o["data"] for o in figure_cell.outputs)
