import numpy as np
from PIL import Image, ImageDraw

import pytest

from spote.saliency import salient_centre, saliency_cells, saliency_centroid, saliency_map, saliency_peaks


def test_small_coloured_object_on_texture_is_the_most_salient_cell():
    rng = np.random.default_rng(0)
    base = (rng.normal(128, 12, (600, 900, 1)) * np.ones((1, 1, 3))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(base)
    ImageDraw.Draw(img).rectangle([700, 420, 712, 440], fill=(220, 30, 30))
    cells = saliency_cells(img, 16)
    j, i = np.unravel_index(cells.argmax(), cells.shape)
    assert (j, i) == (int(430 / 600 * 16), int(706 / 900 * 16))
    assert cells.max() > 3 * np.median(cells)


def test_flat_image_has_no_peak():
    sal = saliency_map(Image.new("RGB", (300, 200), (90, 90, 90)))
    assert sal.shape == (341, 512) and float(sal.max()) < 1e-6


def test_strongest_peak_is_the_small_object_in_source_pixels():
    rng = np.random.default_rng(1)
    base = (rng.normal(128, 12, (700, 1000, 1)) * np.ones((1, 1, 3))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(base)
    ImageDraw.Draw(img).rectangle([150, 520, 166, 536], fill=(30, 30, 220))
    peaks = saliency_peaks(saliency_map(img), img.size, 4)
    assert len(peaks) == 4
    x, y = peaks[0]
    assert abs(x - 158) < 12 and abs(y - 528) < 12  # map pixels are ~4 source pixels here
    assert saliency_peaks(saliency_map(img), img.size, 0) == []


def test_centroid_sits_on_a_large_salient_box_off_centre():
    rng = np.random.default_rng(2)
    base = (rng.normal(200, 10, (640, 720, 1)) * np.ones((1, 1, 3))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(base)
    d = ImageDraw.Draw(img)
    d.rectangle([80, 300, 400, 620], fill=(255, 255, 255), outline=(215, 25, 25), width=24)
    d.rectangle([200, 380, 250, 540], fill=(10, 10, 10))  # a thick glyph stroke inside the box
    x, y = saliency_centroid(saliency_map(img), img.size)
    assert 80 < x < 400 and 300 < y < 620  # inside the box, not the image's middle (360, 320)
    assert abs(x - 360) > 40 or abs(y - 320) > 40


def test_peaks_on_a_flat_topped_maximum_are_one_peak_and_kept_apart():
    img = Image.new("RGB", (640, 480), (128, 128, 128))
    d = ImageDraw.Draw(img)
    for box, colour in (([4, 4, 6, 6], (250, 20, 20)), ([26, 4, 28, 6], (20, 20, 250)), ([400, 300, 402, 302], (20, 250, 20))):
        d.rectangle(box, fill=colour)
    sal = saliency_map(img)
    peaks = saliency_peaks(sal, img.size, 8)
    sep = 6 / 256 * max(sal.shape) * img.width / sal.shape[1]  # the minimum separation, in source pixels
    for i, (ax, ay) in enumerate(peaks):
        for bx, by in peaks[i + 1:]:
            assert max(abs(ax - bx), abs(ay - by)) > sep - 1e-6
    assert any(abs(x - 401) < 4 and abs(y - 301) < 4 for x, y in peaks)  # each dot still has its peak
    assert any(abs(x - 5) < 4 for x, _ in peaks) and any(abs(x - 27) < 4 for x, _ in peaks)


def _page_with_fields():
    """A grey page of faint noise with two red-outlined fields: one at (500-620, 300-340), a larger one far away."""
    rng = np.random.default_rng(3)
    base = (rng.normal(235, 4, (600, 900, 1)) * np.ones((1, 1, 3))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(base)
    d = ImageDraw.Draw(img)
    d.rectangle([500, 300, 620, 340], outline=(215, 25, 25), width=3)
    d.rectangle([40, 40, 300, 200], outline=(215, 25, 25), width=6)
    return img


def test_salient_centre_is_the_field_inside_the_region_not_the_stronger_one_outside():
    img = _page_with_fields()
    sal = saliency_map(img)
    x, y = salient_centre(sal, img.size, (470, 260, 610, 400))  # holds most of the small field, off its centre
    assert abs(x - 560) < 12 and abs(y - 320) < 8
    far = salient_centre(sal, img.size, (0, 0, 900, 600))  # the whole page: the larger, thicker field wins
    assert far[0] < 320 and far[1] < 220
    assert salient_centre(sal, img.size, (700, 450, 850, 580)) is not None  # faint noise is still some salience
    flat = saliency_map(Image.new("RGB", (300, 200), (90, 90, 90)))
    assert salient_centre(flat, (300, 200), (0, 0, 300, 200)) is None
    assert salient_centre(sal, img.size, (-50, -50, -10, -10)) is None  # a region off the image
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="top must be a share"):
            salient_centre(sal, img.size, (0, 0, 100, 100), top=bad)
