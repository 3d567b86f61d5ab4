"""The training loop: epochs over the cache, logging, validation, resampling, checkpoints, export.

Order of work at a step s: the optimiser step; at an epoch end, resampling (relu, when due) and
validation; then the checkpoint (every `checkpoint_every` steps and at the end). A checkpoint at
s therefore holds everything done "at s", and a resumed run replays the data stream of its epoch
to the same position: the result equals an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from cache import CacheError

from mammosae_jax.models.sae import SAEConfig
from mammosae_jax.models.variants import get_variant
from mammosae_jax.training.checkpoint import Checkpointer
from mammosae_jax.training.config import TrainConfig
from mammosae_jax.training.data import DataError, DataSplit, batches_per_epoch, split_patients
from mammosae_jax.training.feed import (NonFiniteBatch, TrainFeed, non_finite_message, put_finite_batch,
                                         token_stream)
from mammosae_jax.training.mesh import DataParallel, make_data_parallel
from mammosae_jax.training.metric_window import load_window, save_window
from mammosae_jax.training.resample import resample_dead, token_losses
from mammosae_jax.training.resume_check import ResumeError, check_resume, content_id, run_lock
from mammosae_jax.training.run_files import CONFIG, METRICS, MetricsLog, write_json_atomic
from mammosae_jax.training.state import TrainState, init_state, make_optimizer
from mammosae_jax.training.step import StepMetrics, make_train_step
from mammosae_jax.training.validate import ValMetrics, evaluate


_token_losses = jax.jit(token_losses, static_argnums=0)


@functools.lru_cache(maxsize=8)
def _resample_fn(out_sharding):
    return jax.jit(resample_dead, donate_argnums=0, out_shardings=out_sharding)


class TrainError(Exception):
    """A run cannot start or continue; the message is one actionable line."""


class RunResult(NamedTuple):
    state: TrainState
    config: SAEConfig  # with the learned batchtopk threshold
    steps: int
    val: ValMetrics | None  # last validation


def finite_batch_on_devices(dp: DataParallel, tokens: np.ndarray, what: str, step: int, detail: str = "") -> jax.Array:
    """Place a token batch on the devices as float32; refuse one with NaN/inf, naming the step."""
    try:
        return put_finite_batch(dp, tokens, step)
    except NonFiniteBatch:
        raise TrainError(non_finite_message(what, step, detail)) from None


def inference_config(config: SAEConfig, state: TrainState) -> SAEConfig:
    """The config for inference: batchtopk/matryoshka get their learned threshold."""
    thr = float(state.threshold)
    if get_variant(config.variant).learns_threshold and thr >= 0:
        return dataclasses.replace(config, threshold=thr)
    return config


def _runtime() -> dict:
    import flax
    import optax
    import orbax.checkpoint

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "orbax_checkpoint": orbax.checkpoint.__version__, "python": sys.version.split()[0],
            "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count()}


def _check_resume(path: Path, sae: dict, train: dict, data: dict) -> None:
    try:
        check_resume(path, sae, train, data)
    except ResumeError as e:
        raise TrainError(str(e)) from None


class _Trainer:
    """State and helpers of one run (the public entry point is `train`)."""

    def __init__(self, cache, out: Path, config: SAEConfig, tc: TrainConfig, dp: DataParallel,
                 split: DataSplit, steps_per_epoch: int, total_steps: int):
        self.cache, self.out, self.config, self.tc, self.dp = cache, out, config, tc, dp
        self.split, self.spe, self.total = split, steps_per_epoch, total_steps
        self.n_epochs = math.ceil(total_steps / steps_per_epoch)
        self.pid, self.pc = jax.process_index(), jax.process_count()
        self.local_batch = dp.local_batch_size(tc.batch_size)
        self.local_devices = jax.local_device_count()
        self.log = MetricsLog(out / METRICS, enabled=self.pid == 0)
        self.optimizer = make_optimizer(tc)
        self.step_fn = make_train_step(config, tc, dp.replicated)
        self.last_val: ValMetrics | None = None

    # ---------------------------------------------------------------- data

    def _checked(self, tokens: np.ndarray, what: str, step: int) -> jax.Array:
        return finite_batch_on_devices(self.dp, tokens, what, step, self._no_checkpoint())

    def _no_checkpoint(self) -> str:
        return f", no checkpoint written for it (last checkpoint: {self.last_checkpoint})"

    # ---------------------------------------------------------------- epoch-end work
    def resample_due(self, epochs_done: int) -> bool:
        every = self.tc.resample_every_epochs
        return (self.config.variant == "relu" and every > 0 and epochs_done % every == 0
                and self.n_epochs - epochs_done >= self.tc.resample_stop_epochs)

    def resample(self, state: TrainState, epoch: int, step: int) -> TrainState:
        ldev = self.local_devices
        want = max(ldev, math.ceil(self.tc.resample_tokens / self.pc / ldev) * ldev)
        stream = token_stream(self.cache, self.tc, want, self.tc.seed + 1, epoch, self.split.train_images, False, 0)
        try:
            tokens = next(iter(stream)).tokens
        finally:
            stream.close()
        tokens = tokens[: (len(tokens) // ldev) * ldev]
        x = self._checked(tokens, "resampling", step)
        losses = _token_losses(self.config, state.params, x)
        key = jax.random.fold_in(jax.random.key(self.tc.seed), epoch)
        state, n = _resample_fn(self.dp.replicated)(state, x, losses, key)
        self.log.write({"event": "resample", "step": step, "epoch": epoch, "n_resampled": int(n),
                        "n_tokens": int(x.shape[0])})
        return state

    def validate(self, state: TrainState, epoch: int, step: int) -> ValMetrics | None:
        images = self.split.val_images
        if len(images) == 0:
            return None
        per_process = min(self.cache.n_tokens(self.tc.token_fraction, images, shard_index=p,
                                              shard_count=self.pc) for p in range(self.pc))
        ldev = self.local_devices
        batch = (min(self.local_batch, per_process) // ldev) * ldev
        if batch == 0:
            return None
        n_batches = min(per_process // batch, max(1, self.tc.val_max_tokens // (batch * self.pc)))
        stream = token_stream(self.cache, self.tc, batch, self.tc.seed, 0, images, True, 2)
        try:
            batches = (self._checked(b.tokens, "validation", step) for b in itertools.islice(stream, n_batches))
            val = evaluate(inference_config(self.config, state), state.params, batches, self.tc.dense_above)
        finally:
            stream.close()
        if val is not None:
            self.log.write({"split": "val", "step": step, "epoch": epoch, **val._asdict()})
        return val

    # ---------------------------------------------------------------- checkpoints
    last_checkpoint: int | None = None

    def save(self, ckpt: Checkpointer, state: TrainState, step: int) -> None:
        finite = jax.tree.map(lambda a: jnp.all(jnp.isfinite(a)), state.params)
        if not all(bool(v) for v in jax.tree.leaves(finite)):
            raise TrainError(f"parameters became non-finite by step {step} (training diverged; lower "
                             f"--lr); no checkpoint written (last checkpoint: {self.last_checkpoint})")
        ckpt.save(step, state, {"step": step, "epoch": step // self.spe, "steps_per_epoch": self.spe})
        self.last_checkpoint = step

    # ---------------------------------------------------------------- the loop
    def run(self, state: TrainState, ckpt: Checkpointer, progress: bool) -> TrainState:
        tc, step = self.tc, int(state.step)
        bar = tqdm(total=self.total, initial=step, unit="step", disable=not progress or self.pid != 0,
                   dynamic_ncols=True)
        (acc, n_acc), waited, t_start = load_window(self.out, step, StepMetrics, tc.log_every), 0.0, time.perf_counter()
        feed = TrainFeed(self.cache, tc, self.dp, self.local_batch, self.split.train_images, self.n_epochs)
        try:
            while step < self.total:
                epoch, skip = divmod(step, self.spe)
                batches = feed.epoch(epoch, skip)  # a resumed run starts at the checkpoint's batch
                try:
                    while step < self.total and step < (epoch + 1) * self.spe:
                        t0 = time.perf_counter()
                        try:
                            x = next(batches)
                        except CacheError as e:
                            raise TrainError(f"reading the batch of step {step + 1}: {e}") from None
                        except NonFiniteBatch:
                            raise TrainError(non_finite_message("training", step + 1, self._no_checkpoint())) from None
                        waited += time.perf_counter() - t0
                        state, metrics = self.step_fn(state, x)
                        step += 1
                        acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
                        n_acc += 1
                        bar.update(1)
                        if step % tc.log_every == 0 or step == self.total:
                            record = self._log_train(acc, n_acc, step, waited, time.perf_counter() - t_start)
                            bar.set_postfix(loss=f"{record['loss']:.4g}", l0=f"{record['l0']:.1f}",
                                            fvu=f"{record['fvu']:.3f}")
                            acc, n_acc, waited, t_start = None, 0, 0.0, time.perf_counter()
                        t_side = time.perf_counter()
                        if step % self.spe == 0:
                            if self.resample_due(step // self.spe):
                                state = self.resample(state, epoch, step)
                            self.last_val = self.validate(state, epoch, step) or self.last_val
                        if step % tc.checkpoint_every == 0 or step == self.total:
                            if self.pid == 0:
                                save_window(self.out, step, acc, n_acc)  # a resume continues this window
                            self.save(ckpt, state, step)
                        t_start += time.perf_counter() - t_side  # throughput counts training only
                finally:
                    batches.close()
        finally:
            feed.close()
            bar.close()
        return state

    def _log_train(self, acc: StepMetrics, n: int, step: int, waited: float, elapsed: float) -> dict:
        mean = {k: float(v) / n for k, v in jax.device_get(acc)._asdict().items()}
        record = {"split": "train", "step": step, "epoch": (step - 1) // self.spe, **mean,
                  "tokens_per_s": n * self.tc.batch_size / max(elapsed, 1e-9),
                  "data_wait_fraction": waited / max(elapsed, 1e-9)}
        self.log.write(record)
        return record


class DataPlan(NamedTuple):
    """What a training run reads: devices, the patient split, epoch length and total steps."""

    dp: DataParallel
    split: DataSplit
    steps_per_epoch: int
    total_steps: int


def plan_data(cache, d_in: int, tc: TrainConfig, train_split: str, dp: DataParallel | None) -> DataPlan:
    """Check the cache against the SAE and the batch size; split patients; count steps."""
    if cache.dim != d_in:
        raise TrainError(f"the cache's feature dim is {cache.dim} but the SAE's d_in is {d_in}")
    if len(cache) == 0:
        raise TrainError(f"the cache at {cache.path} holds no images")
    dp = dp or make_data_parallel()
    try:
        dp.check_batch_size(tc.batch_size)
    except ValueError as e:
        raise TrainError(str(e)) from None
    split = split_patients(cache, train_split, tc.val_fraction, tc.seed)
    spe = batches_per_epoch(cache, split.train_images, tc.token_fraction, dp.local_batch_size(tc.batch_size),
                            jax.process_count())
    if spe == 0:
        n = cache.n_tokens(tc.token_fraction, split.train_images)
        raise DataError(f"the training images give {n} tokens per epoch, fewer than one batch of "
                        f"{tc.batch_size}; lower --batch-size or use a bigger cache")
    total = tc.steps if tc.steps is not None else tc.epochs * spe
    return DataPlan(dp, split, spe, total)


def data_record(cache, train_split: str, split: DataSplit, spe: int, total: int) -> dict[str, Any]:
    """The `data` section of a run's config.json."""
    return {"cache": str(Path(cache.path).absolute()), "train_split": train_split,
            "n_train_images": int(len(split.train_images)), "n_val_images": int(len(split.val_images)),
            "val_patients": list(split.val_patients), "steps_per_epoch": spe, "total_steps": total,
            "cache_dim": int(cache.dim), "cache_grid": list(cache.grid), "cache_images": len(cache),
            "cache_content": content_id(cache.manifest)}


