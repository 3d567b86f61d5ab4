"""The demo's stage runner and quality gates (fast), and the whole demo at a small size (slow)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mammosae_jax.cli.demo import parse_config
from mammosae_jax.demo.plan import DemoConfig, build_stages
from mammosae_jax.demo.gates import evaluate_gates
from mammosae_jax.demo.stages import Stage, StageFailed, run_stage


def _write_stage(tmp_path: Path, text: str) -> Stage:
    target = tmp_path / "out.txt"
    code = f"import pathlib; p = pathlib.Path({str(target)!r}); p.write_text(p.read_text() + {text!r} if p.exists() else {text!r})"
    return Stage("write", (sys.executable, "-c", code), tmp_path)


def test_stage_runs_once_then_is_reused_and_reruns_when_its_command_changes(tmp_path: Path) -> None:
    first = run_stage(_write_stage(tmp_path, "a"), tmp_path / "logs")
    again = run_stage(_write_stage(tmp_path, "a"), tmp_path / "logs")
    changed = run_stage(_write_stage(tmp_path, "b"), tmp_path / "logs")
    assert (first.skipped, again.skipped, changed.skipped) == (False, True, False)
    assert (tmp_path / "out.txt").read_text() == "ab"


def test_failing_stage_raises_with_log_tail_and_leaves_no_marker(tmp_path: Path) -> None:
    stage = Stage("boom", (sys.executable, "-c", "import sys; print('went wrong here'); sys.exit(3)"), tmp_path)
    with pytest.raises(StageFailed, match=r"(?s)exit 3.*went wrong here"):
        run_stage(stage, tmp_path / "logs")
    assert not stage.marker.exists()


def test_clean_stage_removes_its_folder_before_running(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "stale.txt").write_text("old")
    run_stage(Stage("clean", (sys.executable, "-c", "pass"), run_dir, clean=True), tmp_path / "logs")
    assert not (run_dir / "stale.txt").exists()


_STAGE_MODULE = """
import sys
from pathlib import Path

def main(argv):
    print("stage says", *argv)
    print("progress on stderr", file=sys.stderr)
    if argv[0] == "fail":
        sys.exit(3)
    if argv[0] == "raise":
        raise RuntimeError("broken inside the stage")
    Path(argv[1]).write_text(argv[0])
    return 0
