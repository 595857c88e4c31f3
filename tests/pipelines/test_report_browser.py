"""The demo run's report in a real headless browser: it shows pictures, not only text, and fetches nothing.

Needs Debian's chromium (``make test`` installs it where absent and apt can); skipped without one.
"""

import json
import re
import shutil
import subprocess
from html import unescape as html_unescape
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from pipelines import satellite
from pipelines.job import JobOptions, run_job
from pipelines.runs import RunPaths
from pipelines.vqa import read_manifest

from test_report import assert_self_contained, parse

SAMPLES = Path(__file__).parents[2] / "pipelines" / "samples" / "vqa"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (make test installs Debian's)")


def screenshot(html: Path, png: Path, height: int = 5000) -> np.ndarray:
    """A 1280-wide screenshot of the page as (h, w, 3) uint8; the browser may not reach the network."""
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--host-resolver-rules=MAP * ~NOTFOUND", f"--screenshot={png}", f"--window-size=1280,{height}",
                    html.resolve().as_uri()], check=True, capture_output=True, timeout=180)
    return np.asarray(Image.open(png).convert("RGB"))


def picture_blocks(shot: np.ndarray, side: int = 16) -> int:
    """16x16-pixel blocks of the screenshot filled with non-white pixels (>= 95 % of them): pictures are;
    text, rules, table borders and the page's white or near-white fills are not."""
    h, w, _ = shot.shape
    inked = shot[: h - h % side, : w - w % side].min(axis=2) < 232
    filled = inked.reshape(h // side, side, w // side, side).mean(axis=(1, 3))
    return int((filled >= 0.95).sum())


def test_demo_report_in_a_browser_shows_images(ray_local, tmp_path):
    """make demo's run (shipped weights, the sample manifest), its report screenshotted."""
    rows = read_manifest(str(SAMPLES / "manifest.jsonl"))
    opts = JobOptions(str(SAMPLES / "manifest.jsonl"), str(tmp_path / "demo"), policy='{"budget": 24}', run_id="demo")
    run_job("vqa", opts, rows)
    report = Path(RunPaths(opts.output, "demo").meta) / "report.html"
    page = parse(report)
    assert_self_contained(page)
    thumbs = [a for a in page.imgs() if a["src"].startswith("data:image/jpeg")]
    assert len(thumbs) == len(rows) - 3            # every answered sample in the gallery (13 rows, 3 errors)

    shot = screenshot(report, tmp_path / "report.png")
    # the same page with every picture taken out: what a text-only report would look like
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r"<img [^>]*>", "", report.read_text()))
    text_only = screenshot(bare, tmp_path / "bare.png")
    blocks, bare_blocks = picture_blocks(shot), picture_blocks(text_only)
    thumb_blocks = 200 * 150 // 16 ** 2                                   # a thumbnail as shown is >= 250 x 180 px
    assert blocks >= len(thumbs) // 2 * thumb_blocks and bare_blocks < thumb_blocks, (blocks, bare_blocks)
    colours = len(np.unique(shot.reshape(-1, 3), axis=0))
    assert colours > 10 * len(np.unique(text_only.reshape(-1, 3), axis=0))


def test_satellite_report_shows_each_scene(ray_local, random_tiny_dir, tmp_path, fast_policy):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    rng = np.random.default_rng(3)
    data = (rng.normal(900, 120, (3, 300, 400))).clip(0, 4000).astype(np.uint16)
    data[:, 120:150, 200:240] = 3500                                   # a bright object
    with rasterio.open(scenes / "s1.tif", "w", driver="GTiff", width=400, height=300, count=3, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 0.5, 0.5)) as ds:
        ds.write(data)
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(scenes / "s2.png")
    (tmp_path / "q.json").write_text(json.dumps([{"question": "is there a boat ?", "choices": ["yes", "no"]},
                                                 {"question": "is there a car ?", "choices": ["yes", "no"]}]))
    opts = JobOptions(str(scenes), str(tmp_path / "out"), str(random_tiny_dir), policy=fast_policy, run_id="sat")
    satellite.run(opts, str(tmp_path / "q.json"), tile_size=200, overlap=50, bands="1,2,3")
    report = Path(RunPaths(opts.output, "sat").meta) / "report.html"
    page = parse(report)
    assert_self_contained(page)
    overviews = [a for a in page.imgs() if a.get("alt", "").endswith(("s1.tif", "s2.png"))]
    assert len(overviews) == 2 * 2                                       # a scene x question each
    by_scene = {Path(a["alt"]).name: (int(a["width"]), int(a["height"])) for a in overviews}
    assert by_scene["s1.tif"] == (400, 300) and by_scene["s2.png"] == (300, 200)   # whole scenes, upright
    shot = screenshot(report, tmp_path / "sat.png", height=4000)
    assert picture_blocks(shot) >= 4 * 300 * 200 // 16 ** 2 // 2           # the overviews, at least half shown


def layout(html: Path, width: int = 1280) -> dict:
    """The page's layout in the browser: {scrollWidth, clientWidth, tallest card (px)}, measured by a script
    added to a copy of the page (the report itself has none)."""
    probe = ("<script>addEventListener('load',()=>{const d=document.documentElement;const p=document.createElement('pre');"
             "p.id='probe';p.textContent=JSON.stringify({scrollWidth:d.scrollWidth,clientWidth:d.clientWidth,"
             "card:Math.max(0,...[...document.querySelectorAll('.card')].map(c=>c.offsetHeight))});"
             "document.body.appendChild(p)})</script>")
    copy = html.with_name("probe.html")
    copy.write_text(html.read_text(encoding="utf-8").replace("</body>", probe + "</body>"), encoding="utf-8")
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--host-resolver-rules=MAP * ~NOTFOUND", f"--window-size={width},1000", "--dump-dom",
                          copy.resolve().as_uri()], check=True, capture_output=True, text=True, timeout=180).stdout
    return json.loads(html_unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))


def test_long_unbroken_texts_keep_the_page_in_the_window(tmp_path):
    """10,000-character ids, questions, answers, file names and error texts without a space: the page is no
    wider than the window and no card grows to hundreds of lines."""
    from pipelines.report import summarise, write_report
    from pipelines.stages import ImageLoader, typed_table
    from pipelines.stats import RunStats

    from test_report import _image, _row

    deep = tmp_path
    for _ in range(15):                          # a 3,000-character path (each name at most 255 bytes)
        deep = deep / ("D" * 200)
    deep.mkdir(parents=True)
    src = _image(deep / ("F" * 200 + ".png"), (90, 120, 60))
    rows = [_row(id="I" * 10_000, source=src, question="Q" * 10_000, answer="A" * 10_000, confidence=0.2,
                 token_confidences=[0.5] * 300, field="f" * 5000),
            _row(id="J" * 10_000, source=src, status="error", error="unreadable image: " + "E" * 10_000,
                 confidence=float("nan"), answer="")]
    stats = RunStats.of_table(typed_table({k: [r.get(k) for r in rows] for k in rows[0]}))
    write_report(stats, summarise(stats, "R" * 10_000, 2, 1.0, "M" * 10_000, {}), str(tmp_path / "meta"),
                 loader=(ImageLoader, {}), timeout_s=120)
    got = layout(tmp_path / "meta" / "report.html")
    assert got["scrollWidth"] <= got["clientWidth"] and 0 < got["card"] < 2000, got   # was 100,000s wide, 10,000s tall