def train(cache, out: str | Path, config: SAEConfig, tc: TrainConfig, *, resume: bool = False,
          train_split: str = "training", dp: DataParallel | None = None, progress: bool = True,
          extra: dict[str, Any] | None = None) -> RunResult:
    """Train (or with `resume`, continue) an SAE on `cache`'s tokens; write the run folder `out`."""
    out = Path(out)
    dp, split, spe, total = plan_data(cache, config.d_in, tc, train_split, dp)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, jax.process_index() == 0):  # a second trainer of `out` is refused here
        run_config = {
            "sae": config.to_dict(), "train": tc.to_dict(),
            "data": data_record(cache, train_split, split, spe, total),
            "runtime": _runtime(), **(extra or {}),
        }
        trainer = _Trainer(cache, out, config, tc, dp, split, spe, total)
        state = dp.replicate(init_state(config, trainer.optimizer, jax.random.key(tc.seed)))
        ckpt = Checkpointer(out / "checkpoints", tc.keep_checkpoints)
        try:
            latest = ckpt.latest_step()
            if latest is not None and not resume:
                raise TrainError(f"{out} already holds checkpoints (latest step {latest}); pass --resume to "
                                 "continue that run or choose a new --out")
            if latest is not None:
                _check_resume(out / CONFIG, run_config["sae"], run_config["train"], run_config["data"])
                state, _ = ckpt.restore(latest, state)
                trainer.last_checkpoint = latest
            trainer.log.truncate_after(int(state.step))
            if jax.process_index() == 0:
                write_json_atomic(out / CONFIG, run_config)
            state = trainer.run(state, ckpt, progress)
        finally:
            ckpt.close()
        final = inference_config(config, state)
        if jax.process_index() == 0:
            from mammosae_jax.models.sae_io import SAE, save_sae

            save_sae(out, SAE(final, jax.device_get(state.params)))
    return RunResult(state, final, int(state.step), trainer.last_val)
