import io

import numpy as np
import pytest
import tifffile
from PIL import Image, UnidentifiedImageError

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
    with pytest.raises(ValueError, match="empty choice"):
        check_choices("yes,,no")
    with pytest.raises(ValueError, match="empty choice"):
        check_choices(["yes", " ", "no"])
    with pytest.raises(ValueError, match="must be a list or a comma-separated string, got a dict"):
        check_choices({"a": 1, "b": 2})


def test_zero_size_image():
    with pytest.raises(BadImage, match="zero-size"):
        load_image(Image.new("RGB", (0, 5)))


def test_non_rgb_modes_become_rgb():
    for mode in ("L", "P", "RGBA", "CMYK", "LA", "1"):
        img = load_image(_png(Image.new(mode, (8, 6)) if mode != "CMYK" else Image.new(mode, (8, 6))) if mode != "CMYK"
                         else Image.new(mode, (8, 6)))
        assert img.mode == "RGB" and img.size == (8, 6)


def test_16_bit_image_is_stretched_not_clipped():
    arr = np.tile(np.linspace(0, 4000, 64, dtype=np.uint16), (64, 1))
    out = np.asarray(load_image(_png(Image.fromarray(arr))))
    assert out.dtype == np.uint8 and out[..., 0].min() == 0 and out[..., 0].max() == 255
    assert abs(out[..., 0].mean() - 127.5) < 3


def _twelve_bit_scene(rng, channels=None):
    """A mid-grey 12-bit scene (values ~1500-2500 of 0-4095) with one saturated 16-bit pixel."""
    shape = (96, 128) if channels is None else (96, 128, channels)
    arr = rng.normal(2000, 250, shape).clip(0, 4095).astype(np.uint16)
    arr[5, 7] = 65535
    return arr


def test_one_hot_pixel_cannot_darken_a_12_bit_grey_png():
    arr = _twelve_bit_scene(np.random.default_rng(0))
    out = np.asarray(load_image(_png(Image.fromarray(arr))))[..., 0]
    assert 100 < out.mean() < 155, out.mean()  # min-max over 0-65535 gave ~8
    assert out[5, 7] == 255  # the hot pixel is clipped, not the range


def test_one_hot_pixel_cannot_darken_a_12_bit_colour_png(tmp_path):
    import rasterio

    arr = _twelve_bit_scene(np.random.default_rng(1), channels=3)
    with rasterio.Env(), rasterio.open(tmp_path / "rgb16.png", "w", driver="PNG", width=128, height=96, count=3,
                                       dtype="uint16") as ds:
        ds.write(np.moveaxis(arr, -1, 0))
    out = np.asarray(load_image(tmp_path / "rgb16.png"))
    assert 100 < out.mean() < 155, out.mean()  # Pillow alone keeps the top byte: mean ~7 of 255


@pytest.mark.parametrize("dtype, opaque", [(np.uint16, 65535), (np.float32, 1.0)])
def test_an_opaque_alpha_channel_changes_no_pixel(tmp_path, dtype, opaque):
    """Alpha is opacity on its type's full range, not data to stretch: a constant, opaque one must not
    turn the image half-transparent grey (it did, stretched to 128)."""
    import rasterio

    rgb = _twelve_bit_scene(np.random.default_rng(2), channels=3).astype(dtype)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], opaque, dtype)])
    assert np.array_equal(np.asarray(load_image(rgba)), np.asarray(load_image(rgb)))
    half = rgba.copy()
    half[..., 3] = opaque / 2 if dtype == np.float32 else 32768
    assert np.abs(np.asarray(load_image(half), float) - (np.asarray(load_image(rgb), float) + 255) / 2).max() <= 1
    if dtype == np.uint16:  # a 16-bit RGBA PNG, as a file: decoded at full depth, the same pixels
        with rasterio.Env(), rasterio.open(tmp_path / "rgba16.png", "w", driver="PNG", width=128, height=96, count=4,
                                           dtype="uint16") as ds:
            ds.write(np.moveaxis(rgba, -1, 0))
        assert np.array_equal(np.asarray(load_image(tmp_path / "rgba16.png")), np.asarray(load_image(rgb)))


