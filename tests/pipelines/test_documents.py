import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from pipelines.documents import (DEFAULT_QUESTIONS, LEDGER, PageLoader, list_documents, listed_fingerprint,
                                 plan_documents, plan_pages, read_ledger, run)
from pipelines.job import JobOptions
from pipelines.pdfs import open_pdf
from pipelines.questions import load_questions
from pipelines.runs import RunPaths

REPO = Path(__file__).parents[2]
ONE_QUESTION = "- question: is the red box ticked ?\n  choices: [yes, no]\n"


def _page(seed: int, size=(600, 800)) -> Image.Image:
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    x, y = rng.integers(20, min(size) - 60, 2)
    d.rectangle([x, y, x + 30, y + 30], outline=(215, 25, 25), width=3)
    d.text((x + 10, y + 8), str(rng.integers(10)), fill="black")
    return im


def _pdf(path: Path, pages: int, seed: int):
    imgs = [_page(seed * 10 + p) for p in range(pages)]
    imgs[0].save(path, save_all=True, append_images=imgs[1:])


def _ledger(out: Path) -> dict:
    t = pq.read_table(out / LEDGER)
    return {r["source"]: r for r in t.to_pylist()}


def test_documents_incremental_and_idempotent(ray_local, random_tiny_dir, tmp_path, fast_policy, capsys):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    _pdf(inbox / "a.pdf", 2, 0)
    _pdf(inbox / "b.pdf", 1, 1)
    Image.new("RGB", (400, 300), "white").save(inbox / "scan.png")
    (inbox / "broken.pdf").write_bytes(b"%PDF-1.4 truncated nonsense")
    qs = tmp_path / "q.yaml"
    qs.write_text(ONE_QUESTION)
    opts = JobOptions(str(inbox), str(out), str(random_tiny_dir), policy=fast_policy)

    night1 = run(opts, str(qs), dpi=50, run_date="2026-11-24")
    assert night1["documents_processed"] == 4 and night1["items_in"] == 2 + 1 + 1 + 1
    df = pq.read_table(RunPaths(str(out), "documents-2026-11-24").results).to_pandas()
    assert df["id"].is_unique and len(df) == 5
    broken = df[df.document == "broken.pdf"].iloc[0]
    assert broken.status == "error" and broken.error.startswith("unreadable PDF: truncated")
    assert sorted(df[df.document == "a.pdf"].page) == [0, 1]
    ledger = _ledger(out)
    assert set(ledger) == {str(inbox / n) for n in ("a.pdf", "b.pdf", "scan.png", "broken.pdf")}
    assert ledger[str(inbox / "a.pdf")]["pages"] == 2 and ledger[str(inbox / "a.pdf")]["items"] == 2
    assert ledger[str(inbox / "a.pdf")]["fingerprint"].startswith("size-mtime:")

    same_night = run(opts, str(qs), dpi=50, run_date="2026-11-24")          # idempotent
    assert same_night["run_id"] == "documents-2026-11-24"
    assert len(pq.read_table(RunPaths(str(out), "documents-2026-11-24").results)) == 5
    with pytest.raises(ValueError, match=r"documents-2026-11-24 is committed with other settings \(dpi 50 -> 100\)"):
        run(opts, str(qs), dpi=100, run_date="2026-11-24")                   # not night 1's rows for another dpi

    _pdf(inbox / "b.pdf", 3, 2)                                               # changed
    _pdf(inbox / "c.pdf", 1, 3)                                               # new
    night2 = run(opts, str(qs), dpi=50, run_date="2026-11-25")
    assert night2["documents_seen"] == 5 and night2["documents_processed"] == 2
    df2 = pq.read_table(RunPaths(str(out), "documents-2026-11-25").results).to_pandas()
    assert sorted(set(df2.document)) == ["b.pdf", "c.pdf"] and len(df2) == 4
    ledger = _ledger(out)
    assert ledger[str(inbox / "b.pdf")]["run_id"] == "documents-2026-11-25"
    assert ledger[str(inbox / "b.pdf")]["pages"] == 3
    assert ledger[str(inbox / "a.pdf")]["run_id"] == "documents-2026-11-24"

    run(opts, str(qs), dpi=50, run_date="2026-11-24")                        # night 1 asked for again
    assert _ledger(out) == ledger                                            # b.pdf stays night 2's, as changed

    night3 = run(opts, str(qs), dpi=50, run_date="2026-11-26")               # nothing new: a clean, empty run
    assert night3["items_in"] == 0 and night3["documents_processed"] == 0
    assert Path(RunPaths(str(out), "documents-2026-11-26").marker).exists()

    forced = run(JobOptions(**{**opts.__dict__, "force": True}), str(qs), dpi=50, run_date="2026-11-24")
    assert forced["documents_processed"] == 3 and forced["items_in"] == 2 + 1 + 1   # b.pdf is night 2's now
    df1 = pq.read_table(RunPaths(str(out), "documents-2026-11-24").results).to_pandas()
    assert sorted(set(df1.document)) == ["a.pdf", "broken.pdf", "scan.png"] and df1["id"].is_unique
    ledger = _ledger(out)
    assert ledger[str(inbox / "a.pdf")]["run_id"] == "documents-2026-11-24"
    assert ledger[str(inbox / "b.pdf")]["run_id"] == "documents-2026-11-25"

    other = tmp_path / "other"
    other.mkdir()
    _pdf(other / "d.pdf", 1, 4)
    with pytest.raises(ValueError, match=r"--force would drop the answers of 3 document\(s\) of run documents-2026-11-24"):
        run(JobOptions(**{**opts.__dict__, "input": str(other), "force": True}), str(qs), dpi=50, run_date="2026-11-24")
    assert pq.read_table(RunPaths(str(out), "documents-2026-11-24").results).num_rows == len(df1)   # night 1 stands
    assert _ledger(out) == ledger

    qs.write_text(ONE_QUESTION + "- question: what is the reference code ?\n  field: reference\n")   # a new question
    night4 = run(opts, str(qs), dpi=50, run_date="2026-11-27")
    assert night4["documents_processed"] == 5 and night4["items_in"] == 2 * (2 + 3 + 1 + 1 + 1)
    df4 = pq.read_table(RunPaths(str(out), "documents-2026-11-27").results).to_pandas()
    assert set(df4.field) == {"q0", "reference"} and df4["id"].is_unique
    ledger = _ledger(out)
    assert {r["run_id"] for r in ledger.values()} == {"documents-2026-11-27"}
    assert len({r["settings"] for r in ledger.values()}) == 1 and ledger[str(inbox / "a.pdf")]["settings"]
    night5 = run(opts, str(qs), dpi=50, run_date="2026-11-28")               # the same questions: nothing new
    assert night5["documents_processed"] == 0

    _pdf(inbox / "late.pdf", 1, 5)                                            # arrives after night 5 was committed
    capsys.readouterr()
    again = run(opts, str(qs), dpi=50, run_date="2026-11-28")
    said = capsys.readouterr().out
    assert again["documents_processed"] == 0 and "late.pdf" not in str(_ledger(out))
    assert "run documents-2026-11-28 is already committed" in said
    assert "run documents-2026-11-28 stands; the 1 document(s) above" in said
    with pytest.raises(ValueError, match="is committed with other settings"):  # said it stood, then refused it
        run(opts, str(qs), dpi=60, run_date="2026-11-28")
    assert "stands" not in capsys.readouterr().out


