"""Class-wise latent rankings and the reference's ranking file format.

Two scores of latent ``j`` for class ``c`` from per-image spatial-mean latents ``zbar [N, n]``:

* ``mean``: ``mean_{units of class c} zbar_j`` (the paper's formula);
* ``centered``: ``mean_{units of class c} zbar_j - mean_{all units} zbar_j`` (what produced the
  released files: in them ``importance_0 = -p/(1-p) * importance_1`` for every latent, with
  ``p = 428/16384`` the positive rate of the 16,384 train rows they were computed over);
* ``attribution`` (ours; needs the concept head): the centered score times latent j's effect on
  class c's logit margin, ``(W_cls W_dec)`` folded: how much more latent j pushes the head towards
  class c on class-c units than on average. It ranks the latents the head actually relies on.

A *unit* is a CSV row (reference parity: an image counts once per row, with the row's label) or an
image (label = max over its rows). Both are expressed as a weight matrix ``[n_classes, N_images]``
of unit counts, so the per-row statistics never materialise one latent vector per row.

Files: ``top_k_concepts_class={c}_{label}[_{suffix}].json``, a list of
``{"rank", "index", "importance"}`` over all latents, best first.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cache.atomic import write_text_atomic

SCORES = ("centered", "mean", "attribution")


class RankingError(ValueError):
    """A ranking that cannot be computed, read, or used with a given SAE."""


class ClassMeans(NamedTuple):
    """Per-class and overall mean latents over the units of a split."""

    means_Cn: np.ndarray  # mean zbar over the units of each class
    overall_n: np.ndarray  # mean zbar over all units
    counts_C: np.ndarray  # number of units of each class


class Ranking(NamedTuple):
    """Latent order and importances for every class of one label."""

    label: str
    importance_Cn: np.ndarray  # importance of latent j for class c (indexed by latent)
    order_Cn: np.ndarray  # latent indices, best first, per class

    @property
    def n_classes(self) -> int:
        return int(self.order_Cn.shape[0])

    @property
    def n_latents(self) -> int:
        return int(self.order_Cn.shape[1])


def unit_weights(labels_U: np.ndarray, unit_to_image_U: np.ndarray, n_images: int, n_classes: int) -> np.ndarray:
    """Counts ``[n_classes, n_images]``: how many units of class c each image contributes."""
    labels_U = np.asarray(labels_U).astype(np.int64)
    if labels_U.size and (labels_U.min() < 0 or labels_U.max() >= n_classes):
        raise RankingError(f"labels must lie in 0..{n_classes - 1}, got {np.unique(labels_U).tolist()}")
    w_CN = np.zeros((n_classes, n_images), np.float64)
    np.add.at(w_CN, (labels_U, np.asarray(unit_to_image_U, np.int64)), 1.0)
    return w_CN


def class_means(zbar_Nn: np.ndarray, weights_CN: np.ndarray) -> ClassMeans:
    """Weighted class means of per-image latents (weights from ``unit_weights``)."""
    counts_C = weights_CN.sum(axis=1)
    if (counts_C == 0).any():
        missing = np.flatnonzero(counts_C == 0).tolist()
        raise RankingError(f"no units of class {missing}: cannot rank latents for an absent class")
    z = np.asarray(zbar_Nn, np.float64)
    means_Cn = (weights_CN @ z) / counts_C[:, None]
    overall_n = (weights_CN.sum(axis=0) @ z) / counts_C.sum()
    return ClassMeans(means_Cn, overall_n, counts_C)


def class_scores(stats: ClassMeans, score: str, u_nK: np.ndarray | None = None) -> np.ndarray:
    """Importance ``[n_classes, n]`` under ``score``; 'attribution' needs the folded head ``u_nK``."""
    if score == "mean":
        return stats.means_Cn
    if score == "centered":
        return stats.means_Cn - stats.overall_n[None]
    if score == "attribution":
        if u_nK is None:
            raise RankingError("the 'attribution' score needs the concept head")
        return class_scores(stats, "centered") * class_margins(u_nK, len(stats.counts_C)).T
    raise RankingError(f"unknown score '{score}'; choose one of {', '.join(SCORES)}")


def class_margins(u_nK: np.ndarray, n_classes: int) -> np.ndarray:
    """``[n, n_classes]``: how much one unit of latent j raises class c's logit margin.

    A binary head has one logit (class 1: +u, class 0: -u); a K-class head's margin of class c is
    its logit minus the mean logit.
    """
    u = np.asarray(u_nK, np.float64)
    if u.ndim != 2:
        raise RankingError(f"the folded head must be [n_latents, n_logits], got shape {u.shape}")
    margins = np.concatenate([-u, u], axis=1) if u.shape[1] == 1 else u - u.mean(axis=1, keepdims=True)
    if margins.shape[1] != n_classes:
        raise RankingError(f"the head has {u.shape[1]} logits but the label has {n_classes} classes")
    return margins


def make_ranking(label: str, importance_Cn: np.ndarray) -> Ranking:
    """Rank latents by decreasing importance (ties keep latent order)."""
    imp = np.asarray(importance_Cn, np.float32)
    order_Cn = np.argsort(-imp, axis=1, kind="stable")
    return Ranking(label, imp, order_Cn)


def rank_positions(ranking: Ranking) -> np.ndarray:
    """``[n_classes, n]``: the rank of latent j in class c's list (0 = best)."""
    pos_Cn = np.empty_like(ranking.order_Cn)
    rows = np.arange(ranking.n_classes)[:, None]
    pos_Cn[rows, ranking.order_Cn] = np.arange(ranking.n_latents)[None]
    return pos_Cn