def test_every_frame_of_a_16_bit_colour_tiff_is_decoded_as_the_first(tmp_path):
    """A multi-page 16-bit colour scan: Pillow keeps a frame's top byte (12-bit data: 0-15 of 255), so
    frames after the first must go through the same full-depth read and stretch."""
    import tifffile

    rgb = _twelve_bit_scene(np.random.default_rng(3), channels=3)
    with tifffile.TiffWriter(tmp_path / "scan.tif") as tw:
        for page in (rgb, rgb[::-1], rgb):
            tw.write(page, photometric="rgb")
    first = np.asarray(load_image(tmp_path / "scan.tif"))
    assert 100 < first.mean() < 155
    assert np.array_equal(np.asarray(load_image(tmp_path / "scan.tif", frame=1)), first[::-1])
    assert np.array_equal(np.asarray(load_image((tmp_path / "scan.tif").read_bytes(), frame=2)), first)
    with pytest.raises(BadImage, match="page 3 of 3: no such frame"):
        load_image(tmp_path / "scan.tif", frame=3)
    with pytest.raises(BadImage, match="frame -1: frames are counted from 0"):
        load_image(tmp_path / "scan.tif", frame=-1)


def test_a_multi_page_tiff_cut_short_cannot_be_counted_as_one_clean_page(tmp_path):
    from spote.images import frame_count

    page = Image.fromarray(_twelve_bit_scene(np.random.default_rng(4), channels=3).astype(np.uint8))
    buf = io.BytesIO()
    page.save(buf, "TIFF", save_all=True, append_images=[page.rotate(90), page.rotate(180)])
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert frame_count(im) == 3
    with Image.open(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2])) as im:
        with pytest.raises(BadImage, match="corrupt or truncated image: its pages cannot be counted"):
            frame_count(im)


def test_float_images_ignore_nan_and_inf():
    rng = np.random.default_rng(2)
    arr = rng.normal(0.2, 0.05, (64, 64)).astype(np.float32)
    arr[0, :8] = np.nan
    arr[1, :8] = np.inf
    arr[2, :8] = -np.inf
    arr[3, 0] = 1e30
    out = np.asarray(load_image(arr))[..., 0]
    assert 100 < out[4:].mean() < 155
    assert (out[0, :8] == NEUTRAL_FILL).all() and (out[1, :8] == NEUTRAL_FILL).all()
    tif = io.BytesIO()
    Image.fromarray(arr, "F").save(tif, "TIFF")
    assert np.array_equal(np.asarray(load_image(tif.getvalue()))[..., 0], out)


def test_stretch_percentiles_and_degenerate_images():
    lo, hi = STRETCH_PERCENTILES
    assert 0 < lo < 5 and 95 < hi < 100
    sparse = np.zeros((50, 50), np.uint16)
    sparse[10, 10] = 900  # a mostly-empty mask keeps its marks (percentiles coincide -> min/max)
    out = np.asarray(load_image(sparse))[..., 0]
    assert out[10, 10] == 255 and out[0, 0] == 0
    assert (np.asarray(load_image(np.full((8, 8), 7.0)))[..., 0] == 128).all()  # constant -> mid grey
    assert (np.asarray(load_image(np.full((8, 8), np.nan)))[..., 0] == NEUTRAL_FILL).all()


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


def test_a_pdf_is_named_as_a_pdf_with_advice_that_fits_its_name(tmp_path):
    """A PDF said "not an image: the file is a PDF; name it .pdf", even when it was named .pdf. Under an
    image's name (as pipelines.documents, which reads PDFs by their name, passes bytes) the name is the hint."""
    Image.new("RGB", (40, 30), "white").save(tmp_path / "page.pdf")
    (tmp_path / "scan.png").write_bytes((tmp_path / "page.pdf").read_bytes())
    with pytest.raises(BadImage) as named:
        load_image(tmp_path / "page.pdf")
    assert str(named.value) == ("the file is a PDF, not an image: render the page as an image first, or run "
                                "pipelines.documents, which reads PDFs")
    assert (named.value.kind, named.value.advice) == ("a PDF", str(named.value).split(": ", 1)[1])
    for source in (tmp_path / "scan.png", (tmp_path / "page.pdf").read_bytes()):
        with pytest.raises(BadImage, match=r"^the file is a PDF, not an image: .*which reads PDFs named \.pdf$"):
            load_image(source)


def _zip(members: dict) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    return buf.getvalue()


