"""A tiny run in the demo's layout for the dashboard tests: the concept cache (`concept_data`), PNGs,
a VinDr CSV with boxes, an SAE run, and the outputs of the stages that ran on them (run here
through the commands themselves: fit_head, evaluate, concepts, intervene, visualize)."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from cache import open_cache
from cache.vindr import VINDR_COLUMNS
from mammosae_jax.models.sae_io import save_sae
from tests.helpers.concept_data import make_sae, write_concept_cache

CONCEPTS = ("Suspicious_Calcification", "Mass")
IMAGE_HW = (36, 48)
VISUALIZED = 2
"""Class-1 latents per concept that the visualize stage scores."""


class DashboardRun(NamedTuple):
    out: Path  # the analysis folder (the demo's layout)
    cache: Path
    run: Path
    csv: Path
    images: Path


def _csv_rows(cache) -> pd.DataFrame:
    """One row per (image, positive concept) with a box around a fixed spot, else one normal row."""
    records = []
    for i in range(len(cache)):
        meta = cache.labels.iloc[i]
        base = {c: 0 for c in VINDR_COLUMNS}
        base.update(patient_id=meta["patient_id"], series_id="s", image_id=meta["image_id"], laterality="L",
                    view="CC", height=IMAGE_HW[0], width=IMAGE_HW[1], breast_birads="BI-RADS 1",
                    breast_density="DENSITY B", finding_birads="", split=meta["split"], fold=0,
                    density=int(meta["density"]))
        found = [c for c in CONCEPTS if int(meta[c]) == 1]
        for k, concept in enumerate(found):
            x, y = 4 + 20 * k + i % 5, 6 + i % 7
            records.append({**base, "finding_categories": f"['{concept}']", concept: 1, "xmin": x, "ymin": y,
                            "xmax": x + 14, "ymax": y + 12, "resized_xmin": x, "resized_ymin": y,
                            "resized_xmax": x + 14, "resized_ymax": y + 12})
        if not found:
            records.append({**base, "finding_categories": "['No Finding']", "No_Finding": 1,
                            **{c: "" for c in ("xmin", "ymin", "xmax", "ymax", "resized_xmin", "resized_ymin",
                                               "resized_xmax", "resized_ymax")}})
    return pd.DataFrame(records, columns=list(VINDR_COLUMNS))


def build_run(root: Path) -> DashboardRun:
    """Write the inputs and run every concept stage on them; returns the paths."""
    from mammosae_jax.cli import concepts, evaluate, fit_head, intervene, visualize

    out = root / "out"
    if out.exists():  # a build interrupted before it finished
        import shutil

        shutil.rmtree(out)
    cache_path = write_concept_cache(out / "cache")
    cache = open_cache(cache_path)
    run = out / "sae_run"
    save_sae(run, make_sae())
    images = out / "data" / "images_png"
    rng = np.random.default_rng(0)
    for i in range(len(cache)):
        meta = cache.labels.iloc[i]
        (images / meta["patient_id"]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, IMAGE_HW, dtype=np.uint8)).save(images / meta["patient_id"] / meta["image_id"])
    csv = out / "data" / "vindr_detection_v1_folds.csv"
    _csv_rows(cache).to_csv(csv, index=False)
    for label in CONCEPTS:
        head, ranking = out / "heads" / f"{label}.safetensors", out / "ranking" / label
        common = ["--cache", str(cache_path), "--sae", str(run)]
        for main, args in ((fit_head.main, ["--cache", str(cache_path), "--label", label, "--out", str(head)]),
                           (evaluate.main, [*common, "--head", str(head), "--out", str(out / "evaluation")]),
                           (concepts.main, [*common, "--label", label, "--out", str(ranking)]),
                           (intervene.main, [*common, "--head", str(head), "--ranking", str(ranking),
                                             "--out", str(out / "interventions")]),
                           (visualize.main, [*common, "--csv", str(csv), "--images", str(images), "--ranking",
                                             str(ranking), "--label", label, "--top", str(VISUALIZED),
                                             "--n-images", "1", "--gallery-size", "2",
                                             "--out", str(out / "heatmaps" / label)])):
            code = main(args)
            assert code in (0, None), f"{main.__module__} {args}"
    _name_latents(root, run, out)
    return DashboardRun(out, cache_path, run, csv, images)


PROMPTS = ("an irregular mass", "clustered calcifications", "fatty tissue", "the nipple")


def _name_latents(root: Path, run: Path, out: Path) -> None:
    """`name_latents` on the top Suspicious_Calcification latents, with made-up prompt embeddings."""
    from cache.prompt_embeddings import PromptEmbeddings, write_prompt_embeddings
    from mammosae_jax.cli import name_latents
    from tests.helpers.concept_data import DIM

    rng = np.random.default_rng(1)
    text = rng.standard_normal((len(PROMPTS), 8)).astype(np.float32)
    emb = PromptEmbeddings(PROMPTS, ("mass", "calcification", "tissue", "nipple"),
                           text / np.linalg.norm(text, axis=1, keepdims=True),
                           rng.standard_normal((8, DIM)).astype(np.float32), np.zeros(8, np.float32),
                           {"key": "dashboard-test", "pooling": "eos"})
    path = write_prompt_embeddings(root / "prompts.safetensors", emb)
    name_latents.main(["--embeddings", str(path), "--sae", str(run), "--ranking", str(out / "ranking" / CONCEPTS[0]),
                       "--label", CONCEPTS[0], "--top", "3", "--k", "3", "--out", str(out / "names")])


def shared_run(tmp_path_factory) -> DashboardRun:
    """`build_run` once per test session (both dashboard test files use the same run)."""
    root = tmp_path_factory.getbasetemp() / "dashboard_run"
    done = root / "built"
    if not done.exists():
        build_run(root)
        done.write_text("ok")
    out = root / "out"
    return DashboardRun(out, out / "cache", out / "sae_run", out / "data" / "vindr_detection_v1_folds.csv",
                        out / "data" / "images_png")
