"""Execute notebooks/intervention_sweeps.ipynb on a tiny cache + SAE so it cannot rot."""
from pathlib import Path

import nbformat
import numpy as np
from nbclient import NotebookClient

import concept_fixtures as cf

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "intervention_sweeps.ipynb"


def test_notebook_runs_and_its_sweep_is_consistent(tmp_path, monkeypatch):
    fx = cf.build(tmp_path)
    monkeypatch.setenv("MAMMOSAE_CACHE", str(fx.cache_path))
    monkeypatch.setenv("MAMMOSAE_SAE", str(fx.sae_path))
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parents[1]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "logits: (5, 10, 16, 1) (rankings, interventions, images, outputs)" in text  # 5 rankings, ks clipped to 48
    assert "centered/row: class 1 top latents" in text
    table = next(o["data"]["text/plain"] for o in nb.cells[-2].outputs if "data" in o)
    lines = table.splitlines()
    assert lines[0].split()[-5:] == ["0", "1", "5", "10", "48"]
    on_rows = [ln.split() for ln in lines if " on " in f" {ln} "]
    assert len(on_rows) == 5 and all(float(r[-5]) == 0.5 for r in on_rows)  # k = 0 keeps nothing: chance
    assert len({r[-1] for r in on_rows}) == 1  # k = all latents: the same for every ranking
    assert np.isfinite([float(v) for r in on_rows for v in r[-5:]]).all()
    assert any(o.get("output_type") == "display_data" and "image/png" in o["data"] for o in nb.cells[-1].outputs)