@pytest.mark.parametrize("data, kind", [
    (_zip({"[Content_Types].xml": "<Types/>", "word/document.xml": "<w:document/>"}), "a Word document (.docx)"),
    (_zip({"[Content_Types].xml": "<Types/>", "xl/workbook.xml": "<workbook/>"}), "an Excel workbook (.xlsx)"),
    (_zip({"mimetype": "application/vnd.oasis.opendocument.text", "content.xml": "<x/>"}),
     "an OpenDocument file (.odt, .ods, .odp)"),
    (_zip({"a.txt": "hello"}), "a ZIP archive"),
    (b"PK\x03\x04 cut short", "a ZIP archive"),
    (b"\n  <!DOCTYPE html>\n<html><body><img src=x.png></body></html>", "an HTML page"),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "an SVG drawing"),
], ids=["docx", "xlsx", "odt", "zip", "zip cut short", "html", "svg"])
def test_other_known_formats_say_what_they_are_and_what_to_do(data, kind):
    """An Office document, a web page or a drawing is no broken image: the message names what it is, and what
    to give instead (not a name that would not help)."""
    with pytest.raises(BadImage) as err:
        load_image(data)
    assert err.value.kind == kind and str(err.value).startswith(f"the file is {kind}, not an image: ")
    assert err.value.advice and "name it" not in str(err.value)


def _tiff(arr, **kw) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("data, says", [
    (_tiff(np.zeros((6, 16, 16), np.int16), photometric="minisblack", planarconfig="separate"),
     "a TIFF of 6 bands of int16, which is no single image: save 1 or 3 of its bands first"),
    (_tiff(np.zeros((16, 16), np.complex64)),
     "a TIFF of 1 band of complex64: complex values (e.g. SAR SLC) are no image; convert them to amplitude"),
    (b"II*\x00" + b"\x07" * 50, "corrupt or truncated image: a TIFF whose first page cannot be read"),
], ids=["6 bands", "complex", "damaged header"])
def test_a_tiff_pillow_cannot_decode_says_what_it_holds(data, says):
    """A GeoTIFF-like raster (many bands, 64-bit or complex samples) was "unknown or broken format"."""
    with pytest.raises(BadImage) as err:
        load_image(data)
    assert str(err.value).startswith(says) and err.value.kind is None


def test_a_folder_or_an_array_without_pixel_values_is_a_bad_image(tmp_path):
    with pytest.raises(BadImage, match=f"^{tmp_path} is a folder, not an image file$"):
        load_image(tmp_path)
    for arr in (np.ones((8, 8), np.complex64), np.array([["a", "b"], ["c", "d"]]), np.empty((8, 8), object)):
        with pytest.raises(BadImage, match=f"unsupported array dtype {arr.dtype}"):
            load_image(arr)


def test_corruptions_change_pixels():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    for kind in ("noise", "blur", "jpeg"):
        assert np.abs(np.asarray(corrupt(img, kind), int) - np.asarray(img, int)).mean() > 1
    assert corrupt(img, "none") is img


# ------------------------------------------------------------------ EXIF orientation: what a viewer shows
from PIL import ImageOps  # noqa: E402

from spote.images import (  # noqa: E402
    NEUTRAL_FILL, STRETCH_PERCENTILES, exif_orientation, stored_window, upright_array, upright_size,
)

# the transpose that turns an upright picture into what a camera stores under each orientation
_STORE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}


def _upright_picture(w=48, h=30):
    """Asymmetric content, so any wrong flip or rotation shows."""
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // w, yy * 255 // h, (xx + 2 * yy) * 255 // (w + 2 * h)], -1).astype(np.uint8)
    arr[:8, :12] = (255, 0, 0)  # a red corner top-left
    return Image.fromarray(arr)


def _stored_with_orientation(upright, orientation, fmt):
    stored = upright.transpose(_STORE[orientation]) if orientation in _STORE else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_lossless_files_with_any_exif_orientation_load_upright(orientation, fmt):
    upright = _upright_picture()
    data = _stored_with_orientation(upright, orientation, fmt)
    assert exif_orientation(Image.open(io.BytesIO(data))) == orientation
    got = load_image(data)
    assert got.size == upright.size
    assert np.array_equal(np.asarray(got), np.asarray(upright))
    # an opened (not yet transposed) PIL image is turned upright too; a transposed one is left alone
    assert np.array_equal(np.asarray(load_image(Image.open(io.BytesIO(data)))), np.asarray(upright))
    assert np.array_equal(np.asarray(load_image(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))),
                          np.asarray(upright))


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "1", "LA"])
def test_tiff_scans_of_every_mode_load_upright(mode, orientation, tmp_path):
    """Pillow 13 turns a TIFF upright itself while it loads, and scrambled grey, palette, RGBA, CMYK and
    16-bit pages of orientations 5-8 into stripes (a portrait scan); every mode now loads as a viewer shows it."""
    stored = np.zeros((30, 48), np.uint8)
    stored[2:10, 3:20] = 255                                   # a white block near the stored top-left
    im = Image.fromarray(stored.astype(np.uint16) * 257) if mode == "I;16" else Image.fromarray(stored).convert(mode)
    im.save(tmp_path / "scan.tif", tiffinfo={0x0112: orientation})
    want = np.asarray(Image.fromarray(stored).transpose(_UPRIGHT[orientation]))
    for source in (tmp_path / "scan.tif", Image.open(tmp_path / "scan.tif")):   # a path, and an opened image
        got = np.asarray(load_image(source).convert("L"))
        assert got.shape == want.shape and np.array_equal(got > 128, want > 128), (mode, orientation)