def ranking_filename(c: int, label: str, suffix: str = "") -> str:
    """``top_k_concepts_class={c}_{label}[_{suffix}].json``."""
    tail = f"_{suffix.lstrip('_')}" if suffix else ""
    return f"top_k_concepts_class={c}_{label}{tail}.json"


def write_ranking(out_dir: str | os.PathLike, ranking: Ranking, suffix: str = "") -> list[Path]:
    """Write one JSON file per class in the reference format; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in range(ranking.n_classes):
        order = ranking.order_Cn[c]
        records = [
            {"rank": r, "index": int(j), "importance": float(ranking.importance_Cn[c, j])} for r, j in enumerate(order)
        ]
        path = out / ranking_filename(c, ranking.label, suffix)
        write_text_atomic(path, json.dumps(records, indent=4))
        paths.append(path)
    return paths


def _find_files(directory: Path, label: str, suffix: str | None) -> dict[int, Path]:
    pattern = re.compile(rf"top_k_concepts_class=(\d+)_{re.escape(label)}(_.+)?\.json")
    found: dict[str, dict[int, Path]] = {}
    for p in directory.iterdir():
        m = pattern.fullmatch(p.name)
        if m:
            found.setdefault((m.group(2) or "").lstrip("_"), {})[int(m.group(1))] = p
    if not found:
        raise RankingError(f"no ranking files top_k_concepts_class=*_{label}*.json in {directory}")
    if suffix is None:
        if len(found) > 1:
            names = ", ".join(repr(s) for s in sorted(found))
            raise RankingError(f"{directory} holds rankings for '{label}' with several suffixes ({names}); choose one")
        suffix = next(iter(found))
    suffix = suffix.lstrip("_")
    if suffix not in found:
        raise RankingError(f"no ranking files for '{label}' with suffix '{suffix}' in {directory}")
    return found[suffix]


def _parse_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        records = json.loads(path.read_text())
        for i, r in enumerate(records):
            for key in ("index", "rank"):
                if not isinstance(r[key], int) or isinstance(r[key], bool):
                    raise RankingError(f"{path.name}: record {i} has {key} {r[key]!r}, expected an integer")
            if not isinstance(r["importance"], (int, float)) or isinstance(r["importance"], bool):
                raise RankingError(f"{path.name}: record {i} has importance {r['importance']!r}, expected a number")
        index = np.array([r["index"] for r in records], np.int64)
        rank = np.array([r["rank"] for r in records], np.int64)
        importance = np.array([r["importance"] for r in records], np.float32)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise RankingError(f"{path.name} is not a list of {{rank, index, importance}} records ({e})") from e
    n = len(index)
    if not np.array_equal(np.sort(index), np.arange(n)) or not np.array_equal(np.sort(rank), np.arange(n)):
        raise RankingError(f"{path.name}: ranks and indices must each cover 0..{n - 1} exactly once")
    by_rank = np.argsort(rank)
    importance_n = np.empty(n, np.float32)
    importance_n[index] = importance
    return index[by_rank], importance_n


def read_ranking(
    directory: str | os.PathLike,
    label: str,
    *,
    suffix: str | None = None,
    n_latents: int | None = None,
    n_classes: int | None = None,
) -> Ranking:
    """Read every class file of ``label`` from ``directory``.

    ``suffix=None`` accepts files with or without a suffix (e.g. the released ``_finetuned``
    files) as long as only one variant is present. ``n_latents`` refuses a ranking made for an
    SAE of another size; ``n_classes`` refuses a missing class.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise RankingError(f"ranking directory not found: {directory}")
    files = _find_files(directory, label, suffix)
    classes = sorted(files)
    expected = list(range(n_classes)) if n_classes is not None else list(range(len(classes)))
    if classes != expected:
        raise RankingError(f"ranking files for '{label}' cover classes {classes}, expected {expected}")
    parsed = [_parse_file(files[c]) for c in classes]
    sizes = {len(order) for order, _ in parsed}
    if len(sizes) != 1:
        raise RankingError(f"ranking files for '{label}' disagree on the number of latents: {sorted(sizes)}")
    size = sizes.pop()
    if n_latents is not None and size != n_latents:
        raise RankingError(f"the ranking covers {size} latents but the SAE has {n_latents}")
    order_Cn = np.stack([order for order, _ in parsed])
    importance_Cn = np.stack([imp for _, imp in parsed])
    return Ranking(label, importance_Cn, order_Cn)


