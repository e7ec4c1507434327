"""ksae.plots.axes: image mosaics."""

import numpy as np

import ksae.plots.axes
import ksae_helpers as kh


def test_mosaic_places_each_image_with_a_gap():
    images = np.arange(2 * 3 * 28 * 28, dtype=float).reshape(2, 3, 28, 28)
    out = ksae.plots.axes._mosaic(images)
    side = 28 + kh.MOSAIC_GAP
    assert out.shape == (2 * side, 3 * side)
    gap = kh.MOSAIC_GAP  # rows: gap first (room for titles), then the image; columns: image, then gap
    np.testing.assert_array_equal(out[side + gap:2 * side, 2 * side:2 * side + 28], images[1, 2])
    assert np.isnan(out[:gap]).all() and np.isnan(out[:, 28:side]).all()
    titled = ksae.plots.axes._mosaic(images, row_gap=5, col_gap=3)
    assert titled.shape == (2 * 33, 3 * 31) and np.isnan(titled[33:38]).all()
    np.testing.assert_array_equal(titled[38:66, 31:59], images[1, 1])
    assert np.isfinite(out).sum() == images.size
