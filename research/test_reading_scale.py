import numpy as np
from PIL import Image, ImageDraw

from research.reading_scale import evidence_view, reading_curve
from spote.bench.scenes import spotbench
from spote.spotlight import ViewRenderer


def _dark_columns(view: Image.Image) -> int:
    a = np.asarray(view.convert("L"))
    return int((a[a.shape[0] // 2] < 100).sum())  # width of the black square along the middle row


def test_evidence_spans_the_requested_pixels():
    img = Image.new("RGB", (900, 600), "white")
    ImageDraw.Draw(img).rectangle([400, 250, 429, 279], fill="black")  # 30 x 30 evidence
    r = ViewRenderer(img, 64)
    for px in (8, 16, 32):
        (view,) = evidence_view(r, (400, 250, 430, 280), px)
        assert view.size == (64, 64)
        assert abs(_dark_columns(view) - px) <= 2


def test_reading_curve_covers_kinds_with_evidence(shipped_adapter):
    items = list(spotbench("val", 12, 0))
    curve = reading_curve(shipped_adapter, items, sizes=(12, 48))
    kinds_with_evidence = {i.kind for i in items if i.evidence is not None}
    assert {k for k, _ in curve} == kinds_with_evidence
    for (kind, px), (n, acc, ent) in curve.items():
        assert n == sum(i.kind == kind and i.evidence is not None for i in items)
        assert 0.0 <= acc <= 1.0 and ent >= 0.0
