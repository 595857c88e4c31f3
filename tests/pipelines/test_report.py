"""report.html: self-contained, figures for people, a gallery from the sources, everything escaped."""

import base64
import html as htmlmod
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from pipelines.gallery import draw_scene, scene_overview, thumbnail
from pipelines.planning import id_hashes
from pipelines.report import TEXT_SHOWN, fmt_number, fmt_seconds, pick_gallery, source_href, summarise, write_report
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
    df = pd.DataFrame({"id": list("abcdefgh"), "confidence": conf, "status": ["ok"] * 6 + ["error", "ok"]})
    low, high = pick_gallery(df, unsure=3, sure=2)
    assert low == [0, 4, 2] and len(high) == 2 and set(high) <= {1, 3, 5, 7}
    assert conf[high[0]] >= conf[high[1]]                              # most confident first
    assert pick_gallery(df.iloc[::-1], unsure=3, sure=2) == (low, high)  # chosen by id, not by row order


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


def test_a_strip_a_pixel_wide_is_framed_with_its_box():
    """A 1 x 4000 image made a 1 x 320 thumbnail, which the page stretched to the card's width: a page 90,000
    px tall; a 4000 x 1 one a line with its box invisible. At most 4:1, centred on a grey frame."""
    tall = thumbnail(Image.new("RGB", (1, 4000), (0, 0, 0)), [0, 2000, 1, 2400])
    assert (tall.width, tall.height) == (80, 320)
    px = _decode(tall.uri)
    strip = int(px[100].sum(-1).argmin())
    assert 36 <= strip <= 42 and px[100, strip].max() < 40 and abs(px[100, 5] - 238).max() < 20   # strip, frame
    assert abs(px[170, strip] - [0, 200, 255]).max() < 80 and abs(px[100, strip] - [0, 200, 255]).max() > 80  # box
    wide = thumbnail(Image.new("RGB", (4000, 1), (0, 0, 0)), None)
    assert (wide.width, wide.height) == (320, 80)


