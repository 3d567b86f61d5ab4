"""Boxes from latent heatmaps, and how well they localise ground-truth findings.

Conventions (one for predicted and ground-truth boxes alike): a box is ``[x1, y1, x2, y2]`` in
the PNG frame, x to the right, y down, ``x2``/``y2`` exclusive, so its area is
``(x2 - x1) * (y2 - y1)`` and the whole W x H image is ``[0, 0, W, H]``. Pixel ``(row r, col c)``
covers ``[c, c + 1) x [r, r + 1)``; its centre is ``(c + 0.5, r + 0.5)``.

Box rules (both return integer boxes, one per external contour, in scan order):

* ``threshold_boxes`` is the reference rule: mask = heatmap > t * max(heatmap); each external
  contour (an 8-connected region with its holes filled, which is what OpenCV's RETR_EXTERNAL
  traces) gives its bounding rectangle; boxes under ``min_area`` = 10 px^2 are dropped. A map
  whose maximum is <= 0 (the latent does not fire) gives no box. A flat positive map gives the
  whole-image box, which then scores badly against any lesion-sized ground truth.
* ``percentile_boxes``: mask = heatmap > the q-th percentile of the map (and > 0). A flat map
  gives no box (nothing exceeds its own percentile).

Scores of one (latent, image) pair: best IoU of any predicted box with any ground-truth box, the
pointing-game hit and box precision / recall at an IoU threshold (one-to-one greedy matching).
Across images, ``average_precision`` ranks images by the latent's activation and counts an image
as a true positive when the latent localises one of its findings.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from skimage import measure

MIN_BOX_AREA = 10
"""Boxes with area (px^2) below this are dropped, as in the reference."""


class BoxMatch(NamedTuple):
    """Box precision / recall of one image at one IoU threshold."""

    n_true_positive: int
    """Predicted boxes matched one-to-one to a ground-truth box with IoU >= the threshold."""
    n_pred: int
    n_gt: int
    precision: float
    """``n_true_positive / n_pred``; NaN when there is no predicted box."""
    recall: float
    """``n_true_positive / n_gt``; NaN when there is no ground-truth box."""


def as_boxes(boxes: object) -> np.ndarray:
    """Any list of ``[x1, y1, x2, y2]`` (possibly empty) as a float64 (n, 4) array."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (n, 4), got {arr.shape}")
    return arr


def clip_boxes(boxes: object, image_hw: tuple[int, int]) -> np.ndarray:
    """Boxes clipped to a (height, width) image; boxes left with no area are removed."""
    h, w = image_hw
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    return b[keep]


def fill_holes(mask_HW: np.ndarray) -> np.ndarray:
    """The mask with its holes filled: background regions (4-connected, the dual of 8-connected
    foreground) that do not touch the image border become foreground."""
    background = measure.label(~mask_HW, connectivity=1)
    outside = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    return mask_HW | ~np.isin(background, outside)


