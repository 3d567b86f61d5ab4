"""Train Mammo-CLIP's downstream concept classifier: linear probe or fine-tune of the image encoder.

    python -m extract.finetune --csv vindr_detection_v1_folds.csv --images images_png \\
        --checkpoint b5-model-best-epoch-7.tar --concepts Suspicious_Calcification --mode fine-tune --out ft_calc
    python -m extract.finetune --csv phantoms/vindr_detection_v1_folds.csv --images phantoms/images_png \\
        --random-weights --arch b2 --concepts Mass,Suspicious_Calcification --mode fine-tune --out ft
    torchrun --nproc-per-node 2 -m extract.finetune ...          # data-parallel, one output folder

Mammo-CLIP's recipe (`Classifiers/experiments.py`): encoder + linear head on the spatial mean of
the last-layer map, one logit per binary concept, BCE-with-logits with `pos_weight` = negatives /
positives (`--weighted_BCE y`), AdamW, linear warm-up then cos² decay per step, the checkpoint of
the best validation AUROC kept. Validation = a seeded patient-level part of the CSV's training split
(the test split is never seen). Writes `OUT/model-best.pth` in Mammo-CLIP's downstream layout
(`{"model": {image_encoder.*, classifier.classification_head.*}, "epoch", "auroc", ...}`, plain
tensors: loads with `torch.load(weights_only=True)`), its `.safetensors` twin (read without
unpickling), `config.json` and `metrics.jsonl`. `extract/dump_features.py --checkpoint
OUT/model-best.pth` reads it like any user's downstream file. Rerunning the same command resumes
from `OUT/state.pt` (saved atomically at every epoch end and every `--save-every` steps) and ends
with bitwise the same weights as an uninterrupted run on CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from cache.atomic import atomic_path, write_json_atomic, write_text_atomic
from extract.calibration import RANDOM_WEIGHTS_LABEL, calibration_indices, random_calibrated_encoder
from extract.checkpoints import (CheckpointError, EncoderCheckpoint, HeadWeights, checkpoint_arch,
                                 load_encoder_state,
                                 read_checkpoint, safe_torch_load, write_safetensors)
from extract.encoder import build_encoder, get_arch
from extract.finetune_data import DataError, TrainingData, load_inputs, load_training_data
from extract.finetune_model import (MODES, ConceptClassifier, mammoclip_state_dict, positive_weights,
                                    warmup_cosine_multiplier)
from extract.preprocess import ImageError, load_model_input
from cache.cli_errors import cli_main, print_error

BEST_PTH = "model-best.pth"
BEST_SAFETENSORS = "model-best.safetensors"
STATE = "state.pt"


class FinetuneError(Exception):
    """Bad fine-tuning input or settings; main prints the message as one line."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a fine-tuning run depends on; each field is the CLI option of the same name."""

    csv: str
    images: str
    out: str
    concepts: str = "Suspicious_Calcification"
    """comma-separated binary concept columns, one logit each."""
    mode: str = "fine-tune"
    """linear-probe (encoder frozen, BatchNorm statistics still updated) or fine-tune."""
    checkpoint: str | None = None
    """start from a CLIP .tar, a downstream .pth or our .safetensors (safe loading only)."""
    random_weights: bool = False
    """start from the seeded zero-gamma random encoder, BatchNorm calibrated on training images."""
    arch: str | None = None
    """b5 or b2 (default: from the checkpoint; b5 with --random-weights)."""
    freeze_blocks: int = 0
    """fine-tune: keep the stem and the first N MBConv blocks frozen (0 = Mammo-CLIP's full fine-tuning)."""
    epochs: int = 9
    """passes over the training images (Mammo-CLIP: 9)."""
    batch_size: int = 8
    """images per optimiser step (global, over all ranks)."""
    lr: float = 5e-5
    """AdamW peak learning rate (Mammo-CLIP: 5e-5)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (Mammo-CLIP: 1e-4)."""
    warmup_epochs: float = 1.0
    """linear warm-up length in epochs (Mammo-CLIP: 1), then cos² decay to 0."""
    weighted_bce: bool = True
    """BCE pos_weight = negatives / positives per concept, as Mammo-CLIP's --weighted_BCE y."""
    val_fraction: float = 0.15
    """fraction of the training split's patients held out for validation (best-checkpoint choice)."""
    augment: bool = False
    """the reference's flips / affine / elastic augmentation, drawn anew each epoch."""
    seed: int = 0
    """seed of the random encoder, the head, the data order, augmentation and drop-connect."""
    calib_images: int = 64
    """--random-weights: images in the single BatchNorm-calibration batch."""
    residual_gain: float = 0.0
    """--random-weights: initial gamma of the residual branches (0 = zero-gamma init)."""
    limit: int | None = None
    """use only the first N training images (smoke tests)."""
    save_every: int = 0
    """also save the resume state every N steps (0: at epoch ends only)."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""


# Flags that are not part of what the run computes (not compared on resume).
RUNTIME_FIELDS = ("save_every", "threads")


def encoder_for(cfg: FinetuneConfig, data: TrainingData) -> tuple[torch.nn.Module, str, dict[str, Any]]:
    """The starting encoder (loaded or random + calibrated), its arch and its provenance."""
    if cfg.checkpoint is not None:
        ckpt = read_checkpoint(cfg.checkpoint)
        arch = checkpoint_arch(ckpt, cfg.checkpoint, cfg.arch)
        model = build_encoder(arch)
        load_encoder_state(model, ckpt.encoder, cfg.checkpoint)
        return model, arch, {"weights": f"Mammo-CLIP ({ckpt.layout})", "checkpoint": Path(cfg.checkpoint).name}
    arch = cfg.arch or "b5"
    model = build_encoder(arch)
    train = data.train_indices
    calib = calibration_indices(len(train), cfg.calib_images)
    x = torch.stack([torch.from_numpy(load_model_input(data.paths[train[i]], data.hw)) for i in calib])
    random_calibrated_encoder(model, cfg.seed, x, cfg.residual_gain)
    return model, arch, {"weights": RANDOM_WEIGHTS_LABEL, "seed": cfg.seed, "residual_gain": cfg.residual_gain,
                         "batchnorm_calibration_images": len(calib)}


def batch_inputs(data: TrainingData, indices: np.ndarray, cfg: FinetuneConfig, epoch: int) -> torch.Tensor:
    """(B, 3, H, W) inputs of `indices`; augmentation (if on) drawn from (seed, epoch, image)."""
    seed = cfg.seed * 100_003 + epoch if cfg.augment else None
    return torch.from_numpy(load_inputs(data, indices, augment_seed=seed))


@torch.no_grad()
def validate(model: ConceptClassifier, data: TrainingData, batch_size: int) -> tuple[float, list[float], np.ndarray]:
    """(mean BCE, AUROC per concept, logits) on the validation images, eval mode."""
    model.eval()
    idx = data.val_indices
    logits = np.concatenate([model(torch.from_numpy(load_inputs(data, idx[i:i + batch_size]))).numpy()
                             for i in range(0, len(idx), batch_size)])
    y = data.labels[idx]
    loss = float(torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits),
                                                                      torch.from_numpy(y).float()))
    aurocs = [float(roc_auc_score(y[:, k], logits[:, k])) for k in range(y.shape[1])]
    return loss, aurocs, logits


def save_best(out: Path, model: ConceptClassifier, cfg: FinetuneConfig, arch: str, epoch: int, aurocs: list[float],
              logits: np.ndarray, concepts: list[str], origin: dict[str, Any]) -> None:
    """`model-best.pth` (Mammo-CLIP layout) and its safetensors twin, both atomically."""
    state = mammoclip_state_dict(model)
    payload = {"model": state, "epoch": epoch, "auroc": float(np.mean(aurocs)),
               "auroc_per_concept": dict(zip(concepts, aurocs)), "predictions": torch.from_numpy(logits),
               "label_names": concepts, "mode": cfg.mode, "arch": arch}
    with atomic_path(out / BEST_PTH) as tmp:
        torch.save(payload, tmp)
    head = model.classifier.classification_head
    meta = {"layout": "classifier", "source_file": BEST_PTH, "epoch": epoch, "mode": cfg.mode,
            "val_auroc": dict(zip(concepts, aurocs)), "trained_from": origin}
    encoder = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
    label = concepts[0] if len(concepts) == 1 else "+".join(concepts)
    ckpt = EncoderCheckpoint(encoder, HeadWeights(head.weight.detach(), head.bias.detach(), label,
                                                  ["negative", "positive"] if len(concepts) == 1 else concepts),
                             "classifier", meta)
    write_safetensors(out / BEST_SAFETENSORS, ckpt, arch)


def save_state(out: Path, model, optimizer, cfg: FinetuneConfig, epoch: int, batch: int, step: int,
               best: dict[str, Any], metrics: list[dict], epoch_losses: list[float]) -> None:
    """Everything needed to continue exactly: weights, AdamW moments, position, RNG, best so far."""
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "batch": batch,
               "step": step, "torch_rng": torch.get_rng_state(), "best": json.dumps(best),
               "metrics": json.dumps(metrics), "epoch_losses": json.dumps(epoch_losses), "config": json.dumps(comparable(cfg), sort_keys=True)}
    with atomic_path(out / STATE) as tmp:
        torch.save(payload, tmp)


def comparable(cfg: FinetuneConfig) -> dict[str, Any]:
    """The settings that determine the result (a resumed run must match them)."""
    return {k: v for k, v in asdict(cfg).items() if k not in RUNTIME_FIELDS}


def check_out(cfg: FinetuneConfig, overwrite: bool) -> dict[str, Any] | None:
    """The resume state if `out` holds this run, None for a fresh run; refuse a different run."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FinetuneError(f"--out {out} exists and is not a folder")
    state_path = out / STATE
    if overwrite:
        for name in (STATE, BEST_PTH, BEST_SAFETENSORS, "metrics.jsonl", "config.json"):
            (out / name).unlink(missing_ok=True)
        return None
    if not state_path.exists():
        if (out / "config.json").exists():
            raise FinetuneError(f"{out} holds another run's files but no resume state; pass --overwrite or a new --out")
        return None
    state = safe_torch_load(state_path)
    recorded = json.loads(state["config"])
    diff = sorted(k for k in set(recorded) | set(comparable(cfg)) if recorded.get(k) != comparable(cfg).get(k))
    if diff:
        raise FinetuneError(f"{out} was trained with other settings (differs in: {', '.join(diff)}); "
                            "pass --overwrite or a new --out")
    return state


