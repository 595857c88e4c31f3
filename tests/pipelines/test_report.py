"""report.html: everything a user or a file supplies is escaped, and reads back exactly."""

from html.parser import HTMLParser

from pipelines.report import summarise, write_report
from pipelines.stages import typed_table

HOSTILE = {
    "source": "inbox/<img src=x onerror=alert(1)>.png",
    "other": "inbox/scan <copy 2> R&D.png",
    "id": "<script>alert('id')</script>/p0",
    "question": 'is the box "ticked" <b>now</b> ?',
    "answer": "<i>yes</i>",
    "error": "unreadable image: <svg onload=alert(2)> & co",
    "run_id": "night<1>&'\"",
}


class Page(HTMLParser):
    """Every element with its attributes, and the page's text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _row(**kw):
    base = {"id": "a", "source": "a.png", "question": "q ?", "choices": '["yes", "no"]', "answer": "yes",
            "confidence": 0.9, "entropy_initial": 0.6, "entropy_final": 0.2, "entropy_trace": [0.6, 0.2],
            "boxes": [[0, 0, 4, 4]], "forward_passes": 2, "latency_ms": 10.0, "status": "ok", "error": "",
            "model": "m", "policy": "{}", "run_id": HOSTILE["run_id"], "actor": "h:1"}
    return {**base, **kw}


def hostile_table():
    rows = [_row(id=HOSTILE["id"], source=HOSTILE["source"], question=HOSTILE["question"], answer=HOSTILE["answer"]),
            _row(id="b", source=HOSTILE["other"]),
            _row(id="c", source=HOSTILE["other"], status="error", error=HOSTILE["error"], answer="",
                 confidence=float("nan"), entropy_trace=[], boxes=[], forward_passes=0),
            _row(id="d<>", source=HOSTILE["source"], status="error", error=HOSTILE["error"] + " again", answer="",
                 confidence=float("nan"), entropy_trace=[], boxes=[], forward_passes=0)]
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    return typed_table(cols)


def test_report_escapes_everything_a_user_or_file_supplies(tmp_path):
    table = hostile_table()
    summary = summarise(table, HOSTILE["run_id"], 4, 1.0, "m<odel>", {})
    write_report(table, summary, str(tmp_path))
    page = parse(tmp_path / "report.html")
    tags = [t for t, _ in page.elements]
    assert "script" not in tags and "svg" not in tags and "i" not in tags and "b" not in tags
    handlers = [(t, a) for t, a in page.elements for name in a if name.lower().startswith("on")]
    assert not handlers, handlers
    assert not [a for t, a in page.elements if t == "img" and a.get("src") == "x"]
    text = "".join(page.text)
    for value in (HOSTILE["source"], HOSTILE["other"], HOSTILE["error"], HOSTILE["run_id"], "m<odel>"):
        assert value in text, value
