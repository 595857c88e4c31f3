import io

import numpy as np
import pytest
from PIL import Image

from spote.images import BadImage, check_choices, check_question, corrupt, load_image


def _png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_empty_question():
    with pytest.raises(ValueError, match="empty question"):
        check_question("   ")


def test_choices_parsing():
    assert check_choices("yes, no") == ("yes", "no")
    with pytest.raises(ValueError):
        check_choices("yes")
    with pytest.raises(ValueError, match="duplicate"):
        check_choices(["a", "a"])


def test_zero_size_image():
    with pytest.raises(BadImage, match="zero-size"):
        load_image(Image.new("RGB", (0, 5)))


def test_non_rgb_modes_become_rgb():
    for mode in ("L", "P", "RGBA", "CMYK", "LA", "1"):
        img = load_image(_png(Image.new(mode, (8, 6)) if mode != "CMYK" else Image.new(mode, (8, 6))) if mode != "CMYK"
                         else Image.new(mode, (8, 6)))
        assert img.mode == "RGB" and img.size == (8, 6)


def test_16_bit_image_is_stretched_not_clipped():
    arr = np.zeros((4, 4), np.uint16)
    arr[0, 0], arr[1, 1] = 1000, 3000
    img = load_image(_png(Image.fromarray(arr)))
    out = np.asarray(img)
    assert img.mode == "RGB" and out[1, 1, 0] == 255 and out[0, 0, 0] == 85


def test_decompression_bomb_refused_before_decoding():
    big = Image.new("L", (5000, 5000))
    data = _png(big)
    with pytest.raises(BadImage, match="decompression-bomb"):
        load_image(data, max_pixels=1_000_000)


def test_corrupt_and_empty_files():
    with pytest.raises(BadImage):
        load_image(b"not an image at all")
    with pytest.raises(BadImage, match="empty"):
        load_image(b"")
    with pytest.raises(BadImage):
        load_image(_png(Image.new("RGB", (50, 50)))[:60])  # truncated
    with pytest.raises(BadImage, match="no such file"):
        load_image("/nonexistent/x.png")


def test_corruptions_change_pixels():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    for kind in ("noise", "blur", "jpeg"):
        assert np.abs(np.asarray(corrupt(img, kind), int) - np.asarray(img, int)).mean() > 1
    assert corrupt(img, "none") is img
