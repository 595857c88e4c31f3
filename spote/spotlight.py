"""Spotlights and the views they render, always from the original full-resolution pixels.

A spotlight is a ``Box`` in source pixels. It renders to what the frozen VLM sees, one of three modes:

- ``highlight``     the whole image, the box kept and the rest dimmed and blurred
                    (the paper's spotlight image ``x' = m*x + (1-m)*B(x)``);
- ``zoom``          the box cropped from the source and resized to the model input:
                    evidence lost to the encoder's fixed resolution comes back;
- ``zoom+context``  the global view plus the zoom, as two images.

Every view is letterboxed to a square of the model's input size, so non-square
images are never cropped by a processor's centre-crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, ImageFilter

MODES = ("highlight", "zoom", "zoom+context")
PAD_COLOUR = (128, 128, 128)


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in source pixels, ``[x0, y0, x1, y1)``."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def as_list(self) -> list[int]:
        """``[x0, y0, x1, y1]`` rounded to whole pixels, at least one pixel wide and high: a window under a
        pixel across (an image 1 pixel high) would round to no pixel at all."""
        x0, y0, x1, y1 = (int(round(v)) for v in (self.x0, self.y0, self.x1, self.y1))
        if x1 <= x0:  # the pixel the box starts in, which lies inside the image as x0 does
            x0 = math.floor(self.x0)
            x1 = x0 + 1
        if y1 <= y0:
            y0 = math.floor(self.y0)
            y1 = y0 + 1
        return [x0, y0, x1, y1]

    def intersection(self, other: "Box") -> float:
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return max(0.0, w) * max(0.0, h)

    def contains_frac(self, other: "Box") -> float:
        """Share of ``other``'s area that lies inside this box."""
        return self.intersection(other) / other.area if other.area > 0 else 0.0

    def iou(self, other: "Box") -> float:
        inter = self.intersection(other)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    @staticmethod
    def full(width: int, height: int) -> "Box":
        return Box(0.0, 0.0, float(width), float(height))

    @staticmethod
    def square(cx: float, cy: float, side: float) -> "Box":
        """The ``side`` x ``side`` box centred on (cx, cy), unclipped."""
        return Box(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)

    def moved(self, dx: float, dy: float) -> "Box":
        """The same box moved by ``dx`` of its width right and ``dy`` of its height down (negative: left, up)."""
        return Box(self.x0 + dx * self.width, self.y0 + dy * self.height, self.x1 + dx * self.width,
                   self.y1 + dy * self.height)

    def shifted_inside(self, width: float, height: float) -> "Box":
        """The same box moved (not shrunk) to lie inside a ``width`` x ``height`` image, if it fits."""
        x0 = min(max(self.x0, 0), width - self.width)
        y0 = min(max(self.y0, 0), height - self.height)
        return Box(x0, y0, x0 + self.width, y0 + self.height)


def letterbox_transform(width: int, height: int, size: int, box: Box | None = None) -> tuple[Box, float, int, int]:
    """Where ``letterbox`` puts ``box`` (default: the whole ``width`` x ``height`` image) in its
    ``size`` x ``size`` view: the box clipped to the image (source pixels), the scale (view pixels per
    source pixel) and the x and y offsets of the box's corner in the view (pixels). A source point
    (x, y) lands at ``((x - box.x0) * scale + ox, (y - box.y0) * scale + oy)``."""
    box = box or Box.full(width, height)
    box = Box(max(0.0, box.x0), max(0.0, box.y0), min(float(width), box.x1), min(float(height), box.y1))
    bw, bh = max(box.width, 1.0), max(box.height, 1.0)
    s = size / max(bw, bh)
    tw, th = max(1, round(bw * s)), max(1, round(bh * s))
    return box, s, (size - tw) // 2, (size - th) // 2


def letterbox(image: Image.Image, size: int, box: Box | None = None) -> Image.Image:
    """Resize ``box`` of ``image`` (default: all of it) into a ``size`` x ``size`` square, aspect kept
    (``letterbox_transform`` gives where it lands)."""
    box, s, ox, oy = letterbox_transform(*image.size, size, box)
    tw, th = max(1, round(max(box.width, 1.0) * s)), max(1, round(max(box.height, 1.0) * s))
    view = image.resize((tw, th), Image.BILINEAR, box=(box.x0, box.y0, box.x1, box.y1), reducing_gap=3.0)
    if (tw, th) == (size, size):
        return view
    canvas = Image.new("RGB", (size, size), PAD_COLOUR)
    canvas.paste(view, (ox, oy))
    return canvas