def test_a_file_whose_time_alone_changed_is_not_read_again(ray_local, random_tiny_dir, tmp_path, fast_policy,
                                                           capsys):
    """A size-and-time fingerprint read a touched file again (a copy or a restore that does not keep times
    re-read every document); the content's hash, kept beside it, tells: a touched file gives no rows, one
    changed within the same size is read again."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    _pdf(inbox / "a.pdf", 1, 0)
    Image.new("RGB", (400, 300), "white").save(inbox / "scan.bmp")
    qs = tmp_path / "q.yaml"
    qs.write_text(ONE_QUESTION)
    opts = JobOptions(str(inbox), str(out), str(random_tiny_dir), policy=fast_policy)
    assert run(opts, str(qs), dpi=50, run_date="2026-11-24")["documents_processed"] == 2
    first = _ledger(out)
    assert all(re.fullmatch(r"size-mtime:\d+:[\d.]+\|sha256:[0-9a-f]{64}", r["fingerprint"]) for r in first.values())

    for name in ("a.pdf", "scan.bmp"):
        os.utime(inbox / name, (1_900_000_000, 1_900_000_000))              # touched: the same bytes
    capsys.readouterr()
    touched = run(opts, str(qs), dpi=50, run_date="2026-11-25")
    said = capsys.readouterr().out
    assert "0 new or changed" in said and "2 more with only a new modification time and the same content" in said
    assert touched["documents_processed"] == 0 and touched["items_in"] == 0
    refreshed = _ledger(out)   # the new time kept, with the same content and run: not hashed again
    assert {k: {**r, "fingerprint": None} for k, r in refreshed.items()} == {
        k: {**r, "fingerprint": None} for k, r in first.items()}
    assert all(r["fingerprint"].startswith(f"size-mtime:{r['fingerprint'].split(':')[1]}:1900000000")
               and r["fingerprint"].split("|")[1] == first[k]["fingerprint"].split("|")[1] for k, r in refreshed.items())
    capsys.readouterr()
    assert run(opts, str(qs), dpi=50, run_date="2026-11-26")["items_in"] == 0  # the next night: nothing hashed
    assert "modification time" not in capsys.readouterr().out
    run(opts, str(qs), dpi=50, run_date="2026-11-24")   # the first night again (committed): its older times put
    assert _ledger(out) == refreshed                      # back made the next night hash both files again
    assert "ledger:" not in capsys.readouterr().out

    scan = Image.new("RGB", (400, 300), "white")
    scan.putpixel((0, 0), (0, 0, 0))
    scan.save(inbox / "scan.bmp")                                             # new content ...
    assert (inbox / "scan.bmp").stat().st_size == int(first[str(inbox / "scan.bmp")]["fingerprint"].split(":")[1])
    os.utime(inbox / "scan.bmp", (1_900_000_100, 1_900_000_100))              # ... of the same size
    changed = run(opts, str(qs), dpi=50, run_date="2026-11-27")
    assert changed["documents_processed"] == 1
    assert _ledger(out)[str(inbox / "scan.bmp")]["run_id"] == "documents-2026-11-27"


def test_same_name_in_two_folders_multipage_frames_and_every_readable_format(ray_local, random_tiny_dir, tmp_path,
                                                                             fast_policy):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    for month in ("2024-01", "2024-02"):
        (inbox / month).mkdir(parents=True)
        _page(int(month[-1]), (300, 400)).save(inbox / month / "scan.png")
    fax = [_page(20 + i, (300, 400)).convert("1") for i in range(3)]           # a 3-page fax TIFF
    fax[0].save(inbox / "fax.tif", save_all=True, append_images=fax[1:], compression="group4")
    frames = [_page(30 + i, (200, 200)) for i in range(2)]
    frames[0].save(inbox / "anim.gif", save_all=True, append_images=frames[1:])
    _page(40, (300, 400)).save(inbox / "photo.webp")
    _page(41, (300, 400)).save(inbox / "scan.bmp")
    _page(42, (300, 400)).save(inbox / "phone.jfif", "JPEG")
    (inbox / "notes.txt").write_text("not a document")
    (inbox / "letter.docx").write_bytes(b"PK\x03\x04")
    qs = tmp_path / "q.yaml"
    qs.write_text(ONE_QUESTION)
    opts = JobOptions(str(inbox), str(out), str(random_tiny_dir), policy=fast_policy)

    summary = run(opts, str(qs), dpi=50, run_date="2026-12-01")
    df = pq.read_table(RunPaths(str(out), "documents-2026-12-01").results).to_pandas()
    assert df["id"].is_unique and len(df) == summary["items_in"] == 2 + 3 + 2 + 1 + 1 + 1
    assert sorted(df[df.document.str.endswith("scan.png")].document) == ["2024-01/scan.png", "2024-02/scan.png"]
    assert sorted(df[df.document == "fax.tif"].page) == [0, 1, 2]
    assert (df[df.document == "fax.tif"].status == "ok").all()
    assert sorted(df[df.document == "anim.gif"].page) == [0, 1]
    assert set(df.document) >= {"photo.webp", "scan.bmp", "phone.jfif"}
    assert (df.status == "ok").all(), df[df.status != "ok"][["id", "error"]]
    skipped = summary["skipped_sources"]
    assert skipped["count"] == 2 and {s["source"] for s in skipped["named"]} == {"notes.txt", "letter.docx"}
    assert skipped["by_reason"] == {"not a document format this job reads: .txt": 1,
                                    "not a document format this job reads: .docx": 1}
    ledger = _ledger(out)
    assert ledger[str(inbox / "fax.tif")]["pages"] == 3 and ledger[str(inbox / "fax.tif")]["items"] == 3
    assert {ledger[str(inbox / m / "scan.png")]["document"] for m in ("2024-01", "2024-02")} == {"2024-01/scan.png",
                                                                                              "2024-02/scan.png"}


def _three_page_tiff(path: Path, keep: float = 1.0) -> None:
    import io

    buf = io.BytesIO()
    _page(0).save(buf, "TIFF", save_all=True, append_images=[_page(1), _page(2)])
    path.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * keep)])


def test_a_multi_page_scan_cut_short_is_an_error_row_never_one_clean_page(tmp_path):
    one_q = [{"question": "q ?"}]
    _three_page_tiff(tmp_path / "half.tif", keep=0.5)              # its pages cannot even be counted
    rows = list(plan_pages({"uri": str(tmp_path / "half.tif"), "rel": "half.tif", "fingerprint": "f"}, one_q))
    assert [(r["page"], r["status"]) for r in rows] == [(0, "error")]
    assert rows[0]["error"].startswith("unreadable image: corrupt or truncated image: its pages cannot be counted")
    _three_page_tiff(tmp_path / "tail.tif", keep=0.95)             # three pages counted, the last one cut
    rows = list(plan_pages({"uri": str(tmp_path / "tail.tif"), "rel": "tail.tif", "fingerprint": "f"}, one_q))
    loader = PageLoader()
    out = [loader.load(r) for r in rows]
    assert [o["status"] for o in out] == ["ok", "ok", "error"]
    assert out[2]["error"].startswith("unreadable image: ")          # not "unreadable PDF"


def test_every_page_of_a_scan_is_planned_and_read_whatever_its_samples(tmp_path):
    """A multi-page TIFF whose first page is float RGB was planned as one page (its other pages lost
    without a row), and one whose second page is float was refused whole as cut short."""
    import tifffile

    page = np.full((60, 40, 3), 255, np.uint8)
    page[5:15, 5:15] = 0
    with tifffile.TiffWriter(tmp_path / "scan.tif") as tw:
        tw.write(page.astype(np.float32), photometric="rgb")
        tw.write(page, photometric="rgb")
        tw.write(page.astype(np.float32), photometric="rgb")
    rows = list(plan_pages({"uri": str(tmp_path / "scan.tif"), "rel": "scan.tif", "fingerprint": "f"},
                           [{"question": "q ?"}]))
    assert [r["page"] for r in rows] == [0, 1, 2]
    loader = PageLoader()
    assert [loader.load(r)["status"] for r in rows] == ["ok", "ok", "ok"]


def test_fingerprints_from_the_listing_and_hash_only_where_it_gives_none(tmp_path):
    assert listed_fingerprint({"etag": "abc", "size": 3, "mtime": "1"}) == "etag:abc"
    assert listed_fingerprint({"etag": "", "size": 3, "mtime": "17.5"}) == "size-mtime:3:17.5"
    assert listed_fingerprint({"etag": "", "size": 3, "mtime": ""}) == ""
    Image.new("RGB", (50, 40), "white").save(tmp_path / "a.png")
    docs, skipped = list_documents(str(tmp_path))
    assert [d["rel"] for d in docs] == ["a.png"] and docs[0]["fingerprint"].startswith("size-mtime:") and not skipped
    q = [{"question": "q ?", "choices": ""}]
    hashed = list(plan_pages({"uri": str(tmp_path / "a.png"), "rel": "a.png", "fingerprint": "", "previous": ""}, q))
    assert len(hashed) == 1 and hashed[0]["fingerprint"].startswith("sha256:")
    unchanged = {"uri": str(tmp_path / "a.png"), "rel": "a.png", "fingerprint": "", "previous": hashed[0]["fingerprint"]}
    assert list(plan_pages(unchanged, q)) == []                                 # same content: nothing to do
    assert read_ledger(str(tmp_path / "nowhere")).num_rows == 0


def test_empty_inbox_ends_cleanly_with_a_clear_message(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "notes.txt").write_text("nothing to read")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipelines.documents", "--input", str(inbox), "--output",
                           str(tmp_path / "out"), "--run-date", "2026-12-02"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "KeyError" not in proc.stderr
    assert "nothing to do (no input it can read; skipped 1: 1 x not a document format this job reads: .txt)" in proc.stdout
    assert Path(RunPaths(str(tmp_path / "out"), "documents-2026-12-02").marker).exists()
    (inbox / "notes.txt").unlink()                                  # a first run on nothing at all
    plan, seen, _, _ = plan_documents(str(inbox), str(tmp_path / "out2"), [{"question": "q ?"}])
    assert seen == 0 and plan.empty_reason == "the input holds no documents"


def test_a_question_file_the_model_cannot_read_is_refused_before_any_run(tmp_path):
    """A marker of the model's own in a question (``<image>``) or a choice it lacks made every page an error
    row; the night is refused at once, naming each field, and the default questions pass."""
    from pipelines.job import JobRefused

    (tmp_path / "in").mkdir()
    _pdf(tmp_path / "in" / "a.pdf", 1, 0)
    (tmp_path / "q.json").write_text(json.dumps([
        {"field": "stamp", "question": "is there a stamp on the <image> ?", "choices": ["yes", "no"]},
        {"field": "lang", "question": "is it signed ?", "choices": ["oui", "non"]},
        {"field": "ok", "question": "is the red box ticked ?", "choices": ["yes", "no"]}]))
    with pytest.raises(JobRefused, match=r"q.json: the model spote-tiny cannot read it as written: field 'stamp': "
                                         r"the question holds '<image>'.*; field 'lang': choice 'oui' is not read"):
        run(JobOptions(str(tmp_path / "in"), str(tmp_path / "out")), str(tmp_path / "q.json"), run_date="2026-12-02")
    assert not (tmp_path / "out").exists()
    JobOptions(str(tmp_path / "in"), str(tmp_path / "out")).check_questions(load_questions(str(DEFAULT_QUESTIONS)),
                                                                           "the default questions")


def test_a_mistyped_input_folder_is_refused_before_any_run_is_committed(tmp_path):
    """An empty run committed under the night's id would refuse that night's real run (other settings)."""
    with pytest.raises(FileNotFoundError, match=r"--input .*/inbx: no such file or folder"):
        run(JobOptions(str(tmp_path / "inbx"), str(tmp_path / "out")), None, run_date="2026-12-02")
    assert not (tmp_path / "out").exists()


def test_a_ledger_without_settings_counts_as_answered_under_these(tmp_path):
    import pyarrow as pa

    from pipelines.documents import plan_documents

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    _pdf(inbox / "a.pdf", 1, 0)
    _pdf(inbox / "b.pdf", 1, 1)
    docs, _ = list_documents(str(inbox))
    (out / "_ledger").mkdir(parents=True)
    pq.write_table(pa.table({"source": [d["uri"] for d in docs], "document": [d["rel"] for d in docs],
                             "fingerprint": [d["fingerprint"] for d in docs], "run_id": ["r1", "r1"],
                             "pages": [1, 1], "items": [1, 1]}), out / LEDGER)   # an older ledger: no settings column
    assert read_ledger(str(out)).column("settings").to_pylist() == ["", ""]
    plan, seen, restated, _ = plan_documents(str(inbox), str(out), [], settings="0123456789abcdef")
    assert (len(plan.sources), seen, restated) == (0, 2, 0)
    ledger = read_ledger(str(out)).to_pylist()
    ledger[0]["settings"], ledger[1]["settings"] = "0123456789abcdef", "fedcba9876543210"
    pq.write_table(pa.Table.from_pylist(ledger), out / LEDGER)
    plan, seen, restated, _ = plan_documents(str(inbox), str(out), [], settings="0123456789abcdef")
    assert [d["uri"] for d in plan.sources] == [docs[1]["uri"]] and restated == 1
    assert plan.sources[0]["previous"] == ""   # a content hash equal to the ledger's must not skip it


def test_a_run_stamps_an_older_ledger_with_its_settings(tmp_path):
    """Legacy rows are taken as answered under the first run's settings and recorded so, even by a run with
    nothing to do: a later question change must re-read them."""
    import pyarrow as pa

    from pipelines.documents import update_ledger
    from pipelines.job import RunResults

    out = tmp_path / "out"
    (out / "_ledger").mkdir(parents=True)
    pq.write_table(pa.table({"source": ["a", "b"], "document": ["a", "b"], "fingerprint": ["f1", "f2"],
                             "run_id": ["r1", "r1"], "pages": [1, 1], "items": [1, 1]}), out / LEDGER)

    (tmp_path / "results").mkdir()   # a committed run with no rows
    assert update_ledger(str(out), RunResults(str(tmp_path / "results"), {}, None), "r2", settings="0123456789abcdef") == 0
    assert read_ledger(str(out)).column("settings").to_pylist() == ["0123456789abcdef"] * 2
    assert read_ledger(str(out)).column("run_id").to_pylist() == ["r1", "r1"]


def test_a_store_read_that_fails_is_could_not_read_in_the_planner_and_the_loader(tmp_path, monkeypatch):
    """The reason the ledger leaves for the next night, as the real planner and loader write it: a failed
    read used to come out as "unreadable PDF: ConnectionError" or "unreadable image: ...", recorded as done."""
    from pipelines import stages
    from pipelines.stats import error_reason

    _pdf(tmp_path / "a.pdf", 2, 0)
    _page(1).save(tmp_path / "b.png")
    rows = {name: list(plan_pages({"uri": str(tmp_path / name), "rel": name, "fingerprint": "f"}, [{"question": "q ?"}]))
            for name in ("a.pdf", "b.png")}
    assert [r["status"] for r in rows["a.pdf"]] == ["", ""]
    gone = list(plan_pages({"uri": str(tmp_path / "gone.pdf"), "rel": "gone.pdf", "fingerprint": ""}, [{"question": "q ?"}]))
    assert gone[0]["error"] == f"missing object: {tmp_path / 'gone.pdf'}"  # listed, then moved away (and maybe back)
    assert error_reason(gone[0]["error"]) in stages.PASSING_FAILURES

    def reset(uri, storage_options=None):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(stages, "read_bytes", reset)              # the store fails from here on
    for name in ("a.pdf", "b.png"):
        planned = list(plan_pages({"uri": str(tmp_path / name), "rel": name, "fingerprint": "f"}, [{"question": "q ?"}]))
        assert [r["error"] for r in planned] == [f"could not read: {tmp_path / name}: ConnectionError: connection reset by peer"]
        loaded = PageLoader().load(rows[name][0])
        assert loaded["status"] == "error" and error_reason(loaded["error"]) == "could not read", loaded["error"]
        assert error_reason(planned[0]["error"]) in stages.PASSING_FAILURES


@pytest.mark.parametrize("with_stats", [False, True])
def test_documents_that_failed_for_a_passing_reason_stay_out_of_the_ledger(ray_local, tmp_path, with_stats):
    """A timeout, an endpoint or model error, a storage read, a file gone while it was read: the next night must
    read those documents again. A document that cannot be read (a broken PDF) is recorded: reading it again gives the same."""
    import pyarrow as pa

    from pipelines.documents import update_ledger
    from pipelines.job import RunResults
    from pipelines.stats import RunStats

    rows = [("a.pdf", 0, "ok", ""), ("a.pdf", 1, "ok", ""),
            ("b.pdf", 0, "ok", ""), ("b.pdf", 1, "error", "timeout: answering took longer than 1 s"),
            ("c.pdf", 0, "error", "unreadable PDF: truncated"),
            ("d.png", 0, "error", "endpoint error: 503 after 3 retries"),
            ("e.png", 0, "error", "model error: RuntimeError: CUDA error"),
            ("f.png", 0, "error", "could not read: f.png: ConnectionError: reset"),
            ("g.png", 0, "error", "missing object: g.png")]
    table = pa.table({"id": [f"{d}/p{p}" for d, p, _, _ in rows], "source": [d for d, _, _, _ in rows],
                      "document": [d for d, _, _, _ in rows], "fingerprint": ["fp"] * len(rows),
                      "page": [p for _, p, _, _ in rows], "pages": [2 if d in ("a.pdf", "b.pdf") else 1 for d, *_ in rows],
                      "status": [st for *_, st, _ in rows], "error": [e for *_, e in rows]})
    (tmp_path / "results").mkdir()
    pq.write_table(table, tmp_path / "results" / "part-0.parquet")
    stats = RunStats.of_table(table) if with_stats else None
    said = update_ledger(str(tmp_path / "out"), RunResults(str(tmp_path / "results"), {}, stats), "night")
    assert sorted(read_ledger(str(tmp_path / "out")).column("source").to_pylist()) == ["a.pdf", "c.pdf"]
    assert said == 2


@pytest.mark.parametrize("with_stats", [False, True])
def test_a_night_where_every_document_failed_for_a_passing_reason_leaves_the_ledger_as_it_was(
        ray_local, tmp_path, with_stats):
    """An endpoint down all night: no document is done, the ledger keeps what it held, nothing raises."""
    import pyarrow as pa

    from pipelines.documents import LEDGER_SCHEMA, update_ledger, write_ledger
    from pipelines.job import RunResults
    from pipelines.stats import RunStats

    earlier = pa.table({"source": ["old.pdf"], "document": ["old.pdf"], "fingerprint": ["fp0"], "run_id": ["n0"],
                        "pages": [1], "items": [1], "settings": ["s"]}, schema=LEDGER_SCHEMA)
    write_ledger(str(tmp_path / "out"), earlier)
    docs = ["a.pdf", "b.png"]
    table = pa.table({"id": [f"{d}/p0" for d in docs], "source": docs, "document": docs, "fingerprint": ["fp"] * 2,
                      "page": [0, 0], "pages": [1, 1], "status": ["error"] * 2,
                      "error": ["endpoint error: 503 after 3 retries", "timeout: answering took longer than 1 s"]})
    (tmp_path / "results").mkdir()
    pq.write_table(table, tmp_path / "results" / "part-0.parquet")
    stats = RunStats.of_table(table) if with_stats else None
    assert update_ledger(str(tmp_path / "out"), RunResults(str(tmp_path / "results"), {}, stats), "night", settings="s") == 0
    assert read_ledger(str(tmp_path / "out")).to_pylist() == earlier.to_pylist()


def test_a_resumed_night_says_it_reads_its_first_plan_not_the_new_listing(ray_local, random_tiny_dir, tmp_path,
                                                                         fast_policy, monkeypatch, capsys):
    """After a crash, a document added before the resume was counted as new in the resume's first line but not
    read that night (the resume answers the plan of its first start), without a word."""
    import pipelines.job as job

    inbox, qs = tmp_path / "inbox", tmp_path / "q.yaml"
    inbox.mkdir()
    _pdf(inbox / "a.pdf", 1, 0)
    qs.write_text(ONE_QUESTION)
    opts = JobOptions(str(inbox), str(tmp_path / "out"), str(random_tiny_dir), policy=fast_policy)

    def crash(paths, summary, so=None):
        raise OSError("the driver died before the commit")

    monkeypatch.setattr(job, "commit", crash)
    with pytest.raises(OSError, match="died"):
        run(opts, str(qs), dpi=50, run_date="2026-11-24")
    monkeypatch.undo()
    _pdf(inbox / "late.pdf", 1, 1)
    capsys.readouterr()
    resumed = run(opts, str(qs), dpi=50, run_date="2026-11-24")
    said = capsys.readouterr().out
    assert ("run documents-2026-11-24: resuming the plan of its first start (1 source(s)); the input lists 2 now: "
            "what changed since is read by the next run") in said
    assert resumed["documents_processed"] == 1 and "late.pdf" not in str(_ledger(tmp_path / "out"))
    assert run(opts, str(qs), dpi=50, run_date="2026-11-25")["documents_processed"] == 1   # read the next night


def test_a_run_committed_earlier_mends_the_ledger_only_where_its_write_was_lost(ray_local, tmp_path):
    """Asked again, a committed night records only the documents the ledger lacks, and only where the ledger
    holds none of its rows (the driver stopped between commit and ledger write); otherwise its rows are not
    read (no Ray) and every ledger row stands."""
    import pyarrow as pa

    from pipelines.documents import LEDGER_SCHEMA, update_ledger, write_ledger
    from pipelines.job import RunResults

    docs = ["a.pdf", "b.png", "c.png"]
    (tmp_path / "results").mkdir()
    pq.write_table(pa.table({"id": [f"{d}/p0" for d in docs], "source": docs, "document": docs,
                             "fingerprint": ["night-1"] * 3, "page": [0] * 3, "pages": [1] * 3, "status": ["ok"] * 3,
                             "error": [""] * 3}), tmp_path / "results" / "part-0.parquet")
    committed = RunResults(str(tmp_path / "results"), {}, None)
    out = str(tmp_path / "out")

    def ledger(rows):
        return pa.table({"source": [r[0] for r in rows], "document": [r[0] for r in rows],
                         "fingerprint": [r[1] for r in rows], "run_id": [r[2] for r in rows], "pages": [1] * len(rows),
                         "items": [1] * len(rows), "settings": ["s"] * len(rows)}, schema=LEDGER_SCHEMA)

    started = []
    written = ledger([("a.pdf", "touched", "n1"), ("b.png", "night-2", "n2")])   # n1's write happened
    write_ledger(out, written)
    assert update_ledger(out, committed, "n1", settings="s", start_ray=lambda: started.append(1)) == 0
    assert read_ledger(out).to_pylist() == written.to_pylist() and not started

    lost = ledger([("b.png", "night-2", "n2")])                                   # n1's write was lost
    write_ledger(out, lost)
    assert update_ledger(out, committed, "n1", settings="s", start_ray=lambda: started.append(1)) == 2
    assert started == [1]
    assert {r["source"]: (r["fingerprint"], r["run_id"]) for r in read_ledger(out).to_pylist()} == {
        "a.pdf": ("night-1", "n1"), "b.png": ("night-2", "n2"), "c.png": ("night-1", "n1")}


def test_documents_refuses_a_dpi_out_of_range_in_one_line(tmp_path):
    from pipelines.job import JobRefused

    for dpi in (0, -5, 5000):
        with pytest.raises(JobRefused, match=r"--dpi must be 1-1200"):
            run(JobOptions(str(tmp_path / "in"), str(tmp_path / "out")), None, dpi=dpi)


def test_s3_listing_gives_etag_fingerprints_and_the_ledger_is_replaced_whole(s3, tmp_path):
    import pyarrow as pa

    from pipelines.documents import LEDGER_SCHEMA, write_ledger
    from pipelines.storage import parse_storage_options

    so = parse_storage_options(None)
    s3.pipe("spote/docs/2024-01/scan.png", b"a")
    s3.pipe("spote/docs/2024-02/scan.png", b"bb")
    s3.pipe("spote/docs/readme.txt", b"x")
    docs, skipped = list_documents("s3://spote/docs/", so)
    assert [d["rel"] for d in docs] == ["2024-01/scan.png", "2024-02/scan.png"]
    assert [d["uri"] for d in docs] == ["s3://spote/docs/2024-01/scan.png", "s3://spote/docs/2024-02/scan.png"]
    assert all(d["fingerprint"].startswith("etag:") for d in docs) and docs[0]["fingerprint"] != docs[1]["fingerprint"]
    assert skipped == [{"source": "readme.txt", "reason": "not a document format this job reads: .txt"}]
    table = pa.table({"source": [d["uri"] for d in docs], "document": [d["rel"] for d in docs],
                      "fingerprint": [d["fingerprint"] for d in docs], "run_id": ["r1", "r1"], "pages": [1, 1],
                      "items": [2, 2], "settings": ["s", "s"]}, schema=LEDGER_SCHEMA)
    write_ledger("s3://spote/ledger-out", table, so)
    write_ledger("s3://spote/ledger-out", table.slice(0, 1), so)
    assert read_ledger("s3://spote/ledger-out", so).to_pylist() == table.slice(0, 1).to_pylist()
    assert s3.find("spote/ledger-out/_ledger") == ["spote/ledger-out/_ledger/documents.parquet"]


def test_evidence_box_in_page_pixels_and_pdf_points(ray_local, random_tiny_dir, tmp_path):
    """A PDF page's evidence box comes in rendered-page pixels and in PDF points (pixels x 72 / dpi);
    a page image has no PDF points."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    _pdf(inbox / "form.pdf", 1, 4)
    _page(5).save(inbox / "scan.png")
    qs = tmp_path / "q.yaml"
    qs.write_text(ONE_QUESTION)
    search = '{"budget": 6, "group_size": 2, "exit_entropy_per_ln_k": 0.0, "glance_side": 0.0, "probe_side": 0.0}'
    opts = JobOptions(str(inbox), str(out), str(random_tiny_dir), policy=search, run_id="boxes")
    run(opts, str(qs), dpi=60, run_date="2026-11-27")
    df = pq.read_table(RunPaths(str(out), "boxes").results).to_pandas().set_index("document")
    pdf, png = df.loc["form.pdf"], df.loc["scan.png"]
    assert pdf.status == "ok" and png.status == "ok"
    assert pdf.points_per_pixel == 72 / 60 and (png.points_per_pixel is None or np.isnan(png.points_per_pixel))
    if pdf.evidence_box is None:  # every spotlight scored below the whole page: no box in either unit
        assert pdf.evidence_box_pt is None
    else:
        assert np.allclose(pdf.evidence_box_pt, np.asarray(pdf.evidence_box) * 72 / 60, atol=0.01)
        x0, y0, x1, y1 = pdf.evidence_box_pt  # PIL writes the 600 x 800 px page at 72 dpi: 600 x 800 points
        assert 0 <= x0 < x1 <= 600 + 1 and 0 <= y0 < y1 <= 800 + 1
    assert png.evidence_box_pt is None