# the transpose that turns what is stored under each orientation upright (ImageOps.exif_transpose's)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint16])
def test_tiffs_pillow_cannot_open_are_turned_upright_too(dtype, tmp_path):
    """A float or 32-bit RGB TIFF is read with tifffile, which ignored its Orientation tag."""
    import tifffile

    stored = np.zeros((30, 48, 3), dtype)
    stored[2:10, 3:20] = 200
    tifffile.imwrite(tmp_path / "f.tif", stored, photometric="rgb", extratags=[(0x0112, "H", 1, 6, True)])
    got = np.asarray(load_image(tmp_path / "f.tif").convert("L"))
    want = np.asarray(Image.fromarray((stored[..., 0] > 0).astype(np.uint8) * 255).transpose(_UPRIGHT[6]))
    assert got.shape == want.shape == (48, 30) and np.array_equal(got > 128, want > 128)


def test_a_tiffs_pages_are_its_full_images_whatever_their_samples(tmp_path):
    """Pillow counted no page past one it cannot decode (a float page first: 1 page of 3; a float page
    second: the file refused as cut short), and counted a scanner's thumbnail (NewSubfileType 1) and an MPO
    photo's preview as pages."""
    import tifffile

    from spote.images import page_count

    page = np.full((40, 30, 3), 255, np.uint8)
    page[5:15, 5:15] = 0
    with tifffile.TiffWriter(tmp_path / "float_first.tif") as tw:
        tw.write(page.astype(np.float32), photometric="rgb")
        tw.write(page, photometric="rgb")
        tw.write(page[::-1].copy(), photometric="rgb")
    with tifffile.TiffWriter(tmp_path / "float_second.tif") as tw:
        tw.write(page, photometric="rgb")
        tw.write(page.astype(np.float32), photometric="rgb", extratags=[(0x0112, "H", 1, 3, True)])
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tw:
        tw.write(page, photometric="rgb")
        tw.write(page[::4, ::4].copy(), photometric="rgb", subfiletype=1)   # a reduced-resolution image
        tw.write(page[::-1].copy(), photometric="rgb")
    for name, n in (("float_first.tif", 3), ("float_second.tif", 2), ("thumb.tif", 2)):
        data = (tmp_path / name).read_bytes()
        assert page_count(data) == n, name
        pages = [np.asarray(load_image(data, frame=k)) for k in range(n)]
        assert all(p.shape == (40, 30, 3) for p in pages), name    # never the 10 x 8 thumbnail
        with pytest.raises(BadImage, match=f"page {n} of {n}: no such frame"):
            load_image(data, frame=n)
    first, second = (load_image((tmp_path / "float_second.tif").read_bytes(), frame=k) for k in (0, 1))
    assert np.array_equal(np.asarray(second), np.asarray(first)[::-1, ::-1])   # page 1's own orientation (3)
    assert np.array_equal(np.asarray(load_image((tmp_path / "thumb.tif").read_bytes(), frame=1)), page[::-1])
    buf = io.BytesIO()
    Image.new("RGB", (60, 40), "white").save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", (30, 20))])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO" and page_count(buf.getvalue()) == 1
    with pytest.raises(BadImage, match="page 1 of 1: no such frame"):
        load_image(buf.getvalue(), frame=1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_phone_jpeg_with_any_orientation_is_what_a_viewer_shows(orientation, tmp_path):
    upright = _upright_picture(64, 40)
    data = _stored_with_orientation(upright, orientation, "JPEG")
    (tmp_path / "photo.jpg").write_bytes(data)
    got = load_image(tmp_path / "photo.jpg")
    viewer = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(np.asarray(got), np.asarray(viewer))
    assert got.size == upright.size
    diff = np.abs(np.asarray(got, int) - np.asarray(upright, int)).mean()
    assert diff < 12  # JPEG loss only; a wrong rotation would be ~80
    assert np.asarray(got)[:6, :10, 0].mean() > 200  # the red corner is top-left, where the viewer shows it


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_windows_map_to_stored_windows(orientation):
    """The tiler's arithmetic: the stored window of an upright window, made upright, is the upright crop."""
    upright = _upright_picture(50, 31)
    stored = upright.transpose(_STORE[orientation]) if orientation in _STORE else upright
    sw, sh = stored.size
    assert upright_size(sw, sh, orientation) == upright.size
    assert np.array_equal(upright_array(np.asarray(stored), orientation), np.asarray(upright))
    for (c, r, w, h) in [(0, 0, 20, 12), (30, 19, 20, 12), (7, 3, 11, 25), (0, 0, 50, 31)]:
        sc, sr, sww, shh = stored_window(c, r, w, h, sw, sh, orientation)
        tile = upright_array(np.asarray(stored)[sr:sr + shh, sc:sc + sww], orientation)
        assert np.array_equal(tile, np.asarray(upright)[r:r + h, c:c + w])


def test_exif_orientation_defaults_to_upright_when_absent_or_invalid():
    assert exif_orientation(Image.open(io.BytesIO(_png(Image.new("RGB", (4, 4)))))) == 1
    img = Image.new("RGB", (4, 4))
    exif = Image.Exif()
    exif[0x0112] = 17
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif.tobytes())
    assert exif_orientation(Image.open(io.BytesIO(buf.getvalue()))) == 1


