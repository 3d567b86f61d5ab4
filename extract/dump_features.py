"""Run the Mammo-CLIP image encoder once over VinDr (or phantom) PNGs and write the feature cache.

    python extract/dump_features.py --csv vindr_detection_v1_folds.csv --images images_png \\
        --checkpoint calc_b5.safetensors --split all --out cache/vindr_b5
    python extract/dump_features.py --csv phantoms/vindr_detection_v1_folds.csv \\
        --images phantoms/images_png --random-weights --arch b5 --out demo_cache
    torchrun --nproc-per-node 4 extract/dump_features.py ...   # one cache, images split by rank

One encoder pass per unique image (the row table is kept beside it), local features from
`extract_features` (post-BN, post-swish head) at fp32 by default, pooled means, head logits when
the checkpoint has a classifier head. Rerunning the same command resumes after the last complete
shard. PNG decoding and preprocessing run in DataLoader workers; one device->host copy per batch.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cache import CacheError, CacheWriter, merge_ranks, rank_block
from cache.cli_errors import cli_main, print_error
from extract.calibration import RANDOM_WEIGHTS_LABEL, calibration_indices, random_calibrated_encoder
from extract.checkpoints import (CheckpointError, EncoderCheckpoint, checkpoint_arch, load_encoder_state,
                                 read_checkpoint)
from extract.encoder import build_encoder, feature_grid, get_arch, local_features
from extract.extract_checks import extraction_fingerprint, output_folder_problem, warn_constant_images
from extract.preprocess import MEAN, STD, AugmentConfig, ImageError, load_model_input
from cache.vindr import LABEL_COLUMNS, images_from_rows, load_annotations, png_path


class ExtractError(Exception):
    """Bad extraction input or settings; main prints the message as one line."""


@dataclass(frozen=True)
class ExtractConfig:
    """Everything one extraction run depends on (the CLI's options)."""

    csv: Path
    images: Path
    out: Path
    checkpoint: Path | None = None  # None: --random-weights
    arch: str | None = None  # None: from the checkpoint ("b5" with random weights)
    split: str = "all"  # "training" | "test" | "all"
    batch_size: int = 8
    dtype: str = "float16"  # cache storage dtype
    device: str = "auto"
    num_workers: int | None = None  # None: chosen from the CPU count
    limit: int | None = None  # first N unique images
    augment: bool = False  # reference augmentation on training-split images
    seed: int = 0  # random weights and augmentation
    shard_size: int = 256
    amp: bool = False  # bfloat16 autocast (recorded in the manifest)
    calib_images: int = 8  # random weights: images in the single BatchNorm calibration batch
    residual_gain: float = 0.0  # random weights: gamma of the residual branches (0 = zero-gamma init)
    overwrite: bool = False
    threads: int | None = None  # torch CPU threads (None: torch's default)


class Dist(NamedTuple):
    """This process's place in a torchrun launch (rank 0 of 1 without torchrun)."""

    rank: int
    world_size: int
    local_rank: int


class ImageTable(NamedTuple):
    """The unique images to extract and the row table that points into them."""

    images: pd.DataFrame  # one row per unique image (vindr.images_from_rows)
    rows: pd.DataFrame  # the CSV rows of those images, with `image_index`
    paths: list[Path]
    label_names: list[str]
    height: int
    width: int


# ---------------------------------------------------------------------------- inputs
def load_table(cfg: ExtractConfig) -> ImageTable:
    """Read the CSV, select split/limit, dedupe to images, and check every PNG header."""
    try:
        rows = load_annotations(cfg.csv)
    except (FileNotFoundError, ValueError) as exc:
        raise ExtractError(str(exc) if str(cfg.csv) in str(exc) else f"{cfg.csv}: {exc}") from None
    if cfg.split != "all":
        rows = rows[rows["split"] == cfg.split].reset_index(drop=True)
    if rows.empty:
        raise ExtractError(f"{cfg.csv} has no rows for split {cfg.split!r}")
    images, row_to_image = images_from_rows(rows)
    if cfg.limit is not None:
        keep = row_to_image < cfg.limit
        rows, row_to_image, images = rows[keep].reset_index(drop=True), row_to_image[keep], images.iloc[:cfg.limit]
    rows = rows.assign(image_index=row_to_image.astype(np.int64))
    paths = [png_path(cfg.images, r) for r in images[["patient_id", "image_id"]].to_dict("records")]
    height, width = _png_size(paths[0])
    return ImageTable(images.reset_index(drop=True), rows, paths, [c for c in LABEL_COLUMNS if c in images],
                      height, width)


def _png_size(path: Path) -> tuple[int, int]:
    """(H, W) from the PNG header; ImageError for a missing or unreadable file."""
    if not path.is_file():
        raise ImageError(f"missing PNG: {path}")
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"corrupt PNG {path}: {exc}") from None