# what a form or an invoice says, page by page: (label, value)
FORM_FIELDS = [[("Reference code:", "K7-3A9Q"), ("Date:", "2026-11-24"), ("Total amount:", "1,234.50 EUR")],
               [("Reference code:", "B2"), ("Date:", "2026-12-01"), ("Total amount:", "87.00 EUR")]]


def _form_pdf(path: Path) -> None:
    """A text PDF (fonts and text objects, not a picture of text), one invoice page per FORM_FIELDS entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    with PdfPages(path) as pdf:
        for fields in FORM_FIELDS:
            fig = plt.figure(figsize=(6, 8))  # 432 x 576 points
            fig.text(0.08, 0.92, "INVOICE", fontsize=16, weight="bold")
            for i, (label, value) in enumerate(fields):
                fig.text(0.08, 0.8 - 0.06 * i, label, fontsize=9)
                fig.text(0.4, 0.8 - 0.06 * i, value, fontsize=9, family="monospace")
            fig.text(0.08, 0.2, "Signature: ____________", fontsize=9)
            pdf.savefig(fig)
            plt.close(fig)


def _form_scan(path: Path) -> None:
    """A scanned form: the same fields drawn into a page image."""
    im = Image.new("RGB", (500, 650), "white")
    d = ImageDraw.Draw(im)
    d.text((30, 30), "APPLICATION FORM", fill="black")
    for i, (label, value) in enumerate(FORM_FIELDS[0]):
        d.text((30, 90 + 30 * i), label, fill="black")
        d.text((200, 90 + 30 * i), value, fill="black")
    d.text((30, 560), "Signed: J. Smith", fill="black")
    im.save(path)


def test_default_questions_read_fields_by_name_with_per_token_confidences(ray_local, random_tiny_dir, tmp_path,
                                                                          fast_policy):
    """Every page x default question is a row under its field name; open answers carry one confidence per
    generated token (the least is the answer's confidence), closed-set answers none. Answers themselves
    are not checked: the random-weight model cannot read."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    _form_pdf(inbox / "invoice.pdf")
    _form_scan(inbox / "scan.png")
    pdf = open_pdf((inbox / "invoice.pdf").read_bytes())
    assert "Reference code: K7-3A9Q" in pdf[0].get_textpage().get_text_range()   # a real text PDF
    pdf.close()
    opts = JobOptions(str(inbox), str(out), str(random_tiny_dir), policy=fast_policy, run_id="fields")
    summary = run(opts, None, dpi=50, run_date="2026-12-03")                  # the default question set

    questions = {q["field"]: q for q in load_questions(str(DEFAULT_QUESTIONS))}
    df = pq.read_table(RunPaths(str(out), "fields").results).to_pandas()
    pages = [("invoice.pdf", 0), ("invoice.pdf", 1), ("scan.png", 0)]
    assert summary["items_in"] == len(df) == len(pages) * len(questions)
    assert (df.status == "ok").all(), df[df.status != "ok"][["id", "error"]]
    assert sorted(zip(df.document, df.page, df.field)) == sorted((d, p, f) for d, p in pages for f in questions)
    for row in df.itertuples():
        q = questions[row.field]
        assert row.question == q["question"] and row.choices == q["choices"]
        if q["choices"]:                                                      # closed set: one of the choices
            assert row.answer in json.loads(q["choices"]) and row.token_confidences is None
        else:                                                                 # open: p of each generated token
            conf = np.asarray(row.token_confidences, dtype=float)
            assert conf.ndim == 1 and ((conf > 0) & (conf <= 1)).all(), row.id
            assert math.isclose(float(conf.min()), row.confidence, rel_tol=1e-5) if len(conf) else \
                row.confidence == 0.0
        if row.document == "invoice.pdf" and row.evidence_box is not None:   # the evidence box in PDF points
            assert np.allclose(row.evidence_box_pt, np.asarray(row.evidence_box) * 72 / 50, atol=0.01)
    assert {f for f in questions if not questions[f]["choices"]} == {"reference_code", "date", "total_amount"}

    report = Path(RunPaths(str(out), "fields").meta, "report.html").read_text()
    assert "<span class='field'>reference_code</span>: " in report or "<span class='field'>date</span>: " in report
    assert "per token: " in report


def test_token_confidences_are_those_of_the_generated_answer(ray_local, random_tiny_dir, random_adapter, tmp_path):
    """With the whole page answering (budget 1), each open row's token confidences are exactly the
    generation's: one per generated token, p = exp(log p), in order."""
    from spote.spotlight import ViewRenderer

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    _form_scan(inbox / "scan.png")
    qs = tmp_path / "q.yaml"
    qs.write_text("- field: reference_code\n  question: what is the reference code ?\n"
                  "- field: signed\n  question: is the form signed ?\n  choices: [yes, no]\n")
    opts = JobOptions(str(inbox), str(out), str(random_tiny_dir), policy='{"budget": 1}', run_id="whole")
    run(opts, str(qs), dpi=50, run_date="2026-12-04")
    df = pq.read_table(RunPaths(str(out), "whole").results).to_pandas().set_index("field")
    code, signed = df.loc["reference_code"], df.loc["signed"]
    assert code.status == "ok" and signed.status == "ok" and signed.token_confidences is None
    page = PageLoader(dpi=50).load({"source": str(inbox / "scan.png"), "page": 0, "question": code.question})
    image = Image.frombytes("RGB", (page["width"], page["height"]), page["pixels"])
    gen = random_adapter.generate([ViewRenderer(image, random_adapter.input_size).global_view], code.question)
    assert len(gen.token_ids) > 0 and len(code.token_confidences) == len(gen.token_ids)
    assert np.allclose(code.token_confidences, np.exp(gen.logprobs), rtol=1e-4)
    assert code.answer == gen.text


@pytest.mark.parametrize("run_date", ["yesterday", "2026-13-45", "2026-2-30", "2026-02-30", "20261204"])
def test_documents_refuses_a_run_date_that_is_not_a_date_in_one_line(tmp_path, run_date):
    from pipelines.job import JobRefused

    (tmp_path / "in").mkdir()
    with pytest.raises(JobRefused, match=r"--run-date must be a date as YYYY-MM-DD"):
        run(JobOptions(str(tmp_path / "in"), str(tmp_path / "out")), None, run_date=run_date)


@pytest.mark.parametrize("run_date", ["", "  "])
def test_an_empty_run_date_is_refused_not_taken_for_today(tmp_path, run_date):
    """``--run-date "$NIGHT"`` with the variable unset answered under today's run id without a word."""
    from pipelines.job import JobRefused

    (tmp_path / "in").mkdir()
    with pytest.raises(JobRefused, match=r"^--run-date is empty; give the night as YYYY-MM-DD"):
        run(JobOptions(str(tmp_path / "in"), str(tmp_path / "out")), None, run_date=run_date)


@pytest.mark.parametrize("output", ["in", "in/out", "in/./deeper/out"])
def test_an_output_inside_the_input_is_refused_before_any_listing(tmp_path, output):
    """The next night would read this night's results, reports and ledger as documents."""
    from typer.testing import CliRunner

    from pipelines import documents

    (tmp_path / "in").mkdir()
    res = CliRunner().invoke(documents.app, ["--input", str(tmp_path / "in"), "--output", str(tmp_path / output)])
    assert res.exit_code == 2, res.output
    assert "lies inside --input" in res.output and "Traceback" not in res.output
    assert not (tmp_path / output / "_runs").exists()


def test_one_file_has_one_source_however_the_input_is_spelled(tmp_path, monkeypatch):
    """The ledger is keyed by ``source``: ``../in``, ``./in/``, ``in//``, a link to the folder and the
    absolute path must give the same names, or a second night with the same files reads every document again."""
    (tmp_path / "in" / "2024").mkdir(parents=True)
    (tmp_path / "in" / "2024" / "scan.png").write_bytes(b"x")
    (tmp_path / "in" / "a.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "link").symlink_to(tmp_path / "in")
    monkeypatch.chdir(tmp_path / "work")
    spellings = ["../in", "../in/", "./../work/../in", str(tmp_path / "in"), f"{tmp_path}//in/./", (tmp_path / "in").as_uri(),
                 "link", str(tmp_path / "work" / "link") + "/"]
    listed = {s: [(d["uri"], d["rel"], d["fingerprint"]) for d in list_documents(s)[0]] for s in spellings}
    first = listed[spellings[0]]
    real = Path(os.path.realpath(tmp_path / "in"))
    assert [u for u, _, _ in first] == [str(real / "2024" / "scan.png"), str(real / "a.pdf")]
    assert all(v == first for v in listed.values()), listed


def test_a_process_that_reads_the_ledger_and_exits_at_once_exits_cleanly(tmp_path):
    """A refusal right after the ledger is read (the same night asked other questions) exits 2. Read through
    Arrow's dataset scanner, the ledger's buffers could be released on Arrow's IO threads while the
    interpreter finalised, which aborted the process (SIGABRT, exit 134) in most runs."""
    import pyarrow as pa

    from pipelines.documents import LEDGER_SCHEMA, write_ledger

    rows = [{"source": f"{tmp_path}/d{i}.pdf", "document": f"d{i}.pdf", "fingerprint": f"{i}", "run_id": "r",
             "pages": 1, "items": 2, "settings": "s"} for i in range(200)]
    write_ledger(str(tmp_path), pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA))
    script = f"import sys\nfrom pipelines.documents import read_ledger\nread_ledger({str(tmp_path)!r})\nsys.exit(2)\n"
    codes = [subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], capture_output=True,
                            timeout=120).returncode for _ in range(8)]
    assert codes == [2] * 8