def _photo(h=40, w=56) -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_tiffs_pillow_cannot_decode_are_read_as_their_bands_show():
    """A float64 raster, 4 planar 8-bit bands (RGB + NIR) and a 16-bit RGB + an 'unspecified' extra band
    were refused ("save it as 8 or 16 bits", for a file that already was) or read with the extra band as
    alpha, which faded the image to white: the answer changed without a word."""
    rgb = _photo()
    grey = rgb[..., 0].astype(np.float64) / 255
    assert np.array_equal(np.asarray(load_image(_tiff(grey))), np.asarray(load_image(grey)))
    nir8 = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    planar = _tiff(np.moveaxis(nir8, -1, 0), photometric="minisblack", planarconfig="separate")
    assert np.array_equal(np.asarray(load_image(planar)), rgb)
    wide = rgb.astype(np.uint16) * 257
    nir16 = _tiff(np.dstack([wide, np.full(rgb.shape[:2], 2000, np.uint16)]), photometric="rgb",
                  extrasamples=["unspecified"])
    assert np.array_equal(np.asarray(load_image(nir16)), rgb)
    alpha16 = np.dstack([wide, np.zeros(rgb.shape[:2], np.uint16)])  # a marked alpha still is one: transparent
    assert (np.asarray(load_image(_tiff(alpha16, photometric="rgb", extrasamples=["unassalpha"]))) == 255).all()


@pytest.mark.parametrize("planar", [False, True])
def test_premultiplied_16_bit_alpha_is_composited_once(planar):
    """A 16-bit TIFF with associated alpha (ExtraSamples 1: the colour already multiplied by it) was taken
    for straight alpha and multiplied again: a half-transparent green read [127, 191, 127], where a viewer
    and the file's 8-bit twin show [128, 255, 128]."""
    half = np.zeros((8, 8, 4), np.uint16)
    half[..., 1], half[..., 3] = 32768, 32768          # green at alpha 1/2, premultiplied: G = 65535 * 1/2
    kw = {"photometric": "rgb", "extrasamples": ["assocalpha"]}
    data = _tiff(np.moveaxis(half, -1, 0), planarconfig="separate", **kw) if planar else _tiff(half, **kw)
    assert np.abs(np.asarray(load_image(data)).astype(int) - [128, 255, 128]).max() <= 1
    straight = half.copy()
    straight[..., 1] = 65535                            # the same pixel with straight alpha
    assert np.abs(np.asarray(load_image(_tiff(straight, photometric="rgb", extrasamples=["unassalpha"])))
                  .astype(int) - [128, 255, 128]).max() <= 1


