"""Encoder input: SPEC §2 preprocessing and the seeded reference augmentation."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers.encoder_data import one_torch_thread  # noqa: F401 (autouse)

from extract.preprocess import AugmentConfig, ImageError, augment_grey, load_model_input, normalise, read_grey

OFF = AugmentConfig(p_hflip=0, p_vflip=0, p_affine=0, p_elastic=0)


def test_normalise_is_minmax_then_mammoclip_mean_std(tmp_path):
    grey = np.random.default_rng(0).integers(17, 230, size=(20, 12)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "a.png")
    x = load_model_input(tmp_path / "a.png", (20, 12))
    g = grey.astype(np.float64)
    expected = ((g - g.min()) / (g.max() - g.min()) - 0.3089279) / 0.25053555408335154
    assert x.shape == (3, 20, 12) and x.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(x[c], expected, rtol=1e-6, atol=1e-6)
    assert x[0].min() == pytest.approx(-0.3089279 / 0.25053555408335154, rel=1e-6)
    assert x[0].max() == pytest.approx((1 - 0.3089279) / 0.25053555408335154, rel=1e-6)
    np.testing.assert_array_equal(normalise(np.full((4, 4), 9.0)), np.full((3, 4, 4), -0.3089279 / 0.25053555408335154,
                                                                           dtype=np.float32))


def test_read_grey_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match=f"missing PNG: {tmp_path / 'x.png'}"):
        read_grey(tmp_path / "x.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match=f"corrupt PNG {tmp_path / 'bad.png'}: "):
        read_grey(tmp_path / "bad.png")
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match=r"small\.png is 5x7 \(HxW\) but the data set's images are 6x7"):
        read_grey(tmp_path / "small.png", (6, 7))


def test_augmentation_parts_against_direct_computations():
    grey = np.random.default_rng(1).uniform(0, 255, size=(40, 24)).astype(np.float32)
    np.testing.assert_array_equal(augment_grey(grey, 0, 0, OFF), grey)
    np.testing.assert_array_equal(augment_grey(grey, 0, 0, AugmentConfig(p_hflip=1, p_vflip=0, p_affine=0,
                                                                          p_elastic=0)), grey[:, ::-1])
    np.testing.assert_array_equal(augment_grey(grey, 0, 0, AugmentConfig(p_hflip=0, p_vflip=1, p_affine=0,
                                                                          p_elastic=0)), grey[::-1])
    identity_affine = AugmentConfig(p_hflip=0, p_vflip=0, p_affine=1, rotate_deg=0, translate_frac=0,
                                    scale=(1.0, 1.0), shear_deg=0, p_elastic=0)
    np.testing.assert_allclose(augment_grey(grey, 0, 0, identity_affine), grey, atol=1e-3)
    # scale 2 about the centre (cx, cy) = (12, 20): output (x, y) samples input (x / 2 + 6, y / 2 + 10),
    # an exact input pixel for even x, y
    odd = np.random.default_rng(3).uniform(0, 255, size=(41, 25)).astype(np.float32)
    zoom = AugmentConfig(p_hflip=0, p_vflip=0, p_affine=1, rotate_deg=0, translate_frac=0, scale=(2.0, 2.0),
                         shear_deg=0, p_elastic=0)
    out = augment_grey(odd, 0, 0, zoom)
    ys, xs = np.mgrid[0:41:2, 0:25:2]
    np.testing.assert_allclose(out[ys, xs], odd[ys // 2 + 10, xs // 2 + 6], atol=1e-2)  # float32 grid


def test_augmentation_is_seeded_per_image():
    grey = np.random.default_rng(2).uniform(0, 255, size=(48, 32)).astype(np.float32)
    a = augment_grey(grey, 7, 3)
    np.testing.assert_array_equal(a, augment_grey(grey, 7, 3))
    outs = [augment_grey(grey, 7, i) for i in range(8)]
    assert len({o.tobytes() for o in outs}) >= 6  # 16 flip/affine/elastic combinations, p = 0.5 each
    assert not all(np.array_equal(augment_grey(grey, s, 0), augment_grey(grey, 0, 0)) for s in range(1, 6))
    assert all(o.shape == grey.shape and o.dtype == np.float32 for o in outs)
