"""Listing a job's input: every file under it, named or skipped with a reason."""

import os

import pytest

from pipelines.planning import list_sources, skip_by_extension


def test_symbolic_links_are_followed_and_those_that_cannot_be_are_named(tmp_path):
    """fsspec lists a link as type "other" and does not follow it; such inputs were dropped without a word."""
    outside, inbox = tmp_path / "archive", tmp_path / "inbox"
    (outside / "2024").mkdir(parents=True)
    (inbox / "sub").mkdir(parents=True)
    (outside / "a.jpg").write_bytes(b"a" * 3)
    (outside / "2024" / "b.jpg").write_bytes(b"b" * 5)
    (inbox / "sub" / "c.jpg").write_bytes(b"c" * 7)
    (inbox / "link.jpg").symlink_to(outside / "a.jpg")
    (inbox / "linked").symlink_to(outside)                     # a folder kept elsewhere, linked in
    (inbox / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (inbox / "sub" / "loop").symlink_to(inbox)                 # would list the inbox forever
    (inbox / "again").symlink_to(inbox / "sub")                # would list sub/ twice
    os.mkfifo(inbox / "pipe.jpg")
    (inbox / "to-pipe.jpg").symlink_to(inbox / "pipe.jpg")
    (inbox / "self.jpg").symlink_to(inbox / "self.jpg")           # a link to itself
    (inbox / "c-again.jpg").symlink_to(inbox / "sub" / "c.jpg")    # a second name of a file of the input
    accepted, skipped = list_sources(str(inbox), None, skip_by_extension([".jpg"], "image"))
    assert {a["rel"]: a["size"] for a in accepted} == {"link.jpg": 3, "linked/2024/b.jpg": 5, "sub/c.jpg": 7}
    assert {a["uri"] for a in accepted} >= {str(inbox / "linked" / "2024" / "b.jpg")}
    assert {s["source"]: s["reason"] for s in skipped} == {
        "dangling.jpg": "broken symbolic link", "pipe.jpg": "not a regular file",
        "self.jpg": "symbolic link that loops",
        "to-pipe.jpg": "symbolic link to something that is not a file or folder",
        "c-again.jpg": "a second name of sub/c.jpg (read once)",
        "linked/a.jpg": "a second name of link.jpg (read once)",      # outside/a.jpg, reached twice
        "sub/loop": "symbolic link to a folder read already, or holding the input",
        "again": "symbolic link to a folder read already, or holding the input"}


def test_a_folder_that_cannot_be_listed_is_named_not_dropped(tmp_path, monkeypatch):
    """fsspec's find leaves out a folder it cannot list (permission denied); a root user cannot be denied
    here, so listing one folder is made to fail as the kernel fails it."""
    import os as os_module

    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.jpg").write_bytes(b"a")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "b.jpg").write_bytes(b"b")
    real_scandir = os_module.scandir

    def scandir(path="."):
        if str(path).rstrip("/").endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os_module, "scandir", scandir)
    accepted, skipped = list_sources(str(tmp_path), None, skip_by_extension([".jpg"], "image"))
    assert [a["rel"] for a in accepted] == ["ok/a.jpg"]
    assert skipped == [{"source": "locked", "reason": "folder cannot be read (Permission denied)"}]


def test_a_link_given_as_the_input_is_read(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.jpg").write_bytes(b"a")
    (tmp_path / "input").symlink_to(tmp_path / "real")
    accepted, skipped = list_sources(str(tmp_path / "input"), None, skip_by_extension([".jpg"], "image"))
    assert [a["rel"] for a in accepted] == ["a.jpg"] and skipped == []


def test_a_link_to_a_file_given_as_the_input_keeps_its_name(tmp_path):
    """The file's name is the item's id: a link named ``scan.jpg`` to a content-addressed ``ab12cd.jpg`` is
    ``scan.jpg``, in its folder with links resolved."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "ab12cd.jpg").write_bytes(b"a")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "scan.jpg").symlink_to(tmp_path / "store" / "ab12cd.jpg")
    (tmp_path / "here").symlink_to(tmp_path / "real")
    accepted, _ = list_sources(str(tmp_path / "here" / "scan.jpg"), None, skip_by_extension([".jpg"], "image"))
    assert [(a["rel"], a["uri"]) for a in accepted] == [("scan.jpg", str(tmp_path / "real" / "scan.jpg"))]


def test_a_store_input_that_names_no_object_or_no_bucket_is_refused_naming_it(s3):
    """A mistyped manifest key on S3 committed an empty run under the night's run id (a local typo was
    refused); a bucket that does not exist was "error: The specified bucket does not exist", naming nothing."""
    from pipelines.vqa import MANIFEST_EXTS

    so = {"key": "testing", "secret": "testing"}
    skip = skip_by_extension(MANIFEST_EXTS, "manifest")
    with pytest.raises(FileNotFoundError, match=r"^--input s3://spote/m/manifset\.jsonl: no such object"):
        list_sources("s3://spote/m/manifset.jsonl", so, skip)
    assert list_sources("s3://spote/nightly/2026-12-06/", so, skip) == ([], [])  # an empty prefix: nothing arrived
    with pytest.raises(FileNotFoundError, match=r"^--input s3://no-such-bucket-h/m\.jsonl: no such bucket"):
        list_sources("s3://no-such-bucket-h/m.jsonl", so, skip)


def test_a_file_name_that_is_not_utf8_is_skipped_and_named_with_its_bytes_escaped(tmp_path):
    """A Latin-1 name (an old zip, an SMB share) reaches Python with lone surrogates, which no Arrow string holds:
    it is a skipped source, not the end of the whole job; its neighbours are read."""
    (tmp_path / "good.png").write_bytes(b"x")
    with open(os.fsencode(tmp_path) + b"/Rechnung_M\xfcller.png", "wb") as f:
        f.write(b"x")
    accepted, skipped = list_sources(str(tmp_path), None, skip_by_extension(("png",), "image"))
    assert [a["rel"] for a in accepted] == ["good.png"]
    assert skipped == [{"source": "Rechnung_M\\xfcller.png", "reason": "path is not UTF-8 (rename it to read it)"}]
    folder = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(folder)
    with pytest.raises(ValueError, match=r"caf\\xe9: the path is not UTF-8 text"):
        list_sources(os.fsdecode(folder), None, skip_by_extension(("png",), "image"))