def test_16_bit_images_that_use_their_range_are_shown_as_a_viewer_shows_them():
    """A 16-bit PNG or TIFF of a photo (value x 257) was contrast-stretched over its 0.5-99.5 percentiles,
    which moved every pixel and changed the answer; 12-bit counts in 16 bits are still stretched."""
    rgb = _photo()
    for arr in (rgb.astype(np.uint16) * 257, rgb[..., 0].astype(np.uint16) * 257):
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, photometric="rgb" if arr.ndim == 3 else "minisblack")
        want = rgb if arr.ndim == 3 else np.repeat(rgb[..., :1], 3, axis=2)
        assert np.array_equal(np.asarray(load_image(buf.getvalue())), want)
        assert np.array_equal(np.asarray(load_image(arr)), want)
    counts = (rgb.astype(np.uint16) * 16)  # 12-bit: up to 4080 of 65535, shown almost black if scaled
    shown = np.asarray(load_image(counts))
    assert shown.max() == 255 and shown.min() == 0


def test_a_heic_photo_is_named_with_what_to_do():
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    with pytest.raises(BadImage, match="^a HEIC/HEIF photo, which cannot be decoded here: convert it to JPEG or PNG"):
        load_image(data)


@pytest.mark.parametrize("layout", ["planar rgb", "planar rgb + band", "planar rgba", "grey + alpha", "grey + band"])
def test_16_bit_tiffs_pillow_misreads_are_read_with_tifffile(layout):
    """Planar 16-bit bands were read by Pillow as interleaved (1% of pixels right, no error), or refused
    ("unknown raw mode"); 16-bit grey + alpha was refused as "2 bands ... no single image"."""
    rgb = _photo()
    wide, grey = rgb.astype(np.uint16) * 257, rgb[..., 0].astype(np.uint16) * 257
    band, opaque = np.full(grey.shape, 2000, np.uint16), np.full(grey.shape, 65535, np.uint16)
    arr, kw, want = {
        "planar rgb": (np.moveaxis(wide, -1, 0), {"photometric": "rgb", "planarconfig": "separate"}, rgb),
        "planar rgb + band": (np.moveaxis(np.dstack([wide, band]), -1, 0), {
            "photometric": "rgb", "planarconfig": "separate", "extrasamples": ["unspecified"]}, rgb),
        "planar rgba": (np.moveaxis(np.dstack([wide, opaque]), -1, 0), {
            "photometric": "rgb", "planarconfig": "separate", "extrasamples": ["unassalpha"]}, rgb),
        "grey + alpha": (np.dstack([grey, opaque]), {"photometric": "minisblack", "extrasamples": ["unassalpha"]},
                         np.repeat(rgb[..., :1], 3, axis=2)),
        "grey + band": (np.dstack([grey, band]), {"photometric": "minisblack", "extrasamples": ["unspecified"]},
                        np.repeat(rgb[..., :1], 3, axis=2)),
    }[layout]
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    assert np.array_equal(np.asarray(load_image(buf.getvalue())), want)


def test_a_grey_and_alpha_array_is_an_image():
    """HxWx2 (what a 16-bit grey + alpha PNG decodes to) was "unsupported array shape (20, 30, 2)"."""
    grey = _photo()[..., 0]
    shown = np.asarray(load_image(np.dstack([grey, np.full(grey.shape, 255, np.uint8)])))
    assert np.array_equal(shown, np.repeat(grey[..., None], 3, axis=2))


