"""A model-free visual saliency prior: where small, unusual things are.

The VLM's own attention is the question-conditioned prior, but a small model's whole-image
attention is blurry. Small decisive evidence is usually a local anomaly (a coloured field on a
grey page, a boat on water, a crack on brushed metal), so a cheap saliency map is a useful second
prior. Two terms, max-fused after normalisation:

- colour anomaly: distance of each pixel's (lightly blurred) colour from its wide neighbourhood,
  chroma weighted x2 (``|I_s - I_w|`` in an opponent colour space);
- spectral residual (Hou & Zhang, 2007): ``S = |IFFT(exp(R + i*phase))|^2`` with
  ``R = log|F| - box3(log|F|)`` on a 128 px grey image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, uniform_filter


def _normalise(x: np.ndarray) -> np.ndarray:
    x = x - x.min()
    return x / (x.max() + 1e-8)


def spectral_residual(grey: np.ndarray) -> np.ndarray:
    f = np.fft.fft2(grey)
    log_amp = np.log(np.abs(f) + 1e-8)
    phase = np.angle(f)
    avg = uniform_filter(log_amp, size=3, mode="wrap")
    sal = np.abs(np.fft.ifft2(np.exp(log_amp - avg + 1j * phase))) ** 2
    return gaussian_filter(_normalise(sal), 2)


def colour_anomaly(small: Image.Image) -> np.ndarray:
    x = np.asarray(small, np.float32) / 255
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    opp = np.stack([(r + g + b) / 3, 2 * (r - g), 2 * ((r + g) / 2 - b)], -1)  # intensity + 2x chroma
    fine = np.asarray(_blur(opp, 1.0))
    wide = np.asarray(_blur(opp, max(small.size) / 12))
    return np.sqrt(((fine - wide) ** 2).sum(-1))


def _blur(arr: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_filter(arr, (sigma, sigma, 0))


def saliency_map(image: Image.Image, size: int = 256) -> np.ndarray:
    """Saliency in [0, 1] over a ``size``-px (long side) copy of ``image``, shape (h, w)."""
    w, h = image.size
    s = size / max(w, h)
    small = image.resize((max(8, round(w * s)), max(8, round(h * s))), Image.BILINEAR, reducing_gap=3.0)
    grey = np.asarray(small.convert("L").resize((128, 128), Image.BILINEAR), np.float32) / 255
    sr = np.asarray(Image.fromarray(spectral_residual(grey).astype(np.float32)).resize(small.size, Image.BILINEAR))
    return np.maximum(_normalise(colour_anomaly(small)), 0.5 * _normalise(sr))


def saliency_cells(image: Image.Image, grid: int) -> np.ndarray:
    """Peak saliency inside each cell of a ``grid`` x ``grid`` partition of the image."""
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