def test_hostile_names_through_a_whole_run(ray_local, random_tiny_dir, tmp_path, fast_policy):
    """A vqa run over files and a manifest that carry markup: the committed report is still inert text."""
    import json

    from pipelines.job import JobOptions, run_job
    from pipelines.runs import RunPaths
    from pipelines.vqa import read_manifest

    good = Path(_image(tmp_path / HOSTILE["source"], (40, 90, 200)))
    (tmp_path / HOSTILE["other"]).write_bytes(b"not an image <at all>")
    # choices with markup are read by no word-piece model, so they are a row's error text (shown escaped)
    lines = [{"id": HOSTILE["id"], "image_uri": good.name, "question": HOSTILE["question"], "choices": ["yes", "no"]},
             {"id": "<b>2</b>", "image_uri": HOSTILE["other"], "question": "is it <ok> ?", "choices": ["yes", "no"]},
             {"id": "<i>3</i>", "image_uri": good.name, "question": "is it ?", "choices": ["<yes>", "no&"]}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    opts = JobOptions(str(tmp_path / "m.jsonl"), str(tmp_path / "out"), str(random_tiny_dir), policy=fast_policy,
                      run_id="hostile")
    run_job("vqa", opts, read_manifest(opts.input))
    page = parse(Path(RunPaths(opts.output, "hostile").meta) / "report.html")
    assert {t for t, _ in page.elements} <= {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2",
                                            "h3", "p", "span", "section", "div", "img", "table", "tr", "th", "td",
                                            "a", "code", "br", "bdi"}
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
    assert pick_gallery(pd.DataFrame(rows)) == ([], [])
    table = RunStats.of_table(typed_table({k: [r[k] for r in rows] for k in rows[0]}))
    summary = summarise(table, "r", 3, 1.0, "m", {})
    write_report(table, summary, str(tmp_path / "meta"), loader=(ImageLoader, {}), timeout_s=120)
    page = parse(tmp_path / "meta" / "report.html")
    assert "complex-valued bands" in "".join(page.text)
    # no histogram of nothing (its axis ran from -0.04 to 0.04): a line saying so, and no entropy.png
    assert not [a for a in page.imgs() if "plot" in a.get("class", "")] and "no answered rows" in "".join(page.text)
    assert not (tmp_path / "meta" / "entropy.png").exists()


# ---------------------------------------------------------------------------------------------- helpers
def _html(path) -> str:
    return Path(path).read_text(encoding="utf-8")


def _strip(fragment: str) -> str:
    return htmlmod.unescape(re.sub(r"<[^>]*>", "", fragment)).strip()


def answer_counts(page: str) -> dict:
    """{question heading: ({answer: items}, the lines under its table)} from the "Answers per question" section."""
    section = page.split("<h2>Answers per question</h2>")[1].split("</section>")[0]
    out = {}
    for block in section.split("<h3>")[1:]:
        heading, body = block.split("</h3>", 1)
        rows = re.findall(r"<tr><td>(.*?)</td><td class='num'>([\d,]+)</td>", body)
        out[_strip(heading)] = ({_strip(a): int(n.replace(",", "")) for a, n in rows}, _strip(body.split("</table>")[-1]))
    return out


def gallery_ids(page: str) -> tuple[list, list]:
    """(ids of the least confident cards, ids of the confident cards), in page order."""
    gallery = page.split("<h2>Gallery</h2>")[1].split("</section>")[0]
    low, high = gallery.split("<h3>A sample of confident answers")

    def ids(part):
        return [_strip(m) for m in re.findall(r"id <code>(.*?)</code>", part)]

    return ids(low), ids(high)


def _stats(rows: list[dict], block: int = 256) -> tuple[RunStats, list]:
    """The run's RunStats merged per block, as the job collects them, and the blocks (the run's rows)."""
    blocks = [typed_table({k: [r.get(k) for r in rows[i:i + block]] for k in rows[0]})
              for i in range(0, len(rows), block)]
    stats = RunStats()
    for b in blocks:
        stats.merge(RunStats.of_table(b))
    return stats, blocks


class Rows:
    """A run's rows as ``RunResults`` offers them to the report (a Ray dataset, block by block)."""

    def __init__(self, blocks):
        self.blocks = blocks

    def dataset(self, columns=None):
        import ray

        ds = ray.data.from_arrow(self.blocks)
        return ds.select_columns(columns) if columns else ds


def _write(tmp_path, rows, results=False, loader=None, run_id="r") -> str:
    stats, blocks = _stats(rows)
    summary = summarise(stats, run_id, len(rows), 1.0, "m", {})
    meta = tmp_path / "meta"
    write_report(stats, summary, str(meta), loader=loader, timeout_s=120, results=Rows(blocks) if results else None)
    return _html(meta / "report.html")


# ---------------------------------------------------------------------------------------------- answers
def test_answer_counts_are_exact_for_every_row(ray_local, tmp_path):
    """Counts over every answered row, not the first answers or questions seen: the most frequent answer is
    listed even after 50 rare ones, what is not listed is counted exactly, a real answer "(other answers)" is
    an answer like any other, and questions not shown are said to be."""
    qa = [("what colour ?", f"rare-{i}") for i in range(50)] + [("what colour ?", "blue")] * 500
    qa += [("what is the code ?", f"code-{i}") for i in range(1000)]
    qa += [("is it ok ?", "yes")] * 3 + [("is it ok ?", "(other answers)")] * 5
    qa += [(f"question {k:03d} ?", "a") for k in range(150)]
    rows = [_row(id=f"i{i}", question=q, answer=a, confidence=0.5) for i, (q, a) in enumerate(qa)]
    counts = answer_counts(_write(tmp_path, rows, results=True))

    colour, note = counts["what colour ?"]
    assert colour["blue"] == 500 and len(colour) == 20
    assert "31 more distinct answers, 31 items" in note                # 51 answers, 20 listed (blue and 19 rare)
    code, note = counts["what is the code ?"]
    assert len(code) == 20 and set(code.values()) == {1} and "980 more distinct answers, 980 items" in note
    ok, note = counts["is it ok ?"]
    assert ok == {"(other answers)": 5, "yes": 3} and "not listed" not in note
    assert len(counts) == 100                                           # the 3 big questions and 97 of 150
    section = _html(tmp_path / "meta" / "report.html").split("<h2>Answers per question</h2>")[1]
    assert "53 more questions (53 answered items) not shown" in _strip(section.split("</section>")[0])


def test_answer_counts_of_an_open_field_on_many_pages_stay_bounded_and_say_how_far_off(monkeypatch):
    """Past ``ANSWERS_KEPT`` distinct answers the tally keeps the most frequent and says by how much a count
    may be low: every kept count is within that of the truth, every answer given more often is kept, and
    the page says so. (A cap of 40 stands in for 50,000.)"""
    import pipelines.report as report

    monkeypatch.setattr(report, "ANSWERS_KEPT", 40)
    rng = np.random.default_rng(0)
    # a code read once per page, a few codes read on many pages, and a closed question beside them
    codes = [f"code-{i}" for i in range(3000)] + [f"common-{k}" for k in range(5) for _ in range(60 + 20 * k)]
    codes = list(rng.permutation(codes))
    rows = [_row(id=f"p{i}", field="reference", question="what is the code ?", answer=a) for i, a in enumerate(codes)]
    rows += [_row(id=f"t{i}", question="is it ticked ?", answer="yes" if i % 3 else "no") for i in range(900)]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    total = report.Tally()
    for start in range(0, len(rows), 100):
        total.merge(report.Tally.of_table(pa.Table.from_pylist(rows[start:start + 100])))
        assert total.kept == sum(map(len, total.answers.values())) <= 80

    truth: dict = {}
    for r in rows:
        key = (r.get("field") or "", r["question"], r["choices"])
        truth.setdefault(key, {}).setdefault(r["answer"], 0)
        truth[key][r["answer"]] += 1
    assert 0 < total.undercount < 60
    for question, counts in truth.items():
        for answer, n in counts.items():
            kept = total.answers.get(question, {}).get(answer)
            if n > total.undercount:
                assert kept is not None, f"{answer} given {n} times is missing"
            if kept is not None:
                assert n - total.undercount <= kept <= n
    page = _strip(report._answers_section(total.answers, total.caveat))
    assert f"may be low by up to {total.undercount} items" in page and "most frequent answers" in page


def test_questions_that_share_their_words_are_counted_apart(ray_local, tmp_path):
    """A question file may ask the same words twice (other choices, or other field names): the page added
    their answers together ("8 answered items" for two questions of 4 each). Each is counted under its own
    heading; the choices are shown where they are what tells two apart."""
    rows = [_row(id=f"a{i}", question="is there a boat ?", answer="yes") for i in range(4)]
    rows += [_row(id=f"b{i}", question="is there a boat ?", choices='["yes", "no", "unsure"]', answer="unsure")
             for i in range(3)]
    rows += [_row(id=f"c{i}", field=name, question="what is the code ?", choices="", answer="K7")
             for name in ("reference", "invoice") for i in range(2)]
    rows = [{"field": None, **r} for r in rows]
    counts = answer_counts(_write(tmp_path, rows, results=True))
    assert counts["is there a boat ? (yes, no)"][0] == {"yes": 4}
    assert counts["is there a boat ? (yes, no, unsure)"][0] == {"unsure": 3}
    assert counts["reference: what is the code ?"][0] == {"K7": 2} and counts["invoice: what is the code ?"][0] == {"K7": 2}


def test_answer_counts_under_the_cap_are_exact_and_carry_no_caveat():
    import pipelines.report as report

    rows = [_row(id=f"p{i}", answer=f"a{i % 7}") for i in range(300)]
    t = report.Tally.of_table(pa.Table.from_pylist(rows[:150])).merge(report.Tally.of_table(pa.Table.from_pylist(rows[150:])))
    assert t.answers == {("", "q ?", '["yes", "no"]'): {f"a{k}": 43 if k < 6 else 42 for k in range(7)}}
    assert t.undercount == 0 and t.caveat == "" and t.kept == 7


# ---------------------------------------------------------------------------------------------- gallery
def test_confident_cards_are_chosen_from_every_confident_row(ray_local, tmp_path):
    """20 confident rows in 2,000: the gallery shows 6 of them, the same 6 every time (those of smallest id
    hash), whichever rows the statistics' random sample happened to hold."""
    rows = [_row(id=f"item-{i:05d}", confidence=0.95 if i % 100 == 7 else 0.5 + i / 10_000) for i in range(2000)]
    low, high = gallery_ids(_write(tmp_path, rows, results=True))
    sure = [r["id"] for r in rows if r["confidence"] >= 0.9]
    by_hash = [sure[i] for i in np.argsort(id_hashes(pa.array(sure)))]
    assert sorted(high) == sorted(by_hash[:6])
    assert low == [f"item-{i:05d}" for i in range(13) if i != 7]       # the 12 least confident, lowest first


def test_gallery_shows_every_answered_row_of_a_small_run(tmp_path):
    """A run of 5 answered rows shows all 5 (they are its least confident), whatever their confidence; a
    larger one the 12 least confident, then up to 6 others of confidence >= 0.9, none in both."""
    rows = [_row(id=f"s{i}", confidence=c) for i, c in enumerate([0.99, 0.2, 0.77, 0.95, 0.78])]
    low, high = gallery_ids(_write(tmp_path, rows))
    assert low == ["s1", "s2", "s4", "s3", "s0"] and high == []
    rows = [_row(id=f"m{i}", confidence=c) for i, c in enumerate([*np.linspace(0.3, 0.6, 20), *[0.95] * 10])]
    low, high = gallery_ids(_write(tmp_path, rows))
    assert low == [f"m{i}" for i in range(12)] and len(high) == 6 and not set(low) & set(high)
    assert all(rows[int(i[1:])]["confidence"] >= 0.9 for i in high)


# ---------------------------------------------------------------------------------------------- text
SPOOF = "invoice-\u202efdp.exe"


def test_text_cannot_reorder_the_page_or_carry_control_characters(tmp_path):
    """A right-to-left override in a file name, an id or an answer is shown as a visible mark, each user text
    is isolated (<bdi>), and a NUL from a question never reaches the page."""
    src = _image(tmp_path / SPOOF, (90, 90, 200))
    rows = [_row(id="spoof-\u202e1 si sihT", source=src, question="is it\x00 safe ?\x1b", answer="yes\u2066",
                 confidence=0.1),
            _row(id="plain", source=src, status="error", error=f"unreadable image: {SPOOF}", answer="",
                 confidence=float("nan"))]
    page = _write(tmp_path, rows, loader=(ImageLoader, {}))
    for char in ("\u202e", "\u2066", "\x00", "\x1b"):
        assert char not in page, repr(char)
    parsed = Page()
    parsed.feed(page)
    assert_self_contained(parsed)
    text = "".join(parsed.text)
    assert "invoice-[U+202E]fdp.exe" in text and "spoof-[U+202E]1 si sihT" in text and "is it\ufffd safe ?" in text
    # every such text is a <bdi> of its own, so what follows it keeps its order
    assert len(re.findall(r"<bdi>[^<]*invoice-\[U\+202E\]fdp\.exe</bdi>", page)) >= 2   # card link, error table
    assert "<bdi>spoof-[U+202E]1 si sihT</bdi>" in page
    assert [a for t, a in parsed.elements if t == "a"][0]["href"] == source_href(src)   # the link still works
    assert "%E2%80%AE" in source_href(src) and "\u202e" not in source_href("s3://b/" + SPOOF)


def test_long_texts_are_cut_with_an_ellipsis(tmp_path):
    """A 10,000-character id, question and answer, and 300 token confidences: a card shows at most
    TEXT_SHOWN characters of each (the rest in its tooltip), and unbroken texts may wrap anywhere."""
    rows = [_row(id="I" * 10_000, question="Q" * 10_000, answer="A" * 10_000, confidence=0.2,
                 token_confidences=[0.5] * 300),
            _row(id="e", status="error", error="unreadable image: " + "E" * 10_000, confidence=float("nan"))]
    page = _write(tmp_path, rows)
    parsed = Page()
    parsed.feed(page)
    text = "".join(parsed.text)
    runs = [len(m.group()) for m in re.finditer(r"([IQAE])\1{99,}", text)]   # the id, question, answer, error
    assert len(runs) >= 4 and max(runs) <= TEXT_SHOWN and "\u2026" in text
    titles = [a["title"] for t, a in parsed.elements if t == "bdi" and "title" in a]
    assert "A" * 4000 in "".join(titles)                                # the text is there, in the tooltip
    assert text.count("50.0 %") <= 40 and "(300 tokens)" in text
    assert "overflow-wrap:anywhere" in "".join(parsed.style)


# ---------------------------------------------------------------------------------------------- empty run
def test_a_run_of_no_items_gets_a_short_report(tmp_path):
    stats = RunStats()
    summary = summarise(stats, "empty", 0, 0.5, "m", {},
                        {"skipped_sources": {"count": 1, "by_reason": {"not a raster format: .txt": 1},
                                             "named": ["notes.txt"]}})
    write_report(stats, summary, str(tmp_path / "meta"), loader=(ImageLoader, {}))
    page = parse(tmp_path / "meta" / "report.html")
    text = "".join(page.text)
    assert "This run had no items" in text and "not a raster format: .txt" in text
    assert "Gallery" not in text and not page.imgs() and not (tmp_path / "meta" / "entropy.png").exists()


# ---------------------------------------------------------------------------------------------- scenes
def _scene(path: Path, data: np.ndarray, **kw) -> str:
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype.name, crs="EPSG:32633", transform=from_origin(400000, 5050000, 10, 10),
                       **kw) as ds:
        ds.write(data)
    return str(path)