def boxes_from_mask(mask_HW: np.ndarray, min_area: float = MIN_BOX_AREA) -> np.ndarray:
    """Bounding rectangles of the external contours of a boolean mask, as int64 (n, 4).

    Regions are 8-connected (as OpenCV traces contours); holes are filled first so that a region
    lying inside another one's hole is absorbed by it, as with RETR_EXTERNAL. Boxes with area
    below ``min_area`` are dropped. Order: by the region's first pixel in row-major scan.
    """
    mask = np.asarray(mask_HW, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if not mask.any():
        return np.zeros((0, 4), np.int64)
    labels = measure.label(fill_holes(mask), connectivity=2)
    boxes = [
        (c0, r0, c1, r1)
        for r0, c0, r1, c1 in (region.bbox for region in measure.regionprops(labels))
        if (c1 - c0) * (r1 - r0) >= min_area
    ]
    return np.asarray(boxes, np.int64).reshape(-1, 4)


def threshold_boxes(heatmap_HW: np.ndarray, threshold: float = 0.3,
                    min_area: float = MIN_BOX_AREA) -> np.ndarray:
    """Reference rule: boxes of ``heatmap > threshold * max(heatmap)``; none if max <= 0."""
    heat = np.asarray(heatmap_HW, dtype=np.float64)
    peak = float(heat.max())
    if not np.isfinite(peak) or peak <= 0:
        return np.zeros((0, 4), np.int64)
    return boxes_from_mask(heat > threshold * peak, min_area)


def percentile_boxes(heatmap_HW: np.ndarray, percentile: float = 95.0,
                     min_area: float = MIN_BOX_AREA) -> np.ndarray:
    """Boxes of ``heatmap > percentile(heatmap, q)`` restricted to positive values."""
    heat = np.asarray(heatmap_HW, dtype=np.float64)
    cut = float(np.percentile(heat, percentile))
    return boxes_from_mask((heat > cut) & (heat > 0), min_area)


def box_iou(boxes_a: object, boxes_b: object) -> np.ndarray:
    """Pairwise IoU, (n, m) float64, of two box lists (area = (x2 - x1) * (y2 - y1))."""
    a, b = as_boxes(boxes_a), as_boxes(boxes_b)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def max_iou(pred_boxes: object, gt_boxes: object) -> float:
    """Best IoU of any predicted box with any ground-truth box; 0.0 if either list is empty."""
    iou = box_iou(pred_boxes, gt_boxes)
    return float(iou.max()) if iou.size else 0.0


def pointing_hit(heatmap_HW: np.ndarray, gt_boxes: object) -> bool:
    """Pointing game: does the heatmap's maximum fall inside a ground-truth box?

    The maximum must be a point: when several pixels share the maximal value (a plateau, e.g. a
    latent that lights the whole image evenly) every one of them must lie inside a ground-truth
    box. A map whose maximum is <= 0 points nowhere (False). A pixel is inside a box when its
    centre is: ``x1 <= c + 0.5 <= x2`` and ``y1 <= r + 0.5 <= y2``.
    """
    heat = np.asarray(heatmap_HW)
    gt = as_boxes(gt_boxes)
    peak = heat.max()
    if len(gt) == 0 or not peak > 0:
        return False
    rows, cols = np.nonzero(heat == peak)
    x, y = cols + 0.5, rows + 0.5
    inside = ((gt[None, :, 0] <= x[:, None]) & (x[:, None] <= gt[None, :, 2])
              & (gt[None, :, 1] <= y[:, None]) & (y[:, None] <= gt[None, :, 3]))
    return bool(inside.any(axis=1).all())


def match_boxes(pred_boxes: object, gt_boxes: object, iou_threshold: float) -> BoxMatch:
    """Box precision / recall with one-to-one greedy matching (highest IoU pair first)."""
    pred, gt = as_boxes(pred_boxes), as_boxes(gt_boxes)
    iou = box_iou(pred, gt)
    n_tp = 0
    if iou.size:
        order = np.argsort(-iou, axis=None, kind="stable")
        used_p, used_g = set(), set()
        for flat in order:
            p, g = divmod(int(flat), iou.shape[1])
            if iou[p, g] < iou_threshold:
                break
            if p not in used_p and g not in used_g:
                used_p.add(p)
                used_g.add(g)
                n_tp += 1
    precision = n_tp / len(pred) if len(pred) else float("nan")
    recall = n_tp / len(gt) if len(gt) else float("nan")
    return BoxMatch(n_tp, len(pred), len(gt), precision, recall)


def average_precision(scores: object, is_tp: object, n_positive: int | None = None) -> float:
    """Non-interpolated AP of a ranking: ``sum_k P(k) * (recall(k) - recall(k-1))``.

    ``scores`` (n,) rank the items, highest first (equal scores form one threshold step, as in
    ``sklearn.metrics.average_precision_score``); ``is_tp`` (n,) marks the hits. ``recall`` is
    relative to ``n_positive`` (default: the number of hits), so items that should have been
    found but were not (e.g. positive images the latent fails to localise) lower the AP.
    Returns NaN when ``n_positive`` is 0.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    tp = np.asarray(is_tp, dtype=bool).ravel()
    if s.shape != tp.shape:
        raise ValueError(f"scores {s.shape} and is_tp {tp.shape} differ in shape")
    n_pos = int(tp.sum()) if n_positive is None else int(n_positive)
    if n_pos < tp.sum():
        raise ValueError(f"n_positive={n_pos} is smaller than the number of hits {int(tp.sum())}")
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, tp = s[order], tp[order]
    last_of_step = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    cum_tp = np.cumsum(tp)[last_of_step]
    precision = cum_tp / (last_of_step + 1)
    delta_recall = np.diff(np.r_[0, cum_tp]) / n_pos
    return float(np.sum(precision * delta_recall))


IOU_THRESHOLDS = (0.3, 0.5)
"""IoU thresholds of the box precision / recall scores."""


class PairScores(NamedTuple):
    """Localisation of one latent on one image under one box rule."""

    pred_boxes: np.ndarray  # (n, 4) int64
    max_iou: float
    hit: bool  # pointing game (independent of the box rule)
    matches: tuple[BoxMatch, ...]  # one per IOU_THRESHOLDS entry


def score_pair(heatmap_HW: np.ndarray, pred_boxes: np.ndarray, gt_boxes: object) -> PairScores:
    """Max IoU, pointing hit and box precision / recall at each of ``IOU_THRESHOLDS``."""
    return PairScores(np.asarray(pred_boxes, np.int64).reshape(-1, 4), max_iou(pred_boxes, gt_boxes),
                      pointing_hit(heatmap_HW, gt_boxes),
                      tuple(match_boxes(pred_boxes, gt_boxes, t) for t in IOU_THRESHOLDS))


class LatentSummary(NamedTuple):
    """One latent's localisation over the ground-truth images of a split, under one box rule."""

    n_images: int
    mean_max_iou: float
    hit_rate: float
    precision: tuple[float, ...]  # pooled over images: sum TP / sum predicted, per IOU_THRESHOLDS
    recall: tuple[float, ...]  # pooled: sum TP / sum ground-truth boxes, per IOU_THRESHOLDS
    mean_boxes: float  # predicted boxes per image
    ap: float  # see ``localization_ap``


def localization_ap(rank_scores: np.ndarray, positive_mask: np.ndarray, positive_max_iou: np.ndarray,
                    iou_threshold: float = 0.3) -> float:
    """AP of a latent as a detector of *localised* findings across the images of a split.

    ``rank_scores`` (n,): the latent's activation on every image of the split (e.g. its spatial
    mean), positives and negatives alike; images are ranked by it, highest first.
    ``positive_mask`` (n,): images with at least one ground-truth box; ``positive_max_iou``
    (n_positive,): the best IoU of the latent's predicted boxes on each of them, in order.
    An image is a true positive when it is a positive whose best box reaches ``iou_threshold``;
    recall is over all positives, so a latent that fires on the lesion images but boxes the whole
    breast (IoU well below the threshold) scores 0, and one that fires as strongly on normal
    images as on lesion images loses precision. See ``average_precision``.
    """
    positive_mask = np.asarray(positive_mask, bool)
    is_tp = np.zeros(len(positive_mask), bool)
    is_tp[positive_mask] = np.asarray(positive_max_iou, np.float64) >= iou_threshold
    return average_precision(rank_scores, is_tp, n_positive=int(positive_mask.sum()))


def summarize(pairs: list[PairScores], ap: float) -> LatentSummary:
    """Aggregate one latent's ``PairScores`` over images (precision / recall pooled)."""
    n = len(pairs)
    if n == 0:
        nan = float("nan")
        return LatentSummary(0, nan, nan, (nan,) * len(IOU_THRESHOLDS), (nan,) * len(IOU_THRESHOLDS), nan, ap)
    precision, recall = [], []
    for t in range(len(IOU_THRESHOLDS)):
        tp = sum(p.matches[t].n_true_positive for p in pairs)
        n_pred = sum(p.matches[t].n_pred for p in pairs)
        n_gt = sum(p.matches[t].n_gt for p in pairs)
        precision.append(tp / n_pred if n_pred else float("nan"))
        recall.append(tp / n_gt if n_gt else float("nan"))
    return LatentSummary(n, float(np.mean([p.max_iou for p in pairs])), float(np.mean([p.hit for p in pairs])),
                         tuple(precision), tuple(recall), float(np.mean([len(p.pred_boxes) for p in pairs])), ap)