def soft_mask(width: int, height: int, size: int, box: Box, softness: float = 0.25) -> np.ndarray:
    """Mask in global-view coordinates: 1 inside ``box``, a Gaussian fall-off outside it."""
    _, s, ox, oy = letterbox_transform(width, height, size)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    x0, y0, x1, y1 = box.x0 * s + ox, box.y0 * s + oy, box.x1 * s + ox, box.y1 * s + oy
    dx = np.maximum(np.maximum(x0 - xs, xs - x1), 0.0)
    dy = np.maximum(np.maximum(y0 - ys, ys - y1), 0.0)
    sigma = max(1.0, softness * max(x1 - x0, y1 - y0))
    return np.exp(-(dx**2 + dy**2) / (2 * sigma**2))


def map_mask(relevance: np.ndarray, size: int, temperature: float = 0.25) -> np.ndarray:
    """The paper's mask from a relevance map: ``m = sigmoid((2*norm - 1) / T)``."""
    r = np.asarray(relevance, np.float32)
    norm = (r - r.min()) / (r.max() - r.min() + 1e-8)
    up = np.asarray(Image.fromarray((norm * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32) / 255
    return 1.0 / (1.0 + np.exp(-(2 * up - 1) / temperature))


def apply_highlight(view: Image.Image, mask: np.ndarray, strength: float = 1.0,
                    dim: float = 0.35, blur_radius: float = 1.2) -> Image.Image:
    """``x' = m * x + (1 - m) * B(x)``; ``B`` dims by ``dim`` and blurs (Gaussian, ``blur_radius``)."""
    x = np.asarray(view, np.float32)
    bg = np.asarray(view.filter(ImageFilter.GaussianBlur(blur_radius)), np.float32) * (1 - dim * strength)
    m = 1 - strength * (1 - mask[..., None])
    return Image.fromarray((m * x + (1 - m) * bg).clip(0, 255).astype(np.uint8))


class ViewRenderer:
    """Renders spotlights of one source image; caches the global view, which every mode reuses."""

    def __init__(self, image: Image.Image, size: int):
        self.image, self.size = image, size

    @cached_property
    def global_view(self) -> Image.Image:
        """The whole image letterboxed to ``size`` x ``size``, drawn when first asked for: a renderer
        used for close-ups only never pays for it."""
        return letterbox(self.image, self.size)

    def render(self, box: Box | None, mode: str = "zoom") -> list[Image.Image]:
        """The view set ``box`` renders to in ``mode`` (``MODES``): one image of ``size`` x ``size`` pixels, two
        for ``zoom+context`` (the global view first); ``[global_view]`` for ``box`` None (the whole image).

        Raises:
            ValueError: an unknown mode."""
        if mode not in MODES:
            raise ValueError(f"unknown spotlight mode {mode!r}; expected one of {MODES}")
        if box is None:
            return [self.global_view]
        if mode == "zoom":
            return [letterbox(self.image, self.size, box)]
        if mode == "zoom+context":
            return [self.global_view, letterbox(self.image, self.size, box)]
        mask = soft_mask(*self.image.size, self.size, box)
        return [apply_highlight(self.global_view, mask)]

    def render_map(self, relevance: np.ndarray, temperature: float = 0.25) -> list[Image.Image]:
        """Highlight by a whole relevance map (the ``api`` peer)."""
        return [apply_highlight(self.global_view, map_mask(relevance, self.size, temperature))]

    def grid_to_source(self, rows: int, cols: int) -> list[Box]:
        """Source-pixel box of each cell of a ``rows x cols`` token grid over the global view."""
        w, h = self.image.size
        _, s, ox, oy = letterbox_transform(w, h, self.size)
        cw, ch = self.size / cols, self.size / rows
        boxes = []
        for r in range(rows):
            for c in range(cols):
                x0, y0 = (c * cw - ox) / s, (r * ch - oy) / s
                boxes.append(Box(max(0.0, x0), max(0.0, y0), min(float(w), x0 + cw / s), min(float(h), y0 + ch / s)))
        return boxes