def _bright(rgb: np.ndarray) -> list:
    """Per channel R, G, B: the quadrants (TL, TR, BL, BR) where it is bright."""
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    quads = {"TL": rgb[:h, :w], "TR": rgb[:h, w:], "BL": rgb[h:, :w], "BR": rgb[h:, w:]}
    return [[q for q, v in quads.items() if v[..., c].mean() > 128] for c in range(3)]


def test_scene_overview_shows_the_bands_the_tiles_show(tmp_path):
    """``--bands`` is 1-based, for the tiles and the overview alike: band k carries a bright quadrant of its own."""
    a = np.full((4, 200, 200), 20, np.uint8)
    a[0, :100, :100] = a[1, :100, 100:] = a[2, 100:, :100] = a[3, 100:, 100:] = 250
    four, three = _scene(tmp_path / "four.tif", a), _scene(tmp_path / "three.tif", a[:3])
    assert _bright(np.asarray(scene_overview(four, None, (3, 2, 1))[0])) == [["BL"], ["TR"], ["TL"]]
    assert _bright(np.asarray(scene_overview(three, None, (3, 2, 1))[0])) == [["BL"], ["TR"], ["TL"]]
    assert _bright(np.asarray(scene_overview(three, None, None)[0])) == [["TL"], ["TR"], ["BL"]]   # its own bands
    grey = np.asarray(scene_overview(four, None, (4,))[0])
    assert _bright(grey) == [["BR"]] * 3                                 # one band: grey, as the tiles are


