"""Masks onto pictures: the geometry back to the original image, the overlay, the figure."""
import numpy as np
import pytest

from lasnet_mmdet.visualization import (mask_to_image, masks_figure, overlay_mask,
                                        panel_figure)


def test_mask_to_image_undoes_padding_and_resize():
    # A 3x4 mask at stride 4 covers a 12x16 padded input; the resized image is 10x14 of it
    # (the rest is padding) and the original image twice that size.
    mask = np.arange(12, dtype=np.float32).reshape(3, 4)
    on_image = mask_to_image(mask, 4, img_shape=(10, 14), ori_shape=(20, 28))
    assert on_image.shape == (20, 28)
    for y, x in [(0, 0), (7, 7), (8, 8), (19, 27), (12, 20)]:
        # original pixel -> resized pixel (// 2) -> mask pixel (// 4)
        assert on_image[y, x] == mask[y // 2 // 4, x // 2 // 4], (y, x)


def test_mask_to_image_rejects_a_mask_too_small():
    with pytest.raises(ValueError, match='does not cover'):
        mask_to_image(np.ones((2, 2)), 4, img_shape=(12, 8), ori_shape=(12, 8))


def test_overlay_separates_executed_from_skipped():
    image = np.full((4, 4, 3), 128, np.uint8)
    mask = np.zeros((4, 4))
    mask[:, 2:] = 1
    out = overlay_mask(image, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (out[:, :2] == out[0, 0]).all() and (out[:, 2:] == out[0, 3]).all()
    assert out[0, 3].astype(int).sum() > out[0, 0].astype(int).sum() + 100  # bright vs dark
    with pytest.raises(ValueError, match='differ in size'):
        overlay_mask(image, np.ones((3, 4)))


def test_masks_figure_titles_carry_the_mask_rates():
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    block = np.zeros((16, 24), np.float32)
    block[:4, :6] = 1  # 1/16 of the padded input
    stage = np.full((2, 3), 0.5, np.float32)
    figure, rates = masks_figure(image, {'layer1.0': (block, 4), 'layer4': (stage, 32)},
                                 img_shape=(64, 96), ori_shape=(64, 96), detections=image)
    assert rates == {'layer1.0': pytest.approx(1 / 16), 'layer4': pytest.approx(0.5)}
    assert figure.dtype == np.uint8 and figure.ndim == 3 and figure.shape[2] == 3
    assert figure.shape[0] >= 256 and figure.shape[1] > 3 * 256  # three panels at 256 px
    assert figure.std() > 10  # something was drawn
    # panels at the height of a detections picture drawn larger (legible labels)
    drawn = np.kron(image, np.ones((6, 6, 1), np.uint8))  # 384 px high
    figure, _ = masks_figure(image, {'layer4': (stage, 32)}, img_shape=(64, 96),
                             ori_shape=(64, 96), detections=drawn)
    assert 384 < figure.shape[0] < 384 + 40  # (and the titles)


def test_panel_figure_needs_one_title_per_panel():
    with pytest.raises(ValueError, match='one title per panel'):
        panel_figure([np.zeros((8, 8, 3), np.uint8)], ['a', 'b'])
