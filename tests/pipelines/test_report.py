"""report.html: self-contained, figures for people, a gallery from the sources, everything escaped."""

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.gallery import draw_scene, thumbnail
from pipelines.report import fmt_number, fmt_seconds, pick_gallery, source_href, summarise, write_report
from pipelines.stages import ImageLoader, typed_table
from pipelines.stats import RunStats

HOSTILE = {
    "source": "<img src=x onerror=alert(1)>.png",
    "other": "scan <copy 2> R&D.png",
    "id": "<script>alert('id')</script>/p0",
    "question": 'is the box "ticked" <b>now</b> ?',
    "answer": "<i>yes</i>",
    "error": "unreadable image: <svg onload=alert(2)> & co",
    "run_id": "night<1>&'\"",
}


class Page(HTMLParser):
    """Every element with its attributes, the page's text, and the style sheet."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements, self.text, self.style, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in = tag

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        (self.style if self._in == "style" else self.text).append(data)

    def imgs(self) -> list[dict]:
        return [a for t, a in self.elements if t == "img"]


def parse(path) -> Page:
    page = Page()
    page.feed(Path(path).read_text(encoding="utf-8"))
    return page


def assert_self_contained(page: Page) -> None:
    """Nothing the browser would fetch: pictures are data: URIs; no scripts, style sheets, frames or CSS urls."""
    fetching = {"script", "link", "iframe", "frame", "object", "embed", "video", "audio", "source", "track", "base"}
    assert not [t for t, _ in page.elements if t in fetching]
    for tag, attrs in page.elements:
        for name in ("src", "srcset", "poster", "data", "background"):
            if name in attrs:
                assert attrs[name].startswith("data:"), (tag, name, attrs[name][:80])
    css = "".join(page.style).lower()
    assert "url(" not in css and "@import" not in css


def _row(**kw):
    base = {"id": "a", "source": "a.png", "question": "q ?", "choices": '["yes", "no"]', "answer": "yes",
            "confidence": 0.9672000000000001, "entropy_initial": 0.6, "entropy_final": 0.2,
            "entropy_trace": [0.6, 0.2], "boxes": [[0, 0, 4, 4]], "forward_passes": 2, "latency_ms": 10.0,
            "status": "ok", "error": "", "model": "m", "policy": "{}", "run_id": "r", "actor": "h:1",
            "evidence_box": [8, 8, 40, 40]}
    return {**base, **kw}


def _image(path: Path, colour) -> str:
    rng = np.random.default_rng(len(str(path)))
    arr = (rng.integers(0, 60, (96, 128, 3)) + np.array(colour)).clip(0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, "PNG")
    return str(path)


def hostile_table(folder: Path):
    src = _image(folder / HOSTILE["source"], (200, 40, 40))
    other = _image(folder / HOSTILE["other"], (40, 160, 60))
    rows = [_row(id=HOSTILE["id"], source=src, question=HOSTILE["question"], answer=HOSTILE["answer"],
                 confidence=0.41, run_id=HOSTILE["run_id"]),
            _row(id="b", source=other, run_id=HOSTILE["run_id"], evidence_box=None),
            _row(id="c", source=other, status="error", error=HOSTILE["error"], answer="", confidence=float("nan"),
                 entropy_trace=[], boxes=[], forward_passes=0, evidence_box=None, run_id=HOSTILE["run_id"]),
            _row(id="d<>", source=src, status="error", error=HOSTILE["error"] + " again", answer="",
                 confidence=float("nan"), entropy_trace=[], boxes=[], forward_passes=0, evidence_box=None,
                 run_id=HOSTILE["run_id"])]
    return typed_table({k: [r[k] for r in rows] for k in rows[0]}), src, other


def test_report_escapes_everything_a_user_or_file_supplies(tmp_path):
    table, src, other = hostile_table(tmp_path)
    table = RunStats.of_table(table)
    summary = summarise(table, HOSTILE["run_id"], 4, 1.0, "m<odel>", {})
    write_report(table, summary, str(tmp_path / "meta"), loader=(ImageLoader, {}), timeout_s=120)
    page = parse(tmp_path / "meta" / "report.html")
    tags = [t for t, _ in page.elements]
    assert "script" not in tags and "svg" not in tags and "i" not in tags and "b" not in tags
    assert not [(t, a) for t, a in page.elements for name in a if name.lower().startswith("on")]
    assert not [a for a in page.imgs() if a.get("src") == "x"]
    text = "".join(page.text)
    for value in (src, other, HOSTILE["id"], HOSTILE["question"], HOSTILE["answer"], HOSTILE["error"],
                  HOSTILE["run_id"], "m<odel>"):
        assert value in text, value
    links = [a["href"] for t, a in page.elements if t == "a"]
    assert source_href(src) in links and source_href(other) in links   # the attribute reads back exactly
    assert_self_contained(page)
    # both answered rows are in the gallery with a picture re-read from their (hostile-named) source
    thumbs = [a for a in page.imgs() if a.get("src", "").startswith("data:image/jpeg")]
    assert len(thumbs) == 2 and {a["alt"] for a in thumbs} == {HOSTILE["id"], "b"}


def test_figures_are_for_people(tmp_path):
    assert fmt_number(0.9672000000000001) == "0.967" and fmt_number(1523.7) == "1,524" and fmt_number(12.34) == "12.3"
    assert fmt_seconds(125.4) == "2 min 05 s" and fmt_seconds(4.25) == "4.2 s"
    table, _, _ = hostile_table(tmp_path)
    table = RunStats.of_table(table)
    summary = summarise(table, "r1", 4, 83.123456, "m", {"anchor_weight": 0.30000000000000004},
                        {"odd_extra": 0.9672000000000001})
    write_report(table, summary, str(tmp_path / "meta"))
    html = (tmp_path / "meta" / "report.html").read_text()
    assert "0.9672000000000001" not in html and "0.30000000000000004" not in html and "83.12" not in html
    text = "".join(parse(tmp_path / "meta" / "report.html").text)
    assert "1 min 23 s" in text and "anchor_weight=0.3" in text and "0.9672" in text


def test_gallery_picks_the_least_confident_and_a_sample_of_sure_ones():
    import pandas as pd

    conf = [0.2, 0.95, 0.5, 0.99, 0.3, 0.97, float("nan"), 0.92]
    df = pd.DataFrame({"confidence": conf, "status": ["ok"] * 6 + ["error", "ok"]})
    low, high = pick_gallery(df, "r", unsure=3, sure=2)
    assert low == [0, 4, 2] and len(high) == 2 and set(high) <= {1, 3, 5, 7}
    assert pick_gallery(df, "r", unsure=3, sure=2) == (low, high)     # the same run shows the same sample


def _decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")).astype(int)


def test_thumbnail_and_scene_overview_draw_the_boxes():
    grey = Image.new("RGB", (640, 480), (128, 128, 128))
    pic = thumbnail(grey, [320, 240, 480, 400])                  # half scale: box at 160..240 x 120..200
    px = _decode(pic.uri)
    assert (pic.width, pic.height) == (320, 240) and abs(px[160, 161] - [0, 200, 255]).max() < 60
    assert abs(px[60, 60] - 128).max() < 10
    scene = draw_scene(grey, 0.5, [([0, 0, 320, 320], [100, 100, 200, 200]), ([320, 0, 320, 320], None)])
    px = _decode(scene.uri)
    assert abs(px[80, 1] - [255, 200, 0]).max() < 60              # yellow tile edge
    assert abs(px[75, 51] - [0, 200, 255]).max() < 60 and abs(px[40, 40] - 128).max() < 10


def test_hostile_names_through_a_whole_run(ray_local, random_tiny_dir, tmp_path, fast_policy):
    """A vqa run over files and a manifest that carry markup: the committed report is still inert text."""
    import json

    from pipelines.job import JobOptions, run_job
    from pipelines.runs import RunPaths
    from pipelines.vqa import read_manifest

    good = Path(_image(tmp_path / HOSTILE["source"], (40, 90, 200)))
    (tmp_path / HOSTILE["other"]).write_bytes(b"not an image <at all>")
    lines = [{"id": HOSTILE["id"], "image_uri": good.name, "question": HOSTILE["question"], "choices": ["<yes>", "no&"]},
             {"id": "<b>2</b>", "image_uri": HOSTILE["other"], "question": "is it <ok> ?", "choices": ["yes", "no"]}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    opts = JobOptions(str(tmp_path / "m.jsonl"), str(tmp_path / "out"), str(random_tiny_dir), policy=fast_policy,
                      run_id="hostile")
    run_job("vqa", opts, read_manifest(opts.input))
    page = parse(Path(RunPaths(opts.output, "hostile").meta) / "report.html")
    assert {t for t, _ in page.elements} <= {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2",
                                            "h3", "p", "span", "section", "div", "img", "table", "tr", "th", "td",
                                            "a", "code", "br"}
    assert not [(t, a) for t, a in page.elements for name in a if name.lower().startswith("on")]
    assert_self_contained(page)
    text = "".join(page.text)
    for value in (HOSTILE["id"], HOSTILE["question"], str(good), str(tmp_path / HOSTILE["other"]), "<b>2</b>"):
        assert value in text, value
    assert any(a in text for a in ("<yes>", "no&"))


def test_a_run_with_no_answered_row_gets_its_report(tmp_path):
    """Every row an error, its numbers null (as the job stores them): the gallery's pick must not fail on a
    column of nothing but nulls, or the run could never be committed."""
    import pandas as pd

    rows = [_row(id=f"e{i}", status="error", error="unreadable scene: complex-valued bands", answer="",
                 confidence=None, entropy_initial=None, entropy_final=None, entropy_trace=[], boxes=[],
                 forward_passes=0, evidence_box=None) for i in range(3)]
    assert pick_gallery(pd.DataFrame(rows), "r") == ([], [])
    table = RunStats.of_table(typed_table({k: [r[k] for r in rows] for k in rows[0]}))
    summary = summarise(table, "r", 3, 1.0, "m", {})
    write_report(table, summary, str(tmp_path / "meta"), loader=(ImageLoader, {}), timeout_s=120)
    assert "complex-valued bands" in "".join(parse(tmp_path / "meta" / "report.html").text)