def test_scene_overview_is_drawn_as_the_tiles_are(tmp_path):
    """8-bit data as stored, other data over the scene's (or, under --stretch tile, its own) 2-98 % range,
    nodata grey: the overview of a scene small enough to be shown whole is its one tile, pixel for pixel."""
    from pipelines.satellite import SceneTileLoader

    rng = np.random.default_rng(5)
    dull = rng.integers(100, 150, (3, 120, 160)).astype(np.uint8)          # 8-bit: not stretched
    deep = rng.normal(900, 120, (3, 120, 160)).clip(0, 4000).astype(np.uint16)
    deep[:, 10:20, 10:30] = 0                                               # nodata
    scenes = {"dull.tif": _scene(tmp_path / "dull.tif", dull), "deep.tif": _scene(tmp_path / "deep.tif", deep, nodata=0)}
    for name, uri in scenes.items():
        for stretch in ("scene", "tile"):
            overview, scale = scene_overview(uri, None, None, stretch)
            tile = SceneTileLoader(bands=None, stretch=stretch).read(
                {"source": uri, "tile_col_off": 0, "tile_row_off": 0, "tile_width": 160, "tile_height": 120})
            assert scale == 1.0 and np.array_equal(np.asarray(overview), tile), (name, stretch)
    assert np.array_equal(np.asarray(scene_overview(scenes["dull.tif"])[0]), np.moveaxis(dull, 0, -1))