def test_a_12_bit_jpeg_is_read_at_its_depth(tmp_path):
    """Pillow cannot open a 12-bit JPEG (medical and scientific cameras write them), which read as "not a
    readable image (unknown or broken format)"; GDAL reads it."""
    import rasterio

    stored = np.zeros((40, 60, 3), np.uint16)
    stored[5:15, 5:25] = 4000                                  # a bright block on 12-bit black
    with rasterio.open(tmp_path / "j12.jpg", "w", driver="JPEG", width=60, height=40, count=3, dtype="uint16",
                       NBITS=12) as ds:
        ds.write(np.moveaxis(stored, -1, 0))
    data = (tmp_path / "j12.jpg").read_bytes()
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(data))
    grey = np.asarray(load_image(data).convert("L"))
    assert grey.shape == (40, 60) and grey[8, 10] > 200 and grey[30, 50] < 50
    with pytest.raises(BadImage, match="page 1 of 1: no such frame"):
        load_image(data, frame=1)
    # its EXIF orientation is applied as an 8-bit JPEG's is (Pillow cannot open it to read it)
    with rasterio.open(tmp_path / "j12-6.jpg", "w", driver="JPEG", width=40, height=60, count=3, dtype="uint16",
                       NBITS=12) as ds:
        ds.write(np.moveaxis(np.rot90(stored, 1), -1, 0))     # stored turned, as a camera held upright
    raw, exif = (tmp_path / "j12-6.jpg").read_bytes(), Image.Exif()
    exif[0x0112] = 6
    app1 = exif.tobytes()
    turned = raw[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + raw[2:]
    assert np.array_equal(np.asarray(load_image(turned).convert("L")) > 128, grey > 128)


def _rotated_tiff(orientation: int, extratags=(), **kw) -> tuple[bytes, np.ndarray]:
    """A grey TIFF stored turned for ``orientation`` (tifffile), and the upright picture a viewer shows."""
    import tifffile

    upright = np.full((30, 50), 220, np.uint8)
    upright[3:10, 35:47] = 0                                   # a dark block upper right
    stored = np.ascontiguousarray(upright.transpose() if orientation == 5 else np.rot90(upright, {6: 1, 8: -1}.get(
        orientation, 2)) if orientation != 1 else upright)
    buf = io.BytesIO()
    tifffile.imwrite(buf, stored, extratags=[(0x0112, "H", 1, orientation, True), *extratags], **kw)
    return buf.getvalue(), upright


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_tiff_tifffile_complains_of_is_turned_once(orientation):
    """A tag tifffile skips (an unknown field type) made the whole file count as damaged: the orientation
    tag was left to Pillow, which turned the page, and the loader turned it again."""
    import tifffile

    data, upright = _rotated_tiff(orientation, extratags=[(65000, "H", 1, 7, True)])
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        entry = tif.pages[0].tags[65000].offset
    data = data[:entry + 2] + (99).to_bytes(2, "little") + data[entry + 4:]   # field type 99: unknown, skipped
    got = np.asarray(load_image(data).convert("L"))
    assert got.shape == upright.shape and np.array_equal(got < 100, upright < 100)


def test_a_cut_short_tiff_is_never_one_clean_page_and_its_first_page_stands_upright():
    """A multi-page TIFF cut short whose pages Pillow cannot open (float RGB) counted as one clean page;
    its first page (float or 8-bit) came back turned the wrong way."""
    import tifffile

    from spote.images import page_count

    _, upright = _rotated_tiff(6)
    stored = np.ascontiguousarray(np.rot90(upright, 1))
    for dtype in (np.uint8, np.float32):
        buf = io.BytesIO()
        with tifffile.TiffWriter(buf) as tw:
            for _ in range(3):
                tw.write(np.dstack([stored] * 3).astype(dtype), photometric="rgb", extratags=[(0x0112, "H", 1, 6, True)])
        cut = buf.getvalue()[:len(buf.getvalue()) // 2]         # the chain cut: page 2's IFD is gone
        with pytest.raises(BadImage, match="its pages cannot be counted"):
            page_count(cut)
        got = np.asarray(load_image(cut).convert("L"))
        assert got.shape == upright.shape and np.array_equal(got < 100, upright < 100), dtype


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_a_palette_tiff_pillow_cannot_open_shows_its_colours(byteorder):
    """A big-endian BigTIFF palette page is read with tifffile, which gave its palette indices (0 and 1:
    black) rather than the colours they name."""
    import tifffile

    indices = np.zeros((30, 50), np.uint8)
    indices[3:10, 35:47] = 1
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, 0] = 65535                                     # index 0 white, 1 black
    buf = io.BytesIO()
    tifffile.imwrite(buf, indices, byteorder=byteorder, bigtiff=True, photometric="palette", colormap=colormap)
    got = np.asarray(load_image(buf.getvalue()).convert("L"))
    assert np.array_equal(got < 100, indices == 1) and got.max() > 200


def test_a_huge_file_that_is_no_image_is_not_read_whole(tmp_path, monkeypatch):
    """A 3 GB file of zeros was read whole (3.4 GB of memory) to say it is no image; past the bound only its head
    is read, and it is still named for what it is not."""
    import spote.images

    monkeypatch.setattr(spote.images, "MAX_UNIDENTIFIED_BYTES", 1 << 16)
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (1 << 21))
    reads = []
    real = spote.images._bytes_of

    def counted(source):
        data = real(source)
        reads.append(len(data))
        return data

    monkeypatch.setattr(spote.images, "_bytes_of", counted)
    with pytest.raises(BadImage, match="not a readable image"):
        load_image(str(big))
    assert reads and max(reads) <= 1 << 20


