import numpy as np
import pytest
from PIL import Image

from spote.spotlight import Box, ViewRenderer, letterbox, letterbox_transform, soft_mask


def test_a_square_box_near_a_corner_is_moved_inside_not_shrunk():
    b = Box.square(5, 590, 300).shifted_inside(800, 600)  # centred near the bottom-left corner of 800 x 600
    assert (b.x0, b.y0) == (0, 300) and (b.width, b.height) == (300, 300)
    assert b.x1 <= 800 and b.y1 <= 600


def test_box_geometry():
    a, b = Box(0, 0, 10, 10), Box(5, 5, 15, 15)
    assert a.intersection(b) == 25 and a.iou(b) == pytest.approx(25 / 175)
    assert Box(0, 0, 100, 100).contains_frac(b) == 1.0
    assert a.as_list() == [0, 0, 10, 10]


def test_zoom_reads_source_pixels_not_the_downscaled_view():
    img = Image.new("RGB", (1000, 500), (0, 0, 0))
    img.paste((255, 0, 0), (700, 200, 720, 220))  # a 20 px red square
    r = ViewRenderer(img, 64)
    zoom = np.asarray(r.render(Box(690, 190, 730, 230), "zoom")[0])
    assert zoom.shape == (64, 64, 3)
    assert (zoom[..., 0] > 200).mean() > 0.2   # the square fills the zoom
    whole = np.asarray(r.global_view)
    assert (whole[..., 0] > 200).sum() <= 4    # and is a speck in the whole view


def test_global_view_is_drawn_once_and_only_when_asked_for():
    img = Image.new("RGB", (900, 600), (10, 200, 30))
    img.paste((250, 250, 0), (100, 100, 400, 300))
    r = ViewRenderer(img, 64)
    r.render(Box(100, 100, 300, 300), "zoom")
    assert "global_view" not in vars(r)  # close-ups alone do not draw it
    first = r.global_view
    assert first.tobytes() == letterbox(img, 64).tobytes()
    assert r.global_view is first and r.render(None)[0] is first
    assert r.render(Box(100, 100, 300, 300), "zoom+context")[0] is first


def test_letterbox_keeps_aspect_and_pads():
    img = Image.new("RGB", (200, 100), (255, 255, 255))
    v = np.asarray(letterbox(img, 64))
    assert v.shape == (64, 64, 3)
    assert (v[0, :, 0] == 128).all() and (v[32, :, 0] == 255).all()  # pad rows top, image in the middle


@pytest.mark.parametrize("size,box,point", [((300, 120), None, (50, 60)), ((300, 120), Box(40, 10, 200, 110), (150, 40)),
                                            ((90, 400), Box(-30, 150, 60, 260), (30, 230))])  # wide, tall, past the left edge
def test_letterbox_transform_says_where_letterbox_draws_a_point(size, box, point):
    img = Image.new("RGB", size, (255, 255, 255))
    x, y = point  # a red 8 px square inside the box
    img.paste((255, 0, 0), (x - 4, y - 4, x + 4, y + 4))
    v = np.asarray(letterbox(img, 64, box), np.int32)
    clipped, s, ox, oy = letterbox_transform(*size, 64, box)
    vx, vy = (x - clipped.x0) * s + ox, (y - clipped.y0) * s + oy
    red = (v[..., 0] > 200) & (v[..., 1] < 80)
    ys, xs = np.nonzero(red)
    assert abs(xs.mean() + 0.5 - vx) < 1.0 and abs(ys.mean() + 0.5 - vy) < 1.0
    assert clipped.x0 >= 0 and clipped.x1 <= size[0]
    # the padding lies outside the mapped box and the image inside it
    assert (v[:, : max(ox - 1, 0), 0] == 128).all() and (v[: max(oy - 1, 0), :, 0] == 128).all()


def test_modes_render_expected_image_counts():
    img = Image.new("RGB", (300, 200), (10, 200, 10))
    r = ViewRenderer(img, 32)
    box = Box(10, 10, 60, 60)
    assert len(r.render(box, "zoom")) == 1
    assert len(r.render(box, "zoom+context")) == 2
    hl = np.asarray(r.render(box, "highlight")[0], np.float32)
    assert hl[5, 5, 1] > hl[28, 28, 1]  # inside kept, outside dimmed
    with pytest.raises(ValueError):
        r.render(box, "sideways")


def test_soft_mask_is_one_inside():
    m = soft_mask(100, 100, 50, Box(0, 0, 50, 50))
    assert m[5, 5] == pytest.approx(1.0) and m[45, 45] < 0.1


def test_grid_to_source_covers_image():
    r = ViewRenderer(Image.new("RGB", (400, 200)), 64)
    cells = r.grid_to_source(8, 8)
    assert len(cells) == 64
    assert max(c.x1 for c in cells) == 400 and max(c.y1 for c in cells) == 200


def test_moved_shifts_by_shares_of_the_box_side():
    b = Box(100.0, 50.0, 180.0, 90.0)  # 80 x 40
    assert b.moved(0.25, -0.5) == Box(120.0, 30.0, 200.0, 70.0)
    assert b.moved(0, 0) == b and b.moved(-1, 1).width == b.width


def test_shifted_inside_moves_a_box_without_shrinking_it():
    b = Box.square(5.0, 290.0, 64).shifted_inside(400, 300)   # past the left and bottom edges
    assert (b.x0, b.y1) == (0.0, 300.0) and b.width == 64 and b.height == 64
    inside = Box(100, 100, 164, 164)
    assert inside.shifted_inside(400, 300) == inside
