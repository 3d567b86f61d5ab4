"""`python -m mammosae_jax.sweep`: run folders, summary.json, pareto.png, concept AUROC; errors."""
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import cache as cache_lib
from mammosae_jax import load_sae
from mammosae_jax.analysis.heads import make_head, save_head
from mammosae_jax.cli.sweep import main
from mammosae_jax.training.sweep_report import pareto_front
from helpers.sweep_data import write_labelled_cache
from helpers.train_data import DIM, write_train_cache

COMMON = ["--batch-size", "16", "--val-fraction", "0.25", "--log-every", "4", "--no-progress"]


@pytest.fixture(scope="module")
def labelled_cache(tmp_path_factory):
    return write_labelled_cache(tmp_path_factory.mktemp("cache") / "c")


@pytest.fixture(scope="module")
def unlabelled_cache(tmp_path_factory):
    return write_train_cache(tmp_path_factory.mktemp("cache") / "u")


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    points = [(1.0, 0.9), (2.0, 0.5), (3.0, 0.6), (4.0, 0.2), (None, 0.1), (2.0, 0.5), (1.0, 0.95), (5.0, 0.2)]
    # (3, .6) is dominated by (2, .5); (1, .95) by (1, .9); (5, .2) by (4, .2); None is never on it;
    # the two equal points (2, .5) dominate neither each other
    assert pareto_front(points) == [0, 1, 5, 3]
    assert pareto_front([]) == []


def _reference_auroc(cache, run, head):
    """Per-image AUROC of the head on decode(mean latent) over the test split, in numpy + sklearn."""
    sae = load_sae(run)
    W_dec, b_dec = np.asarray(sae.params["W_dec"], np.float64), np.asarray(sae.params["b_dec"], np.float64)
    images = cache.split_indices("test")
    logits = []
    for i in images:
        x_PD = cache.feature_map(int(i)).reshape(-1, DIM)
        zbar = np.asarray(sae.encode(x_PD), np.float64).mean(0)
        logits.append(head.weight[0].astype(np.float64) @ (zbar @ W_dec + b_dec) + head.bias[0])
    return roc_auc_score(cache.labels["Mass"].to_numpy()[images], logits)


def test_cli_topk_sweep_with_head_writes_runs_summary_pareto(labelled_cache, tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(["--cache", str(labelled_cache), "--out", str(out), "--variant", "topk", "--k", "4",
               "--lr", "1e-2,3e-3", "--expansion", "2", "--steps", "12", "--head", "cache", *COMMON])
    assert rc == 0
    printed = capsys.readouterr().out
    names = ["topk-x2-k4-lr_0.01", "topk-x2-k4-lr_0.003"]
    assert all(n in printed for n in names) and "trained 2 SAEs in 1 stack(s), 12 steps" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [m["name"] for m in summary["members"]] == names
    assert summary["stacks"] == [{"members": names, "n_latents": 2 * DIM, "variant": "topk", "k": 4}]
    assert summary["data_read_once"]["train_batches"] == 12
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cache = cache_lib.open_cache(labelled_cache)
    for m in summary["members"]:
        run = out / m["run"]
        assert load_sae(run).config.k == 4 and (run / "evaluation_Mass.json").is_file()
        last_val = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                    if r.get("split") == "val"][-1]
        assert last_val["step"] == 12  # the run ends inside an epoch: its final state is validated
        assert (m["val_fvu"], m["val_l0"], m["val_dead_fraction"]) == (last_val["fvu"], last_val["l0"],
                                                                       last_val["dead_fraction"])
        assert m["val_l0"] <= 4.0
        np.testing.assert_allclose(m["auroc_sae"], _reference_auroc(cache, run, cache.head()), atol=1e-6)
    raw = summary["concept"]["raw_features"]["aucroc"]
    assert 0.6 < raw < 0.99  # an informative concept, not a saturated one
    pooled = cache.pooled()[cache.split_indices("test")]
    head = cache.head()
    np.testing.assert_allclose(raw, roc_auc_score(cache.labels["Mass"].to_numpy()[cache.split_indices("test")],
                                                  pooled @ head.weight[0] + head.bias[0]), atol=1e-9)
    points = {m["name"]: (m["val_l0"], m["val_fvu"]) for m in summary["members"]}
    for name in summary["pareto_front"]:  # nothing beats a front member in both L0 and FVU
        l0, fvu = points[name]
        assert not any(o[0] <= l0 and o[1] <= fvu and o != (l0, fvu) for o in points.values())


