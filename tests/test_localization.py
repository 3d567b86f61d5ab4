"""Box extraction, IoU, pointing game, box precision/recall and AP on hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score

from mammosae_jax.viz.localization import (average_precision, box_iou, boxes_from_mask, clip_boxes, fill_holes,
                                       match_boxes, max_iou, percentile_boxes, pointing_hit,
                                       threshold_boxes)


def gaussian(h: int, w: int, cy: float, cx: float, sigma: float, peak: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return peak * np.exp(-((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2) / (2 * sigma ** 2))


def bbox_of(mask: np.ndarray) -> list[int]:
    rows, cols = np.nonzero(mask)
    return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


# ---------------------------------------------------------------- IoU

def test_iou_hand_cases():
    a = [[0, 0, 10, 10]]
    b = [[5, 5, 15, 15], [0, 0, 10, 10], [10, 0, 20, 10], [20, 20, 30, 30], [0, 0, 5, 10]]
    iou = box_iou(a, b)
    np.testing.assert_allclose(iou, [[25 / 175, 1.0, 0.0, 0.0, 0.5]])
    assert box_iou([], b).shape == (0, 5)
    assert max_iou([], b) == 0.0
    assert max_iou(a, []) == 0.0
    assert max_iou([[0, 0, 912, 1520], [2, 2, 8, 8]], a) == pytest.approx(36 / 100)


def test_iou_is_symmetric_and_bounded():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, size=(20, 2))
    boxes = np.c_[xy, xy + rng.uniform(1, 30, size=(20, 2))]
    iou = box_iou(boxes, boxes)
    np.testing.assert_allclose(iou, iou.T)
    np.testing.assert_allclose(np.diag(iou), 1.0)
    assert (iou >= 0).all() and (iou <= 1 + 1e-12).all()


def test_clip_boxes_to_image():
    clipped = clip_boxes([[-1.04, -0.32, 68.38, 142.8], [900, 1500, 950, 1600], [-20, 5, -1, 9]],
                         (1520, 912))
    np.testing.assert_allclose(clipped, [[0, 0, 68.38, 142.8], [900, 1500, 912, 1520]])


# ---------------------------------------------------------------- boxes from masks and maps

def test_boxes_from_mask_regions_holes_and_min_area():
    mask = np.zeros((30, 40), bool)
    mask[2:6, 3:8] = True          # 4 x 5 block -> [3, 2, 8, 6]
    mask[6, 8] = True              # diagonal neighbour: 8-connected, same region -> x2 9, y2 7
    mask[10:20, 10:20] = True      # ring ...
    mask[12:18, 12:18] = False
    mask[14:16, 14:16] = True      # ... with an island inside its hole: one external contour
    mask[25:28, 30:33] = True      # 3 x 3 = 9 px^2 < 10: dropped
    mask[25:27, 0:5] = True        # 2 x 5 = 10 px^2: kept
    boxes = boxes_from_mask(mask)
    assert boxes.dtype == np.int64
    assert boxes.tolist() == [[3, 2, 9, 7], [10, 10, 20, 20], [0, 25, 5, 27]]
    assert boxes_from_mask(np.zeros((5, 5), bool)).shape == (0, 4)


def test_fill_holes_matches_scipy():
    rng = np.random.default_rng(4)
    for density in (0.3, 0.5, 0.7):
        mask = rng.random((40, 30)) < density
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_threshold_boxes_find_known_blobs():
    h, w = 120, 80
    strong = gaussian(h, w, cy=30, cx=20, sigma=4, peak=10.0)
    weak = gaussian(h, w, cy=90, cx=60, sigma=5, peak=5.0)      # 5 > 0.3 * 10: kept
    faint = gaussian(h, w, cy=90, cx=15, sigma=5, peak=2.0)     # 2 < 0.3 * 10: invisible
    heat = strong + weak + faint
    boxes = threshold_boxes(heat, 0.3)
    mask = heat > 3.0
    top, bottom = mask.copy(), mask.copy()
    top[60:] = False
    bottom[:60] = False
    assert boxes.tolist() == [bbox_of(top), bbox_of(bottom)]
    # the strong blob's box is the disc exp(-r^2 / 2 sigma^2) > 0.3 around (20, 30)
    radius = 4 * np.sqrt(2 * np.log(1 / 0.3))
    x1, y1, x2, y2 = boxes[0]
    assert abs((x2 - x1) - 2 * radius) <= 2 and abs((y2 - y1) - 2 * radius) <= 2
    # a lower threshold reaches the faint blob too
    assert len(threshold_boxes(heat, 0.1)) == 3


def test_flat_and_silent_maps():
    assert threshold_boxes(np.zeros((20, 10))).shape == (0, 4)              # never fires: no box
    assert threshold_boxes(-np.ones((20, 10))).shape == (0, 4)
    assert threshold_boxes(np.full((20, 10), 2.5)).tolist() == [[0, 0, 10, 20]]  # whole image
    assert percentile_boxes(np.full((20, 10), 2.5)).shape == (0, 4)         # nothing above itself
    assert percentile_boxes(np.zeros((20, 10))).shape == (0, 4)


def test_percentile_boxes_keep_the_top_pixels():
    heat = gaussian(100, 60, cy=40, cx=30, sigma=6, peak=1.0)
    boxes = percentile_boxes(heat, 95)
    cut = np.percentile(heat, 95)
    assert boxes.tolist() == [bbox_of(heat > cut)]
    x1, y1, x2, y2 = boxes[0]
    assert (x2 - x1) * (y2 - y1) >= 0.05 * heat.size  # the top 5 % of pixels fit in the box


# ---------------------------------------------------------------- pointing game

def test_pointing_hit():
    heat = np.zeros((50, 40))
    heat[20, 10] = 3.0  # pixel centre (10.5, 20.5)
    assert pointing_hit(heat, [[5, 15, 15, 25]])
    assert pointing_hit(heat, [[30, 30, 39, 49], [10.5, 20.5, 11, 21]])  # centre on the edge counts
    assert not pointing_hit(heat, [[11, 15, 15, 25]])
    assert not pointing_hit(heat, [])
    assert not pointing_hit(np.zeros((50, 40)), [[0, 0, 40, 50]])            # silent map
    flat = np.ones((50, 40))
    assert not pointing_hit(flat, [[5, 15, 15, 25]])                         # plateau: no point
    assert pointing_hit(flat, [[0, 0, 40, 50]])


# ---------------------------------------------------------------- precision / recall

def test_match_boxes_one_to_one():
    gt = [[0, 0, 10, 10], [50, 50, 60, 60]]
    pred = [[0, 0, 10, 20],          # IoU 0.5 with gt 0
            [0, 0, 10, 25],          # IoU 0.4 with gt 0, which is already taken
            [100, 100, 110, 110]]    # nothing
    m = match_boxes(pred, gt, 0.3)
    assert (m.n_true_positive, m.n_pred, m.n_gt) == (1, 3, 2)
    assert m.precision == pytest.approx(1 / 3) and m.recall == pytest.approx(1 / 2)
    m = match_boxes(pred, gt, 0.5)
    assert m.n_true_positive == 1
    m = match_boxes(pred, gt, 0.51)
    assert m.n_true_positive == 0 and m.precision == 0.0 and m.recall == 0.0
    m = match_boxes([], gt, 0.3)
    assert np.isnan(m.precision) and m.recall == 0.0
    m = match_boxes(pred, [], 0.3)
    assert m.precision == 0.0 and np.isnan(m.recall)


def test_whole_image_latent_scores_badly():
    """A latent lighting the whole image gives the whole-image box: no IoU, no hit, no AP."""
    h, w = 1520, 912
    lesion = [[400.0, 600.0, 520.0, 730.0]]
    rng = np.random.default_rng(1)
    broad = 5.0 + 0.01 * rng.random((h, w))    # everywhere ~ its maximum
    pred = threshold_boxes(broad, 0.3)
    assert pred.tolist() == [[0, 0, w, h]]
    assert max_iou(pred, lesion) < 0.02
    assert match_boxes(pred, lesion, 0.3).n_true_positive == 0
    assert not pointing_hit(np.full((h, w), 5.0), lesion)
    # a focal latent on the same image localises it
    focal = gaussian(h, w, cy=665, cx=460, sigma=30, peak=5.0)
    assert max_iou(threshold_boxes(focal, 0.3), lesion) > 0.5
    assert pointing_hit(focal, lesion)
    # across 6 positive images the whole-image latent never hits: AP 0 however it ranks them
    assert average_precision(np.arange(6.0), np.zeros(6, bool), n_positive=6) == 0.0


# ---------------------------------------------------------------- average precision

def test_average_precision_hand_case():
    # ranked: hit, miss, hit, miss; 3 positive images exist, so one is never found
    ap = average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], n_positive=3)
    assert ap == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # a tie is one threshold step: precision 1/2 when the hit and the miss share a score
    assert average_precision([1.0, 1.0], [0, 1]) == pytest.approx(0.5)
    assert average_precision([1.0, 1.0], [1, 0]) == pytest.approx(0.5)
    assert np.isnan(average_precision([1.0, 2.0], [0, 0]))
    with pytest.raises(ValueError, match="smaller than the number of hits"):
        average_precision([1.0, 2.0], [1, 1], n_positive=1)


def test_average_precision_matches_sklearn_rescaled():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n = int(rng.integers(5, 40))
        scores = rng.integers(0, 6, n).astype(float)  # many ties
        hits = rng.random(n) < 0.4
        if not hits.any():
            continue
        n_pos = int(hits.sum()) + int(rng.integers(0, 4))
        expected = average_precision_score(hits, scores) * hits.sum() / n_pos
        assert average_precision(scores, hits, n_positive=n_pos) == pytest.approx(expected)
