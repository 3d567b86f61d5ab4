"""The sweep loop: one pass over the cache's token stream feeds every stack of SAEs.

Each token batch is read, checked and put on the devices once, then every stack takes one
vmap-ed step on it (`training.stacked`). The data stream, the patient split, the epoch length,
resampling (relu) and validation are exactly the single trainer's (`training.loop.train`), so
every member ends with the parameters a single run of its config would reach (float tolerance;
tests/test_sweep_train.py). Each member gets a normal run folder: `config.json` (its own `sae`
and `train` sections, as a single run writes them, plus a `sweep` section), `metrics.jsonl`
and the `sae_weights.safetensors` + `cfg.json` export. Sweeps write no orbax checkpoints and do not
resume: a sweep is restarted from scratch.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mammosae_jax.models.sae import SAEConfig
from mammosae_jax.training.config import TrainConfig
from mammosae_jax.training.data import DataSplit
from mammosae_jax.training.feed import NonFiniteBatch, TrainFeed, non_finite_message, token_stream
from mammosae_jax.training.loop import TrainError, data_record, finite_batch_on_devices, inference_config, plan_data
from mammosae_jax.training.mesh import DataParallel
from mammosae_jax.training.run_files import CONFIG, METRICS, MetricsLog, write_json_atomic
from mammosae_jax.training.stacked import (Member, Stack, group_members, init_stacked_state,
                                           make_stacked_resample, make_stacked_step, member_tree,
                                           metrics_rows)
from mammosae_jax.training.state import TrainState
from mammosae_jax.training.validate import ValMetrics, evaluate


class DataStats(NamedTuple):
    """What the sweep read from the cache (once, for all members)."""

    train_batches: int
    train_tokens: int
    feature_bytes: int  # train + resampling + validation tokens delivered, float32 bytes


class SweepResult(NamedTuple):
    members: tuple[Member, ...]
    configs: tuple[SAEConfig, ...]  # inference configs (batchtopk: learned threshold)
    runs: tuple[Path, ...]  # run folder of each member
    val: tuple[ValMetrics | None, ...]  # final validation of each member
    steps: int
    stacks: tuple[Stack, ...]
    data: DataStats
    train_seconds: float


def check_members(members: Sequence[Member]) -> None:
    """Refuse an empty sweep, duplicate names and mixed input dims."""
    if not members:
        raise TrainError("the sweep has no members")
    names = [m.name for m in members]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TrainError(f"duplicate member name(s): {', '.join(dupes)}")
    dims = {m.config.d_in for m in members}
    if len(dims) > 1:
        raise TrainError(f"members have different input dims {sorted(dims)}; a sweep reads one cache")


def _runtime() -> dict:
    return {"jax": jax.__version__, "python": sys.version.split()[0],
            "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count()}


class _Sweep:
    """State of one sweep run (the public entry point is `train_sweep`)."""

    def __init__(self, cache, members: Sequence[Member], tc: TrainConfig, dp: DataParallel,
                 split: DataSplit, spe: int, total: int, runs: Sequence[Path]):
        self.cache, self.members, self.tc, self.dp = cache, tuple(members), tc, dp
        self.split, self.spe, self.total, self.runs = split, spe, total, tuple(runs)
        self.n_epochs = math.ceil(total / spe)
        self.pid, self.pc = jax.process_index(), jax.process_count()
        self.local_batch = dp.local_batch_size(tc.batch_size)
        self.ldev = jax.local_device_count()
        self.stacks = tuple(group_members(members))
        self.logs = tuple(MetricsLog(r / METRICS, enabled=self.pid == 0) for r in runs)
        self.val: list[ValMetrics | None] = [None] * len(members)
        self.val_step = -1
        self.feature_bytes = 0
        self.train_batches = 0

    # ---------------------------------------------------------------- data (streams: feed.token_stream)

    def _checked(self, tokens: np.ndarray, what: str, step: int) -> jax.Array:
        x = finite_batch_on_devices(self.dp, tokens, what, step)
        self.feature_bytes += tokens.shape[0] * tokens.shape[1] * 4
        return x

    # ---------------------------------------------------------------- epoch-end work
    def resample_due(self, epochs_done: int) -> bool:
        every = self.tc.resample_every_epochs
        return every > 0 and epochs_done % every == 0 and self.n_epochs - epochs_done >= self.tc.resample_stop_epochs

    def resample(self, states: list[TrainState], epoch: int, step: int) -> None:
        """Resample every relu stack from one draw of tokens (the draw a single run makes)."""
        relu = [j for j, s in enumerate(self.stacks) if s.template.variant == "relu"]
        if not relu:
            return
        want = max(self.ldev, math.ceil(self.tc.resample_tokens / self.pc / self.ldev) * self.ldev)
        stream = token_stream(self.cache, self.tc, want, self.tc.seed + 1, epoch, self.split.train_images, False, 0)
        try:
            tokens = next(iter(stream)).tokens
        finally:
            stream.close()
        x = self._checked(tokens[: (len(tokens) // self.ldev) * self.ldev], "resampling", step)
        key = jax.random.fold_in(jax.random.key(self.tc.seed), epoch)
        for j in relu:
            stack = self.stacks[j]
            fn = make_stacked_resample(stack.template, self.dp.replicated)
            states[j], n_M = fn(states[j], stack.hyper.l1_coeff, x, key)
            for i, n in zip(stack.members, np.asarray(n_M)):
                self.logs[i].write({"event": "resample", "step": step, "epoch": epoch, "n_resampled": int(n),
                                    "n_tokens": int(x.shape[0])})

    def _val_batches(self, step: int) -> list[jax.Array]:
        """The validation tokens a single run uses, on the devices once for all members."""
        images = self.split.val_images
        if len(images) == 0:
            return []
        per_process = min(self.cache.n_tokens(self.tc.token_fraction, images, shard_index=p, shard_count=self.pc)
                          for p in range(self.pc))
        batch = (min(self.local_batch, per_process) // self.ldev) * self.ldev
        if batch == 0:
            return []
        n_batches = min(per_process // batch, max(1, self.tc.val_max_tokens // (batch * self.pc)))
        stream = token_stream(self.cache, self.tc, batch, self.tc.seed, 0, images, True, 2)
        try:
            return [self._checked(b.tokens, "validation", step) for b in itertools.islice(stream, n_batches)]
        finally:
            stream.close()

    def validate(self, states: list[TrainState], epoch: int, step: int) -> None:
        batches = self._val_batches(step)
        if not batches:
            return
        for stack, state in zip(self.stacks, states):
            for pos, i in enumerate(stack.members):
                mstate = member_tree(state, pos)
                # the stack's template differs from the member only in l1, which inference never
                # reads: one compiled validation function per stack instead of one per member
                config = inference_config(stack.template, mstate)
                val = evaluate(config, mstate.params, batches, self.tc.dense_above)
                if val is not None:
                    self.val[i] = val
                    self.logs[i].write({"split": "val", "step": step, "epoch": epoch, **val._asdict()})
        self.val_step = step

    # ---------------------------------------------------------------- the loop
    def run(self, states: list[TrainState], progress: bool) -> list[TrainState]:
        tc, step = self.tc, 0
        steps = [make_stacked_step(s.template, tc, self.dp.replicated) for s in self.stacks]
        acc: list[Any] = [None] * len(self.stacks)
        n_acc, waited, t_start = 0, 0.0, time.perf_counter()
        with tqdm(total=self.total, unit="step", disable=not progress or self.pid != 0, dynamic_ncols=True,
                  desc=f"{len(self.members)} SAEs in {len(self.stacks)} stack(s)") as bar, \
                closing(TrainFeed(self.cache, tc, self.dp, self.local_batch, self.split.train_images,
                                  self.n_epochs)) as feed:
            while step < self.total:
                epoch = step // self.spe
                batches = feed.epoch(epoch)
                try:
                    while step < self.total and step < (epoch + 1) * self.spe:
                        t0 = time.perf_counter()
                        try:
                            x = next(batches)
                        except NonFiniteBatch:
                            raise TrainError(non_finite_message("training", step + 1)) from None
                        waited += time.perf_counter() - t0
                        self.feature_bytes += self.local_batch * self.cache.dim * 4
                        self.train_batches += 1
                        for j, stack in enumerate(self.stacks):
                            states[j], metrics = steps[j](states[j], stack.hyper, x)
                            acc[j] = metrics if acc[j] is None else jax.tree.map(jnp.add, acc[j], metrics)
                        step += 1
                        n_acc += 1
                        bar.update(1)
                        if step % tc.log_every == 0 or step == self.total:
                            self._log_train(acc, n_acc, step, waited, time.perf_counter() - t_start)
                            acc, n_acc, waited, t_start = [None] * len(self.stacks), 0, 0.0, time.perf_counter()
                        t_side = time.perf_counter()
                        if step % self.spe == 0:
                            if self.resample_due(step // self.spe):
                                self.resample(states, epoch, step)
                            self.validate(states, epoch, step)
                        t_start += time.perf_counter() - t_side
                finally:
                    batches.close()
        if self.val_step != step:  # the run ended inside an epoch: validate its final state too
            self.validate(states, (step - 1) // self.spe, step)
        return states

    def _log_train(self, acc: list, n: int, step: int, waited: float, elapsed: float) -> None:
        common = {"split": "train", "step": step, "epoch": (step - 1) // self.spe,
                  "tokens_per_s": n * self.tc.batch_size / max(elapsed, 1e-9),
                  "data_wait_fraction": waited / max(elapsed, 1e-9)}
        for stack, metrics in zip(self.stacks, acc):
            for i, row in zip(stack.members, metrics_rows(metrics)):
                self.logs[i].write({**common, **{k: v / n for k, v in row.items()}})


def train_sweep(cache, out: str | Path, members: Sequence[Member], tc: TrainConfig, *,
                train_split: str = "training", dp: DataParallel | None = None, progress: bool = True,
                extra: dict[str, Any] | None = None) -> SweepResult:
    """Train every member on one pass of `cache`'s token stream; write `out/<member.name>/` runs.

    `tc` is shared (its `lr` is replaced by each member's). Refuses to write into existing
    member folders.
    """
    check_members(members)
    out = Path(out)
    dp, split, spe, total = plan_data(cache, members[0].config.d_in, tc, train_split, dp)
    runs = [out / m.name for m in members]
    taken = [str(r) for r in runs if r.exists() and any(r.iterdir())]
    if taken:
        raise TrainError(f"member folder(s) already exist and are not empty: {', '.join(taken)}; "
                         "choose a new --out")
    data = data_record(cache, train_split, split, spe, total)
    sweep = _Sweep(cache, members, tc, dp, split, spe, total, runs)
    if jax.process_index() == 0:
        for i, (m, run) in enumerate(zip(members, runs)):
            run.mkdir(parents=True, exist_ok=True)
            stack = next(j for j, s in enumerate(sweep.stacks) if i in s.members)
            write_json_atomic(run / CONFIG, {
                "sae": m.config.to_dict(), "train": m.train_config(tc).to_dict(), "data": data,
                "runtime": _runtime(), "sweep": {"member": m.name, "stack": stack,
                                                 "stack_members": [members[i].name for i in sweep.stacks[stack].members]},
                **(extra or {})})
    key = jax.random.key(tc.seed)
    states = [dp.replicate(init_stacked_state(s.template, tc, key, len(s.members))) for s in sweep.stacks]
    t0 = time.perf_counter()
    states = sweep.run(states, progress)
    jax.block_until_ready(states)
    seconds = time.perf_counter() - t0
    configs: list[SAEConfig | None] = [None] * len(members)
    for stack, state in zip(sweep.stacks, states):
        for pos, i in enumerate(stack.members):
            mstate = jax.device_get(member_tree(state, pos))
            configs[i] = inference_config(members[i].config, mstate)
            if not all(bool(np.isfinite(a).all()) for a in jax.tree.leaves(mstate.params)):
                raise TrainError(f"member {members[i].name}: parameters became non-finite (training diverged; "
                                 "lower its --lr)")
            if jax.process_index() == 0:
                from mammosae_jax.models.sae_io import SAE, save_sae

                save_sae(runs[i], SAE(configs[i], mstate.params))
    stats = DataStats(sweep.train_batches, sweep.train_batches * tc.batch_size, sweep.feature_bytes)
    return SweepResult(tuple(members), tuple(configs), tuple(runs), tuple(sweep.val), total,
                       sweep.stacks, stats, seconds)


__all__ = ["DataStats", "SweepResult", "check_members", "train_sweep"]
