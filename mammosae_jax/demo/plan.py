"""The demo's plan: its config (every knob), its stages with their exact commands, and one run.

Each stage is one of the package's commands run with the arguments a user would type
(`mammosae_jax.demo.stages` runs them); the gates (`demo.gates`) and the report (`demo.report`)
come after. The command line is `mammosae_jax.cli.demo`.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cache.atomic import write_json_atomic
from mammosae_jax.models.sae import INITS
from mammosae_jax.models.variants import VARIANTS
from mammosae_jax.demo.compare import LP_DIR
from mammosae_jax.demo.gates import GATES_FILE, SPECTRUM_FILE, GateResult, evaluate_gates
from mammosae_jax.demo.report import write_report
from mammosae_jax.demo.stages import Stage, StageFailed, python_module, run_stage

LP_PREFIX = "lp-"
"""Stage-name prefix of the linear-probe pipeline (its stages rerun independently of the fine-tuned ones)."""

BINARY_CONCEPTS = ("Suspicious_Calcification", "Mass")
ENCODERS = ("fine-tune", "linear-probe", "random")
COMPARE = ("none", "linear-probe")
CHOICES = {"arch": ("b5", "b2"), "encoder": ENCODERS, "compare": COMPARE, "variant": tuple(VARIANTS), "init": INITS,
           "score": ("centered", "mean", "attribution")}
"""Flags with a fixed set of values (checked before any stage runs)."""


@dataclass(frozen=True)
class DemoConfig:
    """Every knob of the demo; each is a command-line flag of the same name."""

    n_images: int = 400
    """phantom images (4 per patient: two views of two breasts)."""
    height: int = 384
    """phantom PNG height in pixels (VinDr PNGs are 1520)."""
    width: int = 224
    """phantom PNG width in pixels (VinDr PNGs are 912)."""
    seed: int = 0
    """seed of the phantoms, the random encoder and the SAE."""
    lesion_contrast: float = 1.5
    """phantom lesion contrast (1 = the generator's default)."""
    cluster_scale: float = 2.5
    """spread of the suspicious calcification clusters, × the generator's default: at 384×224 a
    cluster then covers a few cells of the 12×7 feature grid, as it does of the 48×29 grid at 1520×912."""
    coarse_calc_rate: float = 0.1
    """fraction of breasts with a benign coarse calcification (a look-alike)."""
    crossing_rate: float = 0.1
    """fraction of views with a bright vessel crossing (a look-alike)."""
    calib_images: int = 64
    """images in the single BatchNorm-calibration batch of the random starting encoder."""
    residual_gain: float = 0.0
    """initial gamma of the random encoder's residual branches (0 = zero-gamma init, 1 = plain)."""
    arch: str = "b2"
    """EfficientNet encoder: b2 (default: fine-tunes in the time budget) or b5 (the paper's)."""
    encoder: str = "fine-tune"
    """the analysed features: fine-tune (encoder fine-tuned on the concepts, as Mammo-SAE), linear-probe
    (encoder frozen, head trained, BatchNorm statistics updated) or random (the random encoder as is)."""
    compare: str = "none"
    """linear-probe: also run the linear-probe pipeline into OUT/linear_probe and compare it with the
    fine-tuned one in the report (the paper's comparison)."""
    ft_epochs: int = 3
    """fine-tuning / linear-probe epochs over the training split."""
    ft_lr: float = 1e-3
    """fine-tuning AdamW peak learning rate (from random weights; Mammo-CLIP's 5e-5 starts from CLIP)."""
    ft_batch_size: int = 16
    """fine-tuning batch in images."""
    freeze_blocks: int = 8
    """fine-tuning: the stem and the first N MBConv blocks stay frozen (B2's first three stages, the
    high-resolution ones: 3x faster per step; 0 = Mammo-CLIP's full fine-tuning)."""
    variant: str = "topk"
    """SAE variant: relu (the reference), topk or batchtopk."""
    expansion: int = 2
    """n_latents = expansion × feature dim."""
    k: int = 64
    """active latents per token (topk, batchtopk); 64 of 2816 = 2.3 % (the gate allows 5 %)."""
    l1: float = 3e-5
    """L1 coefficient (relu)."""
    init: str = "tied"
    """SAE initialisation: tied (encoder = decoderᵀ, faster to converge) or reference (SPEC §3)."""
    steps: int = 300
    """SAE optimiser steps."""
    batch_size: int = 1024
    """SAE batch in tokens."""
    lr: float = 1e-3
    """Adam learning rate."""
    score: str = "centered"
    """latent ranking: centered (as the released files), mean (the paper) or attribution (ours)."""
    top_latents: int = 4
    """class-1 latents drawn and scored in the heatmap stage."""
    n_vis_images: int = 4
    """positive test images drawn per latent."""




def build_stages(c: DemoConfig, out: Path, in_process: bool = True) -> list[Stage]:
    """The demo's stages in order, with their exact commands; JAX stages run here if `in_process`.

    The phantoms, then the pipeline of `c.encoder` into `out`, then (``--compare linear-probe``)
    the linear-probe pipeline into `out/linear_probe` on the same phantoms.
    """
    data = out / "data"
    stages = [
        Stage("phantoms", python_module(
            "extract.phantoms", "--out", str(data), "--n-images", str(c.n_images), "--seed", str(c.seed),
            "--height", str(c.height), "--width", str(c.width), "--lesion-contrast", str(c.lesion_contrast),
            "--cluster-scale", str(c.cluster_scale),
            "--coarse-calc-rate", str(c.coarse_calc_rate), "--crossing-rate", str(c.crossing_rate), "--quiet"), data),
    ]
    stages += pipeline_stages(c, c.encoder, data, out, "", in_process)
    if c.compare == "linear-probe" and c.encoder != "linear-probe":
        stages += pipeline_stages(c, "linear-probe", data, out / LP_DIR, LP_PREFIX, in_process)
    return stages


def encoder_stages(c: DemoConfig, encoder: str, data: Path, out: Path, prefix: str) -> list[Stage]:
    """Fine-tuning or linear probe (unless `random`), then extraction through the checkpoint it wrote."""
    csv, images = data / "vindr_detection_v1_folds.csv", data / "images_png"
    stages = []
    if encoder == "random":
        weights: tuple[str, ...] = ("--random-weights", "--arch", c.arch, "--calib-images", str(c.calib_images),
                                    "--residual-gain", str(c.residual_gain))
    else:
        ft = out / "finetune"
        partial = ("--freeze-blocks", str(c.freeze_blocks)) if encoder == "fine-tune" else ()
        stages.append(Stage(f"{prefix}finetune", python_module(
            "extract.finetune", "--csv", str(csv), "--images", str(images), "--out", str(ft), "--random-weights",
            "--arch", c.arch, "--concepts", ",".join(BINARY_CONCEPTS), "--mode", encoder, *partial,
            "--epochs", str(c.ft_epochs), "--lr", str(c.ft_lr), "--batch-size", str(c.ft_batch_size),
            "--seed", str(c.seed), "--calib-images", str(c.calib_images), "--residual-gain", str(c.residual_gain),
            "--overwrite"), ft))
        weights = ("--checkpoint", str(ft / "model-best.pth"))  # read as any user's downstream .pth
    stages.append(Stage(f"{prefix}extract", (
        sys.executable, str(Path(__file__).resolve().parents[2] / "extract" / "dump_features.py"),
        "--csv", str(csv), "--images", str(images), *weights,
        "--split", "all", "--out", str(out / "cache"), "--seed", str(c.seed), "--overwrite"), out / "cache"))
    return stages


def pipeline_stages(c: DemoConfig, encoder: str, data: Path, out: Path, prefix: str,
                    in_process: bool) -> list[Stage]:
    """Encoder, cache, SAE and every concept stage of one pipeline, its outputs under `out`."""
    cache, run = out / "cache", out / "sae_run"
    csv, images = data / "vindr_detection_v1_folds.csv", data / "images_png"
    stages = encoder_stages(c, encoder, data, out, prefix)
    stages.append(Stage(f"{prefix}train", python_module(
        "mammosae_jax.train", "--cache", str(cache), "--out", str(run), "--variant", c.variant,
        "--expansion", str(c.expansion), "--init", c.init, "--k", str(c.k), "--l1", str(c.l1), "--lr", str(c.lr),
        "--batch-size", str(c.batch_size), "--steps", str(c.steps), "--seed", str(c.seed)),
        run, clean=True, in_process=in_process))
    for label in BINARY_CONCEPTS:
        head = out / "heads" / f"{label}.safetensors"
        ranking = out / "ranking" / label
        stages += [
            Stage(f"{prefix}fit_head-{label}", python_module(
                "mammosae_jax.fit_head", "--cache", str(cache), "--label", label, "--out", str(head)), out / "heads",
                in_process=in_process),
            Stage(f"{prefix}evaluate-{label}", python_module(
                "mammosae_jax.evaluate", "--cache", str(cache), "--sae", str(run), "--head", str(head),
                "--out", str(out / "evaluation")), out / "evaluation", in_process=in_process),
            Stage(f"{prefix}concepts-{label}", python_module(
                "mammosae_jax.concepts", "--cache", str(cache), "--sae", str(run), "--label", label,
                "--score", c.score, *(("--head", str(head)) if c.score == "attribution" else ()),
                "--out", str(ranking)), ranking, in_process=in_process),
            Stage(f"{prefix}intervene-{label}", python_module(
                "mammosae_jax.intervene", "--cache", str(cache), "--sae", str(run), "--head", str(head),
                "--ranking", str(ranking), "--mode", "both", "--out", str(out / "interventions")),
                out / "interventions", in_process=in_process),
            Stage(f"{prefix}visualize-{label}", python_module(
                "mammosae_jax.visualize", "--cache", str(cache), "--csv", str(csv), "--images", str(images),
                "--sae", str(run), "--ranking", str(ranking), "--label", label, "--top", str(c.top_latents),
                "--n-images", str(c.n_vis_images), "--out", str(out / "heatmaps" / label)),
                out / "heatmaps" / label, in_process=in_process),
        ]
    return stages


DASHBOARD = "report.html"
"""The dashboard page the demo writes beside report.md."""


def dashboard_stage(out: Path, in_process: bool = True) -> Stage:
    """`python -m mammosae_jax.dashboard` on the main pipeline (after the gates, which it shows)."""
    return Stage("dashboard", python_module(
        "mammosae_jax.dashboard", "--run", str(out / "sae_run"), "--cache", str(out / "cache"),
        "--analysis", str(out), "--out", str(out / DASHBOARD)), out, in_process=in_process)


def write_feature_spectrum(out: Path) -> None:
    """PCA bound on the test features' FVU at the SAE's L0 and at 5 % of its latents (see feature_spectrum)."""
    from cache.reader import open_cache
    from mammosae_jax.analysis.spectrum import split_pca_fvu

    n_latents = json.loads((out / "sae_run" / "cfg.json").read_text())["d_sae"]
    ranks = sorted({8, 16, 32, 64, 128, max(1, round(0.05 * n_latents)), 256, 512})
    fvu = split_pca_fvu(open_cache(out / "cache"), "test", ranks)
    write_json_atomic(out / SPECTRUM_FILE, {"split": "test", "pca_fvu": {str(r): v for r, v in fvu.items()}},
                      indent=1)


def peak_memory_gb() -> float:
    """Peak resident memory of this process and its finished children, in GB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024**2


def run_demo(config: DemoConfig, out: Path, *, force: bool = False, in_process: bool = True) -> int:
    """Run every stage (reusing completed ones), then the gates and the report; the exit status."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    rerun = {"": force, LP_PREFIX: force}  # per pipeline: a stage that ran makes the rest of its pipeline rerun
    try:
        for stage in build_stages(config, out, in_process=in_process):
            arm = LP_PREFIX if stage.name.startswith(LP_PREFIX) else ""
            result = run_stage(stage, out / "logs", force=rerun[arm])
            timings[stage.name] = result.seconds
            if not result.skipped:
                rerun = {a: True for a in rerun} if stage.name == "phantoms" else {**rerun, arm: True}
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_feature_spectrum(out)
    if config.compare == "linear-probe" and config.encoder != "linear-probe":
        write_feature_spectrum(out / LP_DIR)
    gates: list[GateResult] = evaluate_gates(out, config)
    write_json_atomic(out / GATES_FILE, [asdict(g) for g in gates], indent=1)
    try:  # rebuilt whenever a stage ran (its inputs changed) or the page is missing
        result = run_stage(dashboard_stage(out, in_process), out / "logs",
                           force=any(rerun.values()) or not (out / DASHBOARD).exists())
        timings[result.name] = result.seconds
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_info = {
        "config": asdict(config),
        "stage_seconds": timings,
        "total_seconds": time.perf_counter() - started,
        "peak_memory_gb": peak_memory_gb(),
    }
    report = write_report(out, config, gates, run_info)
    print()
    for gate in gates:
        print(gate.line())
    print(f"\ntotal {run_info['total_seconds']:.0f} s (stages run now), peak memory {run_info['peak_memory_gb']:.2f} GB")
    print(f"gates: {sum(g.passed for g in gates)} of {len(gates)} PASS")
    print(f"report: {report} and {out / DASHBOARD}")
    print(f"outputs: {out.resolve()}")
    return 0