class _Stream(io.RawIOBase):
    """A binary stream that cannot seek, as an HTTP response body or a socket file reads."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, b):
        return self._data.readinto(b)


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def test_file_objects_that_cannot_seek_are_read_as_their_bytes(tmp_path):
    """A stream or a pipe raised ``io.UnsupportedOperation: seek`` / ``OSError: Illegal seek``, not BadImage."""
    import os

    data = _png_bytes()
    assert np.array_equal(np.asarray(load_image(io.BufferedReader(_Stream(data)))), np.asarray(load_image(data)))
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        assert load_image(pipe).size == (40, 30)
    with pytest.raises(BadImage, match=r"^empty file \(0 bytes\)$"):
        load_image(io.BufferedReader(_Stream(b"")))


def test_file_objects_and_pil_images_that_cannot_be_used_are_bad_images(tmp_path):
    """A text-mode file raised TypeError, a closed PIL image and a mode Pillow cannot convert ValueError."""
    (tmp_path / "a.png").write_bytes(_png_bytes())
    with open(tmp_path / "a.png", encoding="latin-1") as text, pytest.raises(BadImage, match=r"binary mode \('rb'\)"):
        load_image(text)
    with pytest.raises(BadImage, match=r"binary mode"):
        load_image(io.StringIO("not bytes"))
    closed = Image.open(tmp_path / "a.png")
    closed.close()
    with pytest.raises(BadImage, match=r"^cannot use this PIL image \(mode RGB\): "):
        load_image(closed)
    with pytest.raises(BadImage, match=r"^cannot use this PIL image \(mode La\): "):
        load_image(Image.new("La", (4, 4)))
    with pytest.raises(BadImage, match=r"^empty path: give an image file$"):
        load_image("")


def test_text_holding_a_lone_surrogate_is_refused_as_a_value_error():
    """``os.fsdecode`` of a Latin-1 byte gives ``"\\udcfc"``: the tokenizer raised a TypeError on it."""
    from spote.images import check_choices, check_question

    with pytest.raises(ValueError, match=r"^question holds '\\udcfc', half of a UTF-16 pair"):
        check_question("what is in M\udcfcller's box ?")
    with pytest.raises(ValueError, match=r"^choice 'b\\udcfc' holds"):
        check_choices(["a", "b\udcfc"])


def test_a_boolean_array_with_alpha_is_composited_on_white_as_other_types_are():
    """A bool HxWx4 or HxWx2 array lost its alpha: transparent pixels came out black."""
    rgba = np.zeros((4, 4, 4), bool)
    rgba[:2, :, :3] = True          # top half white, bottom black; the left half transparent
    rgba[:, 2:, 3] = True
    got = np.asarray(load_image(rgba))
    assert np.array_equal(got, np.asarray(load_image(rgba.astype(np.uint8) * 255)))
    assert (got[:, :2] == 255).all() and (got[2:, 2:] == 0).all()
    ga = np.zeros((4, 4, 2), bool)
    ga[..., 1] = [[False] * 2 + [True] * 2] * 4
    assert (np.asarray(load_image(ga))[:, :2] == 255).all() and (np.asarray(load_image(ga))[:, 2:] == 0).all()


def test_binary_streams_of_every_kind_are_read(tmp_path):
    """A zip member (mode 'r') was refused as text, a GzipFile (mode an int) raised TypeError, and an unbuffered
    pipe whose bytes came in two writes was "corrupt or truncated" (one read took what had arrived)."""
    import gzip
    import os
    import threading
    import time
    import zipfile

    data = _png_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("a.png", data)
    with zipfile.ZipFile(tmp_path / "a.zip") as z, z.open("a.png") as member:
        assert load_image(member).size == (40, 30)
    (tmp_path / "a.png.gz").write_bytes(gzip.compress(data))
    with gzip.open(tmp_path / "a.png.gz") as gz:
        assert load_image(gz).size == (40, 30)
    r, w = os.pipe()

    def write_in_two():
        os.write(w, data[:100])
        time.sleep(0.3)
        os.write(w, data[100:])
        os.close(w)

    threading.Thread(target=write_in_two).start()
    with open(r, "rb", buffering=0) as raw:
        assert load_image(raw).size == (40, 30)
