"""`python -m benchmarks.gpu --smoke` on CPU: every section runs and lands in the table and the JSON."""
import json

import pytest

from benchmarks import gpu


def test_gpu_check_smoke_runs_every_section(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--smoke", "--out", str(out), "--workdir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["smoke"] is True and r["platform"] == "cpu"
    for name in gpu.SECTIONS:
        assert "error" not in r[name] and "skipped" not in r[name], (name, r[name])
    assert r["ceiling"]["bf16_tflops"] > 0 and r["ceiling"]["fp32_tflops"] > 0
    assert r["step"]["jax_relu"]["tokens_per_s"] > 0 and r["step"]["jax_topk"]["tokens_per_s"] > 0
    assert 0 < r["step"]["jax_relu"]["of_fp32_ceiling"]
    assert r["step"]["torch_relu"]["tokens_per_s"] > 0 and r["step"]["torch_topk"]["tokens_per_s"] > 0
    assert r["step"]["topk_jax_over_torch"] == pytest.approx(r["step"]["torch_topk"]["step_ms"]
                                                             / r["step"]["jax_topk"]["step_ms"], rel=1e-12)
    feed = r["feed"]
    assert feed["steps"] == feed["images"] * 48 * 29 // feed["batch"] and 0 <= feed["data_wait_fraction"] <= 1
    assert r["extract"]["bf16_autocast"] > 0 and r["extract"]["fp32"] > 0
    assert r["interventions"]["max_metric_difference"] < 1e-4
    for row in ("matmul ceiling bf16", "SAE step jax_relu", "SAE step jax_topk", "SAE step torch_topk",
                "relu step: jax / torch eager", "topk step: jax / torch eager", "training from disk, device feed",
                "bf16 autocast", "intervention sweep"):
        assert row in table


def test_gpu_check_refuses_an_unknown_section(capsys):
    assert gpu.main(["--smoke", "--only", "ceiling,warp"]) == 2
    assert capsys.readouterr().err.strip() == ("error: unknown section(s) warp; choose from "
                                               "ceiling, step, feed, extract, interventions")