def init_distributed() -> tuple[int, int]:
    """(rank, world_size); joins the torchrun process group (gloo) when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(cfg: FinetuneConfig, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one fine-tuning; returns the best epoch's summary."""
    rank, world = init_distributed()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    concepts = [c.strip() for c in cfg.concepts.split(",") if c.strip()]
    data = load_training_data(Path(cfg.csv), Path(cfg.images), concepts, cfg.val_fraction, cfg.seed, cfg.limit)
    out = Path(cfg.out)
    state = check_out(cfg, overwrite) if rank == 0 else None
    torch.manual_seed(cfg.seed)
    encoder, arch, origin = encoder_for(cfg, data)
    model = ConceptClassifier(encoder, get_arch(arch).channels, len(concepts), cfg.mode, cfg.freeze_blocks)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    y_NK = torch.from_numpy(data.labels).float()
    pos_weight = positive_weights(y_NK[data.train_indices]) if cfg.weighted_bce else torch.ones(len(concepts))
    criterion = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    per_epoch = -(-len(data.train_indices) // cfg.batch_size)
    total, warmup = per_epoch * cfg.epochs, round(cfg.warmup_epochs * per_epoch)
    epoch = batch = step = 0
    best: dict[str, Any] = {"auroc": -1.0, "epoch": None}
    metrics: list[dict] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        epoch, batch, step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        best, metrics = json.loads(state["best"]), json.loads(state["metrics"])
    if world > 1:
        dist.broadcast_object_list(obj := [epoch, batch, step], src=0)
        epoch, batch, step = obj
        for p in model.state_dict().values():
            dist.broadcast(p, src=0)
    if rank == 0:
        write_json_atomic(out / "config.json", {"finetune": asdict(cfg), "arch": arch, "concepts": concepts,
                                                "trained_from": origin, "pos_weight": pos_weight.tolist(),
                                                "train_images": len(data.train_indices),
                                                "val_images": len(data.val_indices),
                                                "val_patients": data.val_patients}, indent=1, sort_keys=True)
    if epoch >= cfg.epochs:
        return {"best": best, "resumed_complete": True}
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    n_train = len(data.train_indices)
    bar = tqdm(total=n_train * cfg.epochs, initial=n_train * epoch + min(n_train, batch * cfg.batch_size),
               unit="img", desc=f"{cfg.mode} {arch}", disable=not progress or rank != 0, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 5.0, file=sys.stderr)
    started = time.perf_counter()
    losses: list[float] = json.loads(state["epoch_losses"]) if state is not None else []
    while epoch < cfg.epochs:
        order = np.random.default_rng([cfg.seed, epoch]).permutation(data.train_indices)
        model.train()
        for b in range(batch, per_epoch):
            chunk = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            idx = chunk[rank::world]
            for g in optimizer.param_groups:
                g["lr"] = cfg.lr * warmup_cosine_multiplier(step + 1, warmup, total)
            loss = criterion(net(batch_inputs(data, idx, cfg, epoch)), y_NK[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(loss.item())
            bar.update(len(chunk))
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}", refresh=False)
            if rank == 0 and cfg.save_every and step % cfg.save_every == 0 and b + 1 < per_epoch:
                save_state(out, model, optimizer, cfg, epoch, b + 1, step, best, metrics, losses)
        batch = 0
        if rank == 0:
            val_loss, aurocs, logits = validate(model, data, cfg.batch_size)
            record = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)),
                      "val_loss": val_loss, "val_auroc": dict(zip(concepts, aurocs)),
                      "val_auroc_mean": float(np.mean(aurocs)), "lr": optimizer.param_groups[0]["lr"]}
            metrics.append(record)
            bar.write(f"epoch {epoch + 1}/{cfg.epochs}: train loss {record['train_loss']:.4f}, "
                      f"val loss {val_loss:.4f}, " + ", ".join(f"val AUROC {c} {a:.3f}" for c, a in zip(concepts, aurocs)),
                      file=sys.stderr)
            if record["val_auroc_mean"] > best["auroc"]:
                best = {"auroc": record["val_auroc_mean"], "epoch": epoch + 1, "per_concept": record["val_auroc"]}
                save_best(out, model, cfg, arch, epoch + 1, aurocs, logits, concepts, origin)
            write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(m, sort_keys=True) + "\n" for m in metrics))
            save_state(out, model, optimizer, cfg, epoch + 1, 0, step, best, metrics, [])
        losses = []
        epoch += 1
        if world > 1:
            dist.barrier()
    bar.close()
    return {"best": best, "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from cache.config_options import add_config_options

    p = argparse.ArgumentParser(prog="python -m extract.finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", required=True, help="VinDr detection CSV (vindr_detection_v1_folds.csv)")
    p.add_argument("--images", required=True, help="PNG root: <images>/<patient_id>/<image_id>")
    p.add_argument("--out", required=True, help="output folder (created; the same command resumes it)")
    add_config_options(p, FinetuneConfig, skip=("csv", "images", "out"),
                       choices={"mode": MODES, "arch": ("b5", "b2")},
                       overrides={"random_weights": {"action": "store_true"}, "checkpoint": {"type": str}})
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in --out instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_config(cfg: FinetuneConfig) -> None:
    """Refuse settings that cannot train, before any work."""
    if (cfg.checkpoint is None) == (not cfg.random_weights):
        raise FinetuneError("give exactly one of --checkpoint FILE and --random-weights")
    for name in ("epochs", "batch_size", "calib_images"):
        if getattr(cfg, name) < 1:
            raise FinetuneError(f"--{name.replace('_', '-')} must be >= 1")
    if not (np.isfinite(cfg.lr) and cfg.lr > 0):
        raise FinetuneError(f"--lr must be a positive number, got {cfg.lr}")
    if not (np.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise FinetuneError(f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    if not 0 < cfg.val_fraction < 1:
        raise FinetuneError(f"--val-fraction must be in (0, 1), got {cfg.val_fraction}")
    if cfg.warmup_epochs < 0 or cfg.warmup_epochs > cfg.epochs:
        raise FinetuneError(f"--warmup-epochs must be in 0..--epochs, got {cfg.warmup_epochs}")
    if cfg.freeze_blocks < 0 or cfg.save_every < 0 or (cfg.limit is not None and cfg.limit < 1):
        raise FinetuneError("--freeze-blocks and --save-every must be >= 0, --limit >= 1")
    if cfg.mode == "linear-probe" and cfg.freeze_blocks:
        raise FinetuneError("--freeze-blocks is for --mode fine-tune (a linear probe freezes the whole encoder)")


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig)}
    cfg = FinetuneConfig(**values)
    try:
        check_config(cfg)
        summary = train(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    except (FinetuneError, DataError, ImageError, CheckpointError, ValueError) as exc:
        print_error(exc)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    best = summary["best"]
    if int(os.environ.get("RANK", "0")) == 0:
        scores = ", ".join(f"{c} {a:.3f}" for c, a in (best.get("per_concept") or {}).items())
        state = "already complete" if summary.get("resumed_complete") else "done"
        print(f"{state}: best epoch {best['epoch']} (val AUROC {scores}) -> {Path(cfg.out) / BEST_PTH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