def check_headers(paths: list[Path], hw: tuple[int, int]) -> None:
    """Fail before any work if a PNG is missing, has no valid header, or has another size."""
    for path in paths:
        if _png_size(path) != hw:
            h, w = _png_size(path)
            raise ImageError(f"image {path} is {h}x{w} (HxW) but the data set's images are {hw[0]}x{hw[1]}; "
                             "all images must share one size")


class PngDataset(Dataset):
    """Image index -> (index, (3, H, W) float32 input, error message or "")."""

    def __init__(self, paths: list[Path], indices: list[int], hw: tuple[int, int], augment_seed: int | None,
                 augment_mask: np.ndarray):
        self.paths, self.indices, self.hw = paths, indices, hw
        self.augment_seed, self.augment_mask = augment_seed, augment_mask

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        index = self.indices[i]
        seed = self.augment_seed if self.augment_mask[index] else None
        try:
            x = load_model_input(self.paths[index], self.hw, augment_seed=seed, image_index=index)
        except ImageError as exc:  # reported by the main process as one line
            return index, torch.empty(0), str(exc)
        return index, torch.from_numpy(x), ""


def collate(items: list[tuple[int, torch.Tensor, str]]) -> tuple[list[int], torch.Tensor | None, str]:
    """Stack a batch; on a bad image return its message instead of the tensor."""
    errors = [e for _, _, e in items if e]
    indices = [i for i, _, _ in items]
    if errors:
        return indices, None, errors[0]
    return indices, torch.stack([x for _, x, _ in items]), ""


