"""Stacked training: every member of a vmap-ed stack equals the same config trained alone."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cache as cache_lib
from mammosae_jax import load_sae
from mammosae_jax.models.sae import PARAM_NAMES, SAEConfig
from mammosae_jax.training.config import TrainConfig
from mammosae_jax.training.loop import train
from mammosae_jax.training.mesh import make_data_parallel
from mammosae_jax.training.stacked import (Member, group_members, init_stacked_state, make_stacked_step,
                                           member_tree)
from mammosae_jax.training.state import init_state, make_optimizer
from mammosae_jax.training.step import make_train_step
from mammosae_jax.training.sweep_loop import train_sweep
from helpers.train_data import DIM, write_train_cache


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return write_train_cache(tmp_path_factory.mktemp("cache") / "c")


def _close(a, b, what):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=2e-6, err_msg=what)


def test_group_members_stacks_by_width_and_k_only():
    cfg = lambda n, **kw: SAEConfig(DIM, n, **kw)  # noqa: E731
    members = [Member("a", cfg(32, l1_coeff=1e-3), 1e-2), Member("b", cfg(64, l1_coeff=1e-3), 1e-2),
               Member("c", cfg(32, l1_coeff=3e-3), 1e-3), Member("d", cfg(32, variant="topk", k=4), 1e-2),
               Member("e", cfg(32, variant="topk", k=8), 1e-2), Member("f", cfg(32, variant="topk", k=4), 3e-3)]
    stacks = group_members(members)
    assert [s.members for s in stacks] == [(0, 2), (1,), (3, 5), (4,)]
    np.testing.assert_array_equal(stacks[0].hyper.l1_coeff, np.float32([1e-3, 3e-3]))
    np.testing.assert_array_equal(stacks[0].hyper.lr, np.float32([1e-2, 1e-3]))
    np.testing.assert_array_equal(stacks[2].hyper.lr, np.float32([1e-2, 3e-3]))
    assert [s.template.k for s in stacks[2:]] == [4, 8]


@pytest.mark.slow  # the default run covers this through test_sweep_member_equals_single_run_...
@pytest.mark.parametrize("variant", ["relu", "batchtopk"])
def test_stacked_step_equals_single_steps_over_four_devices(variant):
    """Three steps of one vmap-ed step on a batch sharded over 4 devices == each member's own step."""
    dp = make_data_parallel()
    assert dp.n_devices == 4
    tc = TrainConfig(lr=1e-2, steps=3, batch_size=16, dead_after_tokens=32)
    members = [Member(f"m{i}", SAEConfig(DIM, 32, variant=variant, k=None if variant == "relu" else 4, aux_k=4, l1_coeff=l1), lr)
               for i, (l1, lr) in enumerate([(1e-3, 1e-2), (3e-2, 2e-3)])]
    (stack,) = group_members(members)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(16, DIM)).astype(np.float32) + 0.5 for _ in range(3)]
    stacked = dp.replicate(init_stacked_state(stack.template, tc, jax.random.key(3), 2))
    step = make_stacked_step(stack.template, tc, dp.replicated)
    for x in xs:
        stacked, metrics = step(stacked, stack.hyper, dp.put_batch(x))
    assert stacked.params["W_enc"].shape == (2, DIM, 32) and stacked.params["W_enc"].sharding.is_fully_replicated
    for i, m in enumerate(members):
        single = init_state(m.config, make_optimizer(m.train_config(tc)), jax.random.key(3))
        single_step = make_train_step(m.config, m.train_config(tc))
        for x in xs:
            single, single_metrics = single_step(single, jnp.asarray(x))
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(member_tree(stacked, i))):
            _close(a, b, f"{variant} member {i}")
        _close(single_metrics.loss, metrics.loss[i], "loss")
    # the hyper-parameters really act: the two members diverged
    assert np.abs(np.asarray(stacked.params["W_enc"][0] - stacked.params["W_enc"][1])).max() > 1e-3


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sweep_member_equals_single_run_with_resampling(tiny_cache, tmp_path):
    """Two widths (two stacks), two l1 x lr members in one stack, 3 epochs with relu resampling.

    The second member of the two-member stack (its l1 and lr are traced array entries 1) is
    compared with a single run of its config; the slow topk test compares every member of two
    stacks."""
    feats = cache_lib.open_cache(tiny_cache)
    tc = TrainConfig(lr=1e-2, batch_size=16, epochs=3, val_fraction=0.25, resample_every_epochs=1,
                     resample_stop_epochs=1, resample_tokens=64, log_every=4, checkpoint_every=1000)
    members = [Member("narrow_a", SAEConfig(DIM, 2 * DIM, l1_coeff=1e-3), 1e-2),
               Member("narrow_b", SAEConfig(DIM, 2 * DIM, l1_coeff=1.0), 1e-1),
               Member("wide", SAEConfig(DIM, 4 * DIM, l1_coeff=1e-3), 1e-2)]
    result = train_sweep(feats, tmp_path / "sweep", members, tc, progress=False)
    assert [s.members for s in result.stacks] == [(0, 1), (2,)]
    assert result.steps == 24 and result.data.train_batches == 24  # one pass: 24 batches for 3 SAEs
    resampled = [r for r in _records(result.runs[1]) if r.get("event") == "resample"]
    assert [r["step"] for r in resampled] == [8, 16] and resampled[1]["n_resampled"] > 0  # l1 = 1 kills latents
    i, m = 1, members[1]
    alone = train(feats, tmp_path / f"alone_{m.name}", m.config, m.train_config(tc), progress=False)
    swept = load_sae(result.runs[i])
    assert swept.config == alone.config
    for name in PARAM_NAMES:
        _close(swept.params[name], alone.state.params[name], f"{m.name} {name}")
    val = result.val[i]
    assert val.n_tokens == alone.val.n_tokens
    for field in ("mse", "fvu", "l0", "dead_fraction"):
        np.testing.assert_allclose(getattr(val, field), getattr(alone.val, field), rtol=1e-4, err_msg=field)
    # the run folder reads like a single run's: same sae/train/data sections, same train log
    swept_cfg = json.loads((result.runs[i] / "config.json").read_text())
    alone_cfg = json.loads((tmp_path / f"alone_{m.name}" / "config.json").read_text())
    for section in ("sae", "train", "data"):
        assert swept_cfg[section] == alone_cfg[section], section
    swept_log = [r for r in _records(result.runs[i]) if r.get("split") == "train"]
    alone_log = [r for r in _records(tmp_path / f"alone_{m.name}") if r.get("split") == "train"]
    assert [r["step"] for r in swept_log] == [r["step"] for r in alone_log] == [4, 8, 12, 16, 20, 24]
    np.testing.assert_allclose([r["loss"] for r in swept_log], [r["loss"] for r in alone_log], rtol=1e-5)
    first = load_sae(result.runs[0]).params["W_enc"]  # same init, other l1 and lr: a different SAE
    assert np.abs(np.asarray(first) - np.asarray(load_sae(result.runs[1]).params["W_enc"])).max() > 1e-3
    # members differ only in their hyper-parameters
    cfgs = [json.loads((r / "config.json").read_text()) for r in result.runs]
    assert {k for k in cfgs[0]["sae"] if cfgs[0]["sae"][k] != cfgs[1]["sae"][k]} == {"l1_coeff"}
    assert {k for k in cfgs[0]["train"] if cfgs[0]["train"][k] != cfgs[1]["train"][k]} == {"lr"}
    assert {k for k in cfgs[0]["sae"] if cfgs[0]["sae"][k] != cfgs[2]["sae"][k]} == {"n_latents"}
    assert load_sae(result.runs[2]).params["W_enc"].shape == (DIM, 4 * DIM)
    assert [cfg["sweep"]["stack_members"] for cfg in cfgs] == [["narrow_a", "narrow_b"]] * 2 + [["wide"]]


@pytest.mark.slow
def test_topk_sweep_two_k_and_two_lr_equal_single_runs(tiny_cache, tmp_path):
    """k is a static shape: --k 4,8 x 2 lrs gives two stacks of two, all equal to single runs."""
    feats = cache_lib.open_cache(tiny_cache)
    tc = TrainConfig(lr=1e-2, batch_size=16, steps=10, val_fraction=0.25, dead_after_tokens=48, log_every=5)
    members = [Member(f"k{k}_lr{lr:g}", SAEConfig(DIM, 4 * DIM, variant="topk", k=k, aux_k=8), lr)
               for k in (4, 8) for lr in (1e-2, 3e-3)]
    result = train_sweep(feats, tmp_path / "sweep", members, tc, progress=False)
    assert [s.members for s in result.stacks] == [(0, 1), (2, 3)]
    for i, m in enumerate(members):
        alone = train(feats, tmp_path / m.name, m.config, m.train_config(tc), progress=False)
        for name in PARAM_NAMES:
            _close(load_sae(result.runs[i]).params[name], alone.state.params[name], f"{m.name} {name}")