def test_an_empty_run_commits_its_short_report(tmp_path, random_tiny_dir, fast_policy):
    """An input of no items still commits a run; its report says there were none."""
    from pipelines.job import JobOptions, run_job
    from pipelines.runs import RunPaths

    (tmp_path / "m.jsonl").write_text("")
    opts = JobOptions(str(tmp_path / "m.jsonl"), str(tmp_path / "out"), str(random_tiny_dir), policy=fast_policy,
                      run_id="empty")
    run_job("vqa", opts, [])
    report = Path(RunPaths(opts.output, "empty").meta) / "report.html"
    assert report.exists(), "no report.html"
    assert "This run had no items" in "".join(parse(report).text)


def test_scene_overviews_are_per_question_of_the_file_even_when_two_share_their_words(tmp_path):
    """Two entries of a question file with the same words (other choices): the overview added their tiles
    together, "8 of 12 tiles answered yes" for a scene of 6 tiles. One overview per entry, named by field."""
    import pandas as pd

    import pipelines.report as report

    scene = _scene(tmp_path / "s.tif", np.full((3, 100, 100), 90, np.uint8))
    rows = [{"source": scene, "question_index": qi, "field": f"q{qi}", "question": "is there a boat ?",
             "status": "ok", "answer": "yes" if t < 2 + qi else "no", "evidence_box": None,
             "tile_col_off": 50 * (t % 2), "tile_row_off": 50 * (t // 2), "tile_width": 50, "tile_height": 50}
            for qi in (0, 1) for t in range(4)]
    page = _strip(report._scenes_section(pd.DataFrame(rows, columns=report.SCENE_COLUMNS), None, None))
    assert page.count(" of 4 tiles answered yes") == 2, page
    assert "q0: is there a boat ?" in page and "2 of 4 tiles answered yes" in page
    assert "q1: is there a boat ?" in page and "3 of 4 tiles answered yes" in page


def test_an_empty_open_answer_reads_empty_on_its_card():
    """The answer counts said (empty); the gallery card showed nothing before its confidence."""
    from pipelines.report import _card

    row = {"id": "a", "source": "a.png", "question": "what is the code ?", "answer": "", "confidence": 0.0,
           "forward_passes": 1, "status": "ok"}
    assert "<span class='a'><span class='muted'>(empty)</span></span>" in _card(row, None)
    read = _card({**row, "answer": "K7"}, None)
    assert "(empty)" not in read and "K7" in read