def _error(capsys, argv):
    with pytest.raises(SystemExit) as e:
        code = main(argv)
        raise SystemExit(code)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("extra, message", [
    (["--variant", "topk", "--l1", "1e-3"], "error: --l1 applies to --variant relu; a topk sweep varies --k"),
    (["--k", "4"], "error: --k applies to --variant topk/batchtopk; a relu sweep varies --l1"),
    (["--variant", "topk", "--k", "4,100", "--expansion", "2"],
     f"error: --k 100 exceeds n_latents {2 * DIM} (expansion 2 x dim {DIM})"),
    (["--label", "Mass"], "error: --label needs --head (a head file or 'cache')"),
    (["--batch-size", "18"], "error: batch size 18 is not divisible by the 4 devices of 1 process(es)"),
    (["--head", "cache"], "error: the cache stores no concept head; pass --head (fit one with "
                          "python -m mammosae_jax.fit_head)"),
])
def test_cli_errors_before_training(unlabelled_cache, tmp_path, capsys, extra, message):
    argv = ["--cache", str(unlabelled_cache), "--out", str(tmp_path / "s"), "--steps", "2", *COMMON, *extra]
    assert _error(capsys, argv) == message
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value, message", [
    ("1e-3,abc", "expected a comma-separated list of numbers, got '1e-3,abc'"),
    ("1e-3,1e-3", "duplicate values in '1e-3,1e-3'"),
    ("-1e-3", "values must be positive, got '-1e-3'"),
])
def test_cli_bad_lists(unlabelled_cache, tmp_path, capsys, value, message):
    line = _error(capsys, ["--cache", str(unlabelled_cache), "--out", str(tmp_path / "s"), "--steps", "2",
                           f"--l1={value}"])
    assert line.endswith(f"error: argument --l1: {message}")


def test_cli_refuses_single_class_head_split_existing_sweep_and_missing_cache(unlabelled_cache, tmp_path, capsys):
    head_file = tmp_path / "head.safetensors"
    save_head(head_file, make_head(np.ones((1, DIM)), np.zeros(1), "Mass", ["0", "1"]))
    base = ["--out", str(tmp_path / "s"), "--steps", "2", *COMMON]
    assert _error(capsys, ["--cache", str(unlabelled_cache), *base, "--head", str(head_file)]) == (
        "error: the 'test' split has only one class of 'Mass' (4 images); AUROC needs both; use another --head-split")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "summary.json").write_text("{}")
    assert _error(capsys, ["--cache", str(unlabelled_cache), *base]) == (
        f"error: {tmp_path / 's'} already holds a finished sweep (summary.json); choose a new --out")
    member = tmp_path / "t" / "relu-x8-l1_3e-05-lr_0.0005"
    member.mkdir(parents=True)
    (member / "metrics.jsonl").write_text("")
    assert _error(capsys, ["--cache", str(unlabelled_cache), "--out", str(tmp_path / "t"), "--steps", "2",
                           *COMMON]) == (f"error: member folder(s) already exist and are not empty: {member}; "
                                         "choose a new --out")
    line = _error(capsys, ["--cache", str(tmp_path / "nope"), *base[:1], str(tmp_path / "u"), *base[2:]])
    assert line.startswith("error: ") and "nope" in line