# ---------------------------------------------------------------------------- model
def pick_device(name: str, local_rank: int) -> torch.device:
    """auto -> cuda (this rank's GPU) when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ExtractError("--device cuda was asked for but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def prepare_model(cfg: ExtractConfig, table: ImageTable, device: torch.device):
    """Build the encoder, load or randomise + calibrate its weights; returns (model, ckpt, encoder info)."""
    ckpt: EncoderCheckpoint | None = None
    if cfg.checkpoint is not None:
        ckpt = read_checkpoint(cfg.checkpoint)
        arch = checkpoint_arch(ckpt, str(cfg.checkpoint), cfg.arch)
    else:
        arch = cfg.arch or "b5"
    model = build_encoder(arch)
    info: dict[str, Any] = {"arch": arch, "model_name": get_arch(arch).model_name,
                            "static_padding_image_size": get_arch(arch).image_size,
                            "features": "extract_features: swish(bn1(conv_head)), NHWC",
                            "compute": "bfloat16 autocast" if cfg.amp else "float32"}
    if ckpt is not None:
        load_encoder_state(model, ckpt.encoder, str(cfg.checkpoint))
        info.update(weights=f"Mammo-CLIP ({ckpt.layout})",  # the file's name is in the producer, its sha256 in
                    checkpoint_meta={k: v for k, v in ckpt.meta.items() if k != "source_file"})  # the fingerprint
        model = model.to(device)
    else:
        calib = calibration_indices(len(table.paths), cfg.calib_images)
        x = torch.stack([torch.from_numpy(load_model_input(table.paths[i], (table.height, table.width)))
                         for i in calib])
        model = model.to(device)
        random_calibrated_encoder(model, cfg.seed, x.to(device), cfg.residual_gain)
        info.update(weights=RANDOM_WEIGHTS_LABEL, seed=cfg.seed, residual_gain=cfg.residual_gain,
                    batchnorm_calibration={"images": calib, "passes": 1, "mode": "train-mode BN, one batch"})
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model.eval(), ckpt, info


# ---------------------------------------------------------------------------- distributed
def init_distributed(device_name: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(0, 1, 0)
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))


# ---------------------------------------------------------------------------- extraction
def extract(cfg: ExtractConfig) -> dict:
    """Run one extraction (this rank's share under torchrun); returns a small summary."""
    d = init_distributed(cfg.device)
    device = pick_device(cfg.device, d.local_rank)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    elif device.type == "cpu" and d.world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", d.world_size))))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if (problem := output_folder_problem(cfg.out)) is not None:
        raise ExtractError(problem)
    table = load_table(cfg)
    hw = (table.height, table.width)
    block = rank_block(len(table.paths), d.rank, d.world_size)
    check_headers([table.paths[i] for i in block], hw)
    model, ckpt, encoder_info = prepare_model(cfg, table, device)
    grid = feature_grid(model, *hw)
    channels = get_arch(encoder_info["arch"]).channels
    augment_mask = (table.images["split"] == "training").to_numpy() if cfg.augment else np.zeros(len(table.paths), bool)
    preprocessing = {"input_hw": list(hw), "channels": 3, "minmax": "per image", "mean": MEAN, "std": STD,
                     "augment": ({"applied_to": "training split", "seed": cfg.seed, **asdict(AugmentConfig())}
                                 if cfg.augment else None)}
    head = ckpt.head if ckpt is not None else None
    w_KC = head.weight.to(device) if head is not None else None
    b_K = head.bias.to(device) if head is not None else None
    writer = CacheWriter(cfg.out, grid=grid, dim=channels, dtype=cfg.dtype, label_names=table.label_names,
                         encoder=encoder_info, preprocessing=preprocessing, shard_size=cfg.shard_size,
                         overwrite=cfg.overwrite, rank=d.rank, world_size=d.world_size,
                         fingerprint=extraction_fingerprint(cfg.checkpoint, cfg.split, cfg.limit, table.images,
                                                            table.rows),
                         producer={"device": str(device), "world_size": d.world_size,
                                   "checkpoint_file": None if cfg.checkpoint is None else cfg.checkpoint.name})
    labels = table.images[table.label_names].to_numpy(np.int64)
    with writer:
        todo = list(block)[writer.n_complete:]
        workers = cfg.num_workers if cfg.num_workers is not None else default_workers(device)
        loader = DataLoader(PngDataset(table.paths, todo, hw, cfg.seed if cfg.augment else None, augment_mask),
                            batch_size=cfg.batch_size, num_workers=workers, collate_fn=collate,
                            pin_memory=device.type == "cuda", persistent_workers=False,
                            prefetch_factor=4 if workers else None)
        bar = tqdm(total=len(block), initial=len(block) - len(todo), unit="img", desc=f"extract r{d.rank}",
                   dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 5.0, file=sys.stderr)
        started, n_done, blank = time.perf_counter(), 0, set()
        for indices, x_BCHW, error in loader:
            if error:
                raise ImageError(error)
            warn_constant_images(x_BCHW, table.paths, indices, blank)
            packed = encode_batch(model, x_BCHW, device, cfg.amp, w_KC, b_K)  # the one device->host copy
            maps_BHWC, logits_BK = unpack(packed, len(indices), grid, channels)
            image_rows = table.images.iloc[indices]
            writer.add(maps_BHWC, patient_id=image_rows["patient_id"].tolist(),
                       image_id=image_rows["image_id"].tolist(), split=image_rows["split"].tolist(),
                       labels=labels[indices], logits=logits_BK)
            n_done += len(indices)
            bar.update(len(indices))
        bar.close()
        if d.rank == 0:
            writer.set_rows(table.rows)
            if head is not None:
                writer.save_head(head.weight.numpy(), head.bias.numpy(), label=head.label,
                                 class_names=head.class_names)
    seconds = time.perf_counter() - started
    if d.world_size > 1:
        dist.barrier()
        if d.rank == 0:
            merge_ranks(cfg.out)
        dist.barrier()
    return {"images": len(table.paths), "extracted_here": n_done, "seconds": seconds,
            "images_per_s": n_done / seconds if seconds > 0 else float("nan"), "rank": d.rank}


def default_workers(device: torch.device) -> int:
    """Decoding workers: several on a GPU machine, few on CPU (the model needs the cores)."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 2 else min(2, cpus // 4 or 1)


@torch.no_grad()
def encode_batch(model, x_BCHW: torch.Tensor, device: torch.device, amp: bool,
                 w_KC: torch.Tensor | None, b_K: torch.Tensor | None) -> torch.Tensor:
    """Features (and head logits) of a batch, packed into one host tensor (B, H*W*C + K) float32."""
    x = x_BCHW.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        f_BCHW = local_features(model, x)
    f_BHWC = f_BCHW.float().permute(0, 2, 3, 1)
    parts = [f_BHWC.reshape(len(x), -1)]
    if w_KC is not None:
        pooled_BC = f_BHWC.mean(dim=(1, 2))
        parts.append(pooled_BC @ w_KC.T + b_K)
    return torch.cat(parts, dim=1).cpu()


def unpack(packed: torch.Tensor, n: int, grid: tuple[int, int], channels: int):
    """Split a packed host batch into (maps (n, H, W, C), logits (n, K) or None) numpy arrays."""
    size = grid[0] * grid[1] * channels
    arr = packed.numpy()
    maps = arr[:, :size].reshape(n, grid[0], grid[1], channels)
    logits = arr[:, size:] if arr.shape[1] > size else None
    return maps, logits


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extract/dump_features.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", required=True, type=Path, help="VinDr detection CSV (vindr_detection_v1_folds.csv)")
    p.add_argument("--images", required=True, type=Path, help="PNG root: <images>/<patient_id>/<image_id>")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path,
                         help="Mammo-CLIP .tar, classifier .pth or converted .safetensors (safe loading only)")
    weights.add_argument("--random-weights", action="store_true",
                         help="seeded random encoder with BatchNorm calibrated on the data (NOT Mammo-CLIP)")
    p.add_argument("--arch", choices=["b5", "b2"], default=None,
                   help="encoder (default: read from the checkpoint; b5 with --random-weights)")
    p.add_argument("--split", choices=["training", "test", "all"], default="all", help="CSV split to extract")
    p.add_argument("--out", required=True, type=Path, help="cache folder (created; resumed if it exists)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="cache storage dtype")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")
    p.add_argument("--num-workers", type=int, default=None,
                   help="PNG decoding workers (default: up to 8 with CUDA, 0-2 on CPU)")
    p.add_argument("--limit", type=int, default=None, help="only the first N unique images")
    p.add_argument("--augment", action="store_true",
                   help="reference train augmentation (flips, affine, elastic) on training-split images, seeded")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and augmentation (default 0)")
    p.add_argument("--shard-size", type=int, default=256, help="images per cache shard (default 256)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (default: float32 compute)")
    p.add_argument("--calib-images", type=int, default=8,
                   help="--random-weights: images in the BatchNorm calibration batch (default 8)")
    p.add_argument("--residual-gain", type=float, default=0.0,
                   help="--random-weights: initial gamma of every residual branch; 0 (default) starts each "
                        "skip block as the identity, which keeps the random network stable and local; 1 = plain init")
    p.add_argument("--overwrite", action="store_true", help="discard an existing cache instead of resuming")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; on a busy shared CPU 1 can be ~6x faster)")
    return p


def config_from_args(args: argparse.Namespace) -> ExtractConfig:
    for name in ("batch_size", "shard_size", "calib_images") + (("threads",) if args.threads is not None else ()):
        if getattr(args, name) < 1:
            raise ExtractError(f"--{name.replace('_', '-')} must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise ExtractError("--limit must be >= 1")
    return ExtractConfig(csv=args.csv, images=args.images, out=args.out, checkpoint=args.checkpoint,
                         arch=args.arch, split=args.split, batch_size=args.batch_size, dtype=args.dtype,
                         device=args.device, num_workers=args.num_workers, limit=args.limit,
                         augment=args.augment, seed=args.seed, shard_size=args.shard_size, amp=args.amp,
                         calib_images=args.calib_images, residual_gain=args.residual_gain,
                         overwrite=args.overwrite, threads=args.threads)


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        summary = extract(config_from_args(args))
    except (ExtractError, ImageError, CheckpointError, CacheError) as exc:
        print_error(exc)
        sys.exit(2)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if summary["rank"] == 0:
        print(f"wrote {args.out}: {summary['images']} images "
              f"({summary['extracted_here']} extracted here, {summary['images_per_s']:.2f} images/s)")


if __name__ == "__main__":
    main()
