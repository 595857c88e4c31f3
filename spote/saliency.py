"""A model-free visual saliency prior: where small, unusual things are.

The VLM's own attention is the question-conditioned prior, but a small model's whole-image
attention is blurry. Small decisive evidence is usually a local anomaly (a coloured field on a
grey page, a boat on water, a crack on brushed metal), so a cheap centre-surround contrast map
(Itti-Koch style) is a useful second prior:

    S(x) = || G_c * I(x) - G_s * I(x) ||,  I in an opponent space (intensity, 2(r-g), 2((r+g)/2-b)),

on a 256 px copy of the image, centre sigma 0.7 px and surround sigma 2 px there: a window of
roughly the evidence's size lights up, large edges and smooth textures much less.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

WORKING_SIZE = 256
CENTRE_SIGMA, SURROUND_SIGMA = 0.7, 2.0


def saliency_map(image: Image.Image, size: int = WORKING_SIZE) -> np.ndarray:
    """Centre-surround colour contrast in [0, 1] over a ``size``-px (long side) copy of ``image``."""
    w, h = image.size
    s = size / max(w, h)
    small = image.resize((max(8, round(w * s)), max(8, round(h * s))), Image.BILINEAR, reducing_gap=3.0)
    x = np.asarray(small, np.float32) / 255
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    opp = np.stack([(r + g + b) / 3, 2 * (r - g), 2 * ((r + g) / 2 - b)], -1)
    centre = gaussian_filter(opp, (CENTRE_SIGMA, CENTRE_SIGMA, 0))
    surround = gaussian_filter(opp, (SURROUND_SIGMA, SURROUND_SIGMA, 0))
    sal = np.sqrt(((centre - surround) ** 2).sum(-1))
    return sal / (sal.max() + 1e-8)


def saliency_cells(image: Image.Image, grid: int) -> np.ndarray:
    """Peak (99th percentile) saliency inside each cell of a ``grid`` x ``grid`` partition of the image."""
    sal = saliency_map(image)
    h, w = sal.shape
    ys = np.linspace(0, h, grid + 1).astype(int)
    xs = np.linspace(0, w, grid + 1).astype(int)
    out = np.zeros((grid, grid))
    for j in range(grid):
        for i in range(grid):
            cell = sal[ys[j]:max(ys[j + 1], ys[j] + 1), xs[i]:max(xs[i + 1], xs[i] + 1)]
            out[j, i] = np.percentile(cell, 99) if cell.size else 0.0
    return out + 1e-3
