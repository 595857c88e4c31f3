"""Does a tile's answer depend on where the tile grid falls? Per-tile against per-scene stretch.

    OMP_NUM_THREADS=1 python -m benchmarks.stretch_consistency --objects 24 --seed 0

A synthetic 12-bit coastal scene (fields, parcels, a road, a lake and a river of dark water with
boats, sun glints and a cloud) is written as a GeoTIFF and cut by two tile grids, the second shifted
by half a tile. Every probe (a boat, or an empty water spot) lies whole inside one tile of each grid;
that tile is read by the satellite job's own loader (``SceneTileLoader``) under ``--stretch tile`` and
``--stretch scene`` and asked "is there a boat ?" by SPOT-E (shipped spote-tiny, CPU). Prints, per
stretch, how often a probe's two answers differ (grid A vs grid B) and the accuracy against the truth,
and writes them to ``--out`` as JSON. A benchmark, not a test: no assertion.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import typer
from PIL import Image, ImageDraw, ImageFilter

app = typer.Typer(add_completion=False)
QUESTION, CHOICES = "is there a boat ?", ("yes", "no")


def make_scene(rng, size: int = 1536):
    """(uint16 (3, size, size) scene, water mask, boat boxes): the 8-bit picture mapped to 12-bit radiance."""
    from spote.bench.scenes import _noise_texture

    img = Image.fromarray(_noise_texture(rng, size, size, (95, 130, 70), 22, 48).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(30):
        px, py = int(rng.integers(0, size)), int(rng.integers(0, size))
        pw, ph = int(rng.integers(size // 16, size // 5)), int(rng.integers(size // 16, size // 5))
        d.rectangle([px, py, px + pw, py + ph], fill=tuple(int(v) for v in rng.choice(
            [(150, 130, 80), (120, 150, 60), (80, 110, 60)])))
    lake = (size // 8, size // 2, size // 2, size - size // 8)
    river = (0, size // 5, size, size // 5 + size // 10)
    for box in (lake, river):
        d.rectangle(box, fill=(40, 80, 140))
    d.rectangle([2 * size // 3, 0, 2 * size // 3 + 14, size], fill=(120, 120, 120))
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    water = np.all(np.asarray(img) == (40, 80, 140), -1)
    return img, water, lake, river


def place_boats(img, rng, regions, n):
    d = ImageDraw.Draw(img)
    boxes = []
    while len(boxes) < n:
        x0r, y0r, x1r, y1r = regions[len(boxes) % len(regions)]
        side = int(rng.integers(14, 25))
        bw, bh = side, max(5, side // 2)
        x0, y0 = int(rng.integers(x0r + 4, x1r - bw - 4)), int(rng.integers(y0r + 4, y1r - bh - 4))
        box = (x0, y0, x0 + bw, y0 + bh)
        if any(not (box[2] + 40 < b[0] or b[2] + 40 < box[0] or box[3] + 40 < b[1] or b[3] + 40 < box[1]) for b in boxes):
            continue
        d.polygon([(x0, y0), (x0 + bw - bh // 2, y0), (x0 + bw, y0 + bh // 2), (x0 + bw - bh // 2, y0 + bh),
                   (x0, y0 + bh)], fill=(250, 250, 250), outline=(90, 40, 20))
        d.rectangle([x0 + bw // 4, y0 + bh // 4, x0 + bw // 2, y0 + 3 * bh // 4], fill=(150, 60, 30))
        boxes.append(box)
    return boxes


def to_radiance(img, rng):
    """8-bit picture -> 12-bit radiance: per-band gain and offset, a bright cloud, specular glints, sensor noise."""
    rgb = np.asarray(img, np.float64) / 255
    gain, offset = np.array([2600, 2900, 3300]), np.array([180, 220, 260])
    rad = offset + (rgb ** 1.3) * gain + rng.normal(0, 12, rgb.shape)
    h, w = rad.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    cloud = np.exp(-(((xx - 0.8 * w) ** 2 + (yy - 0.75 * h) ** 2) / (2 * (0.08 * w) ** 2)))
    rad += cloud[..., None] * 3000
    glints = rng.integers(0, h * w, 60)
    rad.reshape(-1, 3)[glints] = 4095
    return np.moveaxis(rad.clip(0, 4095).astype(np.uint16), -1, 0)


def containing_tile(box, size, tile, offset):
    """(col, row) of the tile of a grid (starting at -offset, clipped to the scene) holding ``box`` with most margin."""
    starts = [s for s in range(-offset, size, tile)]
    best = None
    for c in starts:
        for r in starts:
            c0, r0 = max(0, c), max(0, r)
            c1, r1 = min(size, c + tile), min(size, r + tile)
            margin = min(box[0] - c0, box[1] - r0, c1 - box[2], r1 - box[3])
            if margin >= 0 and (best is None or margin > best[0]):
                best = (margin, c0, r0, c1 - c0, r1 - r0)
    return best[1:] if best else None


@app.command()
def main(objects: int = typer.Option(24, help="boats; as many empty water probes"), seed: int = 0,
         tile: int = 256, budget: int = 12, method: str = typer.Option("spote", help="spote or a peer, e.g. baseline"),
         out: Path = Path("results/stretch_consistency/seed0.json")):
    import rasterio
    from rasterio.transform import from_origin

    from pipelines.satellite import SceneTileLoader
    from spote.baselines import run_method
    from spote.core import PolicyConfig
    from spote.loading import load_adapter

    rng = np.random.default_rng(seed)
    img, water, lake, river = make_scene(rng)
    size = img.width
    boats = place_boats(img, rng, [lake, river], objects)
    empty = []
    while len(empty) < objects:
        x, y = int(rng.integers(20, size - 40)), int(rng.integers(20, size - 40))
        box = (x, y, x + 20, y + 10)
        if water[y:y + 10, x:x + 20].all() and all(box[2] + 30 < b[0] or b[2] + 30 < box[0] or box[3] + 30 < b[1]
                                                   or b[3] + 30 < box[1] for b in boats):
            empty.append(box)
    data = to_radiance(img, rng)
    adapter = load_adapter(None, device="cpu")
    cfg = PolicyConfig(budget=budget, seed=seed)
    results = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/coast.tif"
        with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint16",
                           crs="EPSG:32633", transform=from_origin(500000, 4600000, 1, 1), tiled=True) as ds:
            ds.write(data)
        probes = [(truth, box, [containing_tile(box, size, tile, offset) for offset in (0, tile // 2)])
                  for truth, box in [("yes", b) for b in boats] + [("no", b) for b in empty]]
        probes = [p for p in probes if None not in p[2]]  # whole inside one tile of each grid
        for stretch in ("tile", "scene"):
            loader = SceneTileLoader(stretch=stretch)
            answers = []
            for truth, box, windows in probes:
                pair = []
                for c, r, w, h in windows:
                    row = {"id": "p", "source": path, "question": QUESTION, "choices": "", "tile_col_off": c,
                           "tile_row_off": r, "tile_width": w, "tile_height": h, "stretch_range": ""}
                    loaded = loader.load(row)
                    pixels = np.frombuffer(loaded["pixels"], np.uint8).reshape(h, w, 3)
                    pair.append(run_method(method, adapter, Image.fromarray(pixels), QUESTION, CHOICES, cfg).answer)
                answers.append((truth, *pair))
            differ = sum(a != b for _, a, b in answers)
            correct = sum((a == t) + (b == t) for t, a, b in answers)
            yes = sum((a == "yes") + (b == "yes") for _, a, b in answers) / (2 * len(answers))
            results[stretch] = {"probes": len(answers), "answers_differ": differ,
                                "differ_rate": round(differ / len(answers), 4),
                                "accuracy": round(correct / (2 * len(answers)), 4), "yes_rate": round(yes, 4)}
            print(f"{stretch:>5} stretch: {differ}/{len(answers)} probes answered differently by the two grids "
                  f"({differ / len(answers):.1%}); accuracy {correct / (2 * len(answers)):.1%}, "
                  f"'yes' {yes:.1%} of answers")
    report = {"command": f"python -m benchmarks.stretch_consistency --objects {objects} --seed {seed} --tile {tile} "
                         f"--budget {budget} --method {method} --out {out}",
              "method": method, "scene_image": f"{size}x{size} uint16, 3 bands", "tile_size": tile,
              "grid_shift": tile // 2, "model": "spote-tiny (shipped), CPU", "seconds": round(time.time() - t0, 1),
              "stretch": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    app()