"""


@pytest.fixture
def stage_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module with a CLI-style ``main(argv)``."""
    (tmp_path / "demo_stage_module.py").write_text(_STAGE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "demo_stage_module"


def test_in_process_stage_calls_main_logs_its_output_and_is_reused(tmp_path: Path, stage_module: str) -> None:
    target = tmp_path / "out.txt"
    stage = Stage("inproc", (sys.executable, "-m", stage_module, "hello", str(target)), tmp_path / "m", in_process=True)
    first = run_stage(stage, tmp_path / "logs")
    again = run_stage(stage, tmp_path / "logs")
    assert (first.skipped, again.skipped) == (False, True)
    assert target.read_text() == "hello"
    log = (tmp_path / "logs" / "inproc.log").read_text()
    assert f"stage says hello {target}" in log and "progress on stderr" in log


@pytest.mark.parametrize("how, expected", [("fail", r"exit 3"), ("raise", r"(?s)exit 1.*RuntimeError: broken inside")])
def test_in_process_stage_failure_raises_with_the_log_tail(tmp_path: Path, stage_module: str, how: str,
                                                          expected: str) -> None:
    stage = Stage("inproc", (sys.executable, "-m", stage_module, how), tmp_path / "m", in_process=True)
    with pytest.raises(StageFailed, match=expected):
        run_stage(stage, tmp_path / "logs")
    assert not stage.marker.exists()


def test_only_python_module_stages_can_run_in_process(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="python -m module"):
        Stage("x", (sys.executable, "-c", "pass"), tmp_path, in_process=True)


def test_every_demo_flag_reaches_the_config_and_the_commands(tmp_path: Path) -> None:
    config, out, force, subprocess_only = parse_config(
        ["--out", str(tmp_path), "--n-images", "40", "--variant", "relu", "--l1", "0.001", "--cluster-scale", "2",
         "--residual-gain", "0.5", "--subprocess"])
    assert (config.n_images, config.variant, config.l1, out, force, subprocess_only) == (
        40, "relu", 0.001, tmp_path, False, True)
    stages = build_stages(config, tmp_path)
    commands = {s.name: s.argv for s in stages}
    assert commands["phantoms"][commands["phantoms"].index("--cluster-scale") + 1] == "2.0"
    assert commands["finetune"][commands["finetune"].index("--residual-gain") + 1] == "0.5"
    assert commands["finetune"][commands["finetune"].index("--mode") + 1] == "fine-tune"
    # the extractor reads the fine-tuned checkpoint like any user's downstream .pth
    assert commands["extract"][commands["extract"].index("--checkpoint") + 1] == str(
        tmp_path / "finetune" / "model-best.pth")
    assert "--random-weights" not in commands["extract"]
    assert [s.name for s in stages if not s.in_process] == ["phantoms", "finetune", "extract"]
    assert not any(s.in_process for s in build_stages(config, tmp_path, in_process=False))
    assert commands["phantoms"][commands["phantoms"].index("--n-images") + 1] == "40"
    assert commands["train"][commands["train"].index("--l1") + 1] == "0.001"
    assert [n for n in commands if n.startswith("intervene")] == ["intervene-Suspicious_Calcification", "intervene-Mass"]
    assert "--head" not in commands["concepts-Mass"]
    attribution, *_ = parse_config(["--score", "attribution"])
    concepts = {s.name: s.argv for s in build_stages(attribution, tmp_path)}["concepts-Mass"]
    assert concepts[concepts.index("--score") + 1] == "attribution"
    assert concepts[concepts.index("--head") + 1] == str(tmp_path / "heads" / "Mass.safetensors")


def test_compare_adds_the_linear_probe_pipeline_and_random_skips_training(tmp_path: Path) -> None:
    config, *_ = parse_config(["--compare", "linear-probe"])
    commands = {s.name: s.argv for s in build_stages(config, tmp_path)}
    lp = commands["lp-finetune"]
    assert lp[lp.index("--mode") + 1] == "linear-probe" and "--freeze-blocks" not in lp
    assert lp[lp.index("--out") + 1] == str(tmp_path / "linear_probe" / "finetune")
    assert commands["lp-extract"][commands["lp-extract"].index("--checkpoint") + 1] == str(
        tmp_path / "linear_probe" / "finetune" / "model-best.pth")
    assert commands["lp-train"][commands["lp-train"].index("--out") + 1] == str(tmp_path / "linear_probe" / "sae_run")
    assert len(commands) == 1 + 2 * (3 + 5 * 2)  # phantoms + 2 pipelines of finetune, extract, train, 5 per concept
    random, *_ = parse_config(["--encoder", "random"])
    commands = {s.name: s.argv for s in build_stages(random, tmp_path)}
    assert "finetune" not in commands and "--random-weights" in commands["extract"]


def test_live_log_keeps_every_redraw_in_the_log_and_throttles_the_terminal() -> None:
    import io

    from mammosae_jax.demo.live_log import LiveLog

    log, terminal = io.StringIO(), io.StringIO()
    live = LiveLog(log, "extract", terminal=terminal, interval=3600)
    live.write("start\nbar  10%\rbar  20%")
    live.write("\rbar  30%\rdone\n")
    live.write("tail without newline")
    live.close_line()
    assert log.getvalue() == "start\nbar  10%\nbar  20%\nbar  30%\ndone\ntail without newline\n"
    # the first redraw is shown, the next ones inside the interval are not; plain lines always are
    assert terminal.getvalue() == ("  [extract] start\n  [extract] bar  10%\n  [extract] done\n"
                                   "  [extract] tail without newline\n")


def test_a_flag_outside_its_choices_is_refused_before_anything_runs(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--score", "best"])
    assert "invalid choice: 'best'" in capsys.readouterr().err


def _fake_outputs(out: Path, raw: float, sae: float, on10: float, off50: float, fvu: float, l0: float, hit: float) -> None:
    """Output files in the formats the stages write, with chosen numbers."""
    (out / "evaluation").mkdir(parents=True)
    (out / "interventions").mkdir()
    (out / "sae_run").mkdir()
    (out / "sae_run" / "cfg.json").write_text(json.dumps({"d_sae": 1000}))
    for label in ("Suspicious_Calcification", "Mass"):
        metrics = {"image": {"raw": {"aucroc": raw}, "sae": {"aucroc": sae}}}
        recon = {"fvu": fvu, "l0": l0}
        (out / "evaluation" / f"evaluation_{label}.json").write_text(json.dumps({"metrics": metrics, "reconstruction": recon}))
        (out / "interventions" / f"topk_on_{label}.json").write_text(json.dumps([{"k": 10, "aucroc": on10}]))
        (out / "interventions" / f"topk_off_{label}.json").write_text(json.dumps([{"k": 50, "aucroc": off50}]))
        (out / "interventions" / f"intervene_summary_{label}.json").write_text(
            json.dumps({"reference": {"sae": {"aucroc": sae}}}))
    heat = out / "heatmaps" / "Suspicious_Calcification"
    heat.mkdir(parents=True)
    heat.joinpath("latent_scores.csv").write_text(
        f"rank,latent,rule,hit_rate\n0,7,threshold,{hit}\n1,9,threshold,0.1\n0,7,percentile,1.0\n")


def test_gates_pass_and_fail_on_the_numbers_in_the_output_files(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    _fake_outputs(good, raw=0.90, sae=0.89, on10=0.87, off50=0.60, fvu=0.2, l0=40, hit=0.7)
    _fake_outputs(bad, raw=0.80, sae=0.70, on10=0.60, off50=0.40, fvu=0.3, l0=60, hit=0.5)
    good_gates = evaluate_gates(good, DemoConfig())
    bad_gates = evaluate_gates(bad, DemoConfig())
    assert all(g.passed for g in good_gates), [g.line() for g in good_gates if not g.passed]
    failed = {g.name for g in bad_gates if not g.passed}
    assert len(bad_gates) == 11 and {g.name for g in bad_gates} - failed == {
        "Suspicious_Calcification: AUROC drop with top-50 deactivated", "Mass: AUROC drop with top-50 deactivated"}
    hit_gate = next(g for g in good_gates if "hit rate" in g.name)
    assert hit_gate.value == pytest.approx(0.7) and "latent 7" in hit_gate.note


def test_comparison_table_and_figures_read_both_pipelines(tmp_path: Path) -> None:
    from mammosae_jax.demo.compare import comparison_table, plot_curves

    ft, lp = tmp_path / "ft", tmp_path / "lp"
    for out, sae, on1, hit in ((ft, 0.90, 0.88, 0.5), (lp, 0.70, 0.66, 0.1)):
        _fake_outputs(out, raw=sae + 0.01, sae=sae, on10=0.8, off50=sae - 0.05, fvu=0.2, l0=40, hit=hit)
        for label in ("Suspicious_Calcification", "Mass"):
            (out / "interventions" / f"topk_on_{label}.json").write_text(
                json.dumps([{"k": 1, "aucroc": on1}, {"k": 10, "aucroc": 0.8}]))
        (out / "heatmaps" / "Mass").mkdir()
        (out / "heatmaps" / "Mass" / "latent_scores.csv").write_text("rank,latent,rule,hit_rate\n0,3,threshold,0.25\n")
    header, rows = comparison_table(ft, lp)
    assert header == ["concept", "measure", "linear probe", "fine-tuned", "fine-tuned − LP"]
    by = {(r[0], r[1]): r[2:] for r in rows}
    assert len(rows) == 10
    assert by[("Suspicious_Calcification", "head AUROC, raw features")] == pytest.approx([0.71, 0.91, 0.2])
    assert by[("Mass", "AUROC, only the top-1 class latents kept")] == pytest.approx([0.66, 0.88, 0.22])
    assert by[("Mass", "AUROC drop, top-50 class latents removed")] == pytest.approx([0.05, 0.05, 0.0])
    assert by[("Suspicious_Calcification", "best class-1 latent hit rate (of those drawn)")] == pytest.approx(
        [0.1, 0.5, 0.4])
    figures = plot_curves(ft, lp, tmp_path)
    assert [f.name for f in figures] == ["topk_linear_probe_vs_fine_tuned_Suspicious_Calcification.png",
                                         "topk_linear_probe_vs_fine_tuned_Mass.png"]
    assert all(f.stat().st_size > 0 for f in figures)


def test_missing_outputs_fail_the_gates_with_a_reason(tmp_path: Path) -> None:
    gates = evaluate_gates(tmp_path, DemoConfig())
    assert gates and not any(g.passed for g in gates)
    assert all(g.value is None and g.note for g in gates)


def test_demo_help_lists_the_knobs() -> None:
    text = subprocess.run([sys.executable, "-m", "mammosae_jax.demo", "--help"], capture_output=True, text=True,
                          check=True).stdout
    for flag in ("--n-images", "--arch", "--variant", "--steps", "--force"):
        assert flag in text


KNOWN_FAILING_GATES = {
    "Suspicious_Calcification: AUROC drop with top-50 deactivated",
    "Mass: AUROC drop with top-50 deactivated",
    "Suspicious_Calcification: best class-1 latent hit rate (positive test images)",
}
"""Gates of issue 9 the fine-tuned embedded default does not meet yet (README, "The demo": at 384 x 224
every token of the last layer sees most of the image, so each concept is carried redundantly by
hundreds of latents). They stay at issue 9's bounds and are strict xfails: the day one passes, the
test says so."""

ALL_GATES = [g.name for g in evaluate_gates(Path("/nonexistent"), DemoConfig())]


@pytest.fixture(scope="module")
def demo_gates(tmp_path_factory) -> dict:
    """The whole pipeline on phantoms at the default (2-core-sized) settings, run once."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = subprocess.run([sys.executable, "-m", "mammosae_jax.demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report.md").exists()
    return {g.name: g for g in evaluate_gates(out, DemoConfig())}


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="not met yet; see README 'The demo'"))
    if n in KNOWN_FAILING_GATES else n for n in ALL_GATES])
def test_demo_meets_its_gate(demo_gates: dict, name: str) -> None:
    """Each quality gate of issue 9 on the demo's own outputs."""
    gate = demo_gates[name]
    assert gate.passed, gate.line()


def test_the_known_failing_gates_are_real_gate_names() -> None:
    assert KNOWN_FAILING_GATES < set(ALL_GATES) and len(ALL_GATES) == 11