def test_a_night_whose_ledger_write_was_lost_is_recorded_by_the_next_night_not_read_again(
        ray_local, random_tiny_dir, tmp_path, fast_policy, capsys):
    """A driver stopped between its commit and its ledger write, and the next run is another night (a cron
    job, no retry of the same night): the next night records the committed night's documents in the ledger
    (from its results, under its settings) instead of reading them again."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    qs = tmp_path / "q.yaml"
    qs.write_text(ONE_QUESTION)
    opts = JobOptions(str(inbox), str(out), str(random_tiny_dir), policy=fast_policy)
    _pdf(inbox / "a.pdf", 1, 0)
    run(opts, str(qs), dpi=50, run_date="2026-11-24")
    ledger = out / LEDGER
    before = ledger.read_bytes()
    _pdf(inbox / "b.pdf", 2, 1)
    _pdf(inbox / "a.pdf", 1, 5)                            # a.pdf changed too: night 2 reads it again
    os.utime(inbox / "a.pdf", (Path(RunPaths(str(out), "documents-2026-11-24").marker).stat().st_mtime + 30,) * 2)
    run(opts, str(qs), dpi=50, run_date="2026-11-25")
    night2 = RunPaths(str(out), "documents-2026-11-25")
    a_row, b_row = _ledger(out)[str(inbox / "a.pdf")], _ledger(out)[str(inbox / "b.pdf")]
    assert a_row["run_id"] == "documents-2026-11-25"
    ledger.write_bytes(before)                            # night 2's ledger write lost: the ledger of night 1,
    old = Path(night2.marker).stat().st_mtime - 60         # written before night 2's commit
    os.utime(ledger, (old, old))
    _pdf(inbox / "c.pdf", 1, 2)
    capsys.readouterr()
    night3 = run(opts, str(qs), dpi=50, run_date="2026-11-26")
    said = capsys.readouterr().out
    assert "run documents-2026-11-25 was committed without its ledger write" in said and "its 2 document(s)" in said
    assert "3 documents, 1 new or changed since the last committed run (1 new, 0 changed)" in said
    assert night3["documents_processed"] == 1                                # c.pdf alone, b.pdf not read again
    rows = _ledger(out)
    assert rows[str(inbox / "b.pdf")] == b_row and rows[str(inbox / "a.pdf")] == a_row   # as night 2 recorded them
    assert rows[str(inbox / "c.pdf")]["run_id"] == "documents-2026-11-26"
    _pdf(inbox / "d.pdf", 1, 3)
    _pdf(inbox / "a.pdf", 1, 4)                                               # a.pdf rewritten
    os.utime(inbox / "a.pdf", (old + 6000, old + 6000))
    run(opts, str(qs), dpi=50, run_date="2026-11-27")                        # the ledger is newer than every night:
    said = capsys.readouterr().out
    assert "without its ledger write" not in said                            # nothing to mend
    assert "4 documents, 2 new or changed since the last committed run (1 new, 1 changed)" in said


def test_nights_since_the_ledger_are_found_by_the_stores_times(s3, tmp_path):
    """On a store the marker's and the ledger's LastModified are compared: a night committed after the ledger
    was written is listed, and none once the ledger is newer; another job's run is not a night."""
    from pipelines.documents import nights_committed_since_the_ledger, write_ledger, LEDGER_SCHEMA
    from pipelines.storage import write_text

    out = f"s3://spote/nights-{os.getpid()}"
    for run_id, summary in (("documents-2026-11-24", {"documents_seen": 1}), ("vqa-1", {"items_in": 3})):
        write_text(f"{out}/_runs/{run_id}/summary.json", json.dumps(summary))
        write_text(f"{out}/_runs/{run_id}/_SUCCESS", "2026-11-24T00:00:00+00:00")
    assert nights_committed_since_the_ledger(out) == [("documents-2026-11-24", {"documents_seen": 1})]  # no ledger yet
    write_ledger(out, LEDGER_SCHEMA.empty_table())
    assert nights_committed_since_the_ledger(out) == []
