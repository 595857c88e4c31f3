"""Where a path or URI points, and how it is shown: schemes in any case, credentials never shown."""

import pytest

from spote.uris import is_remote, local_path, lower_scheme, redact_uri, redact_urls


@pytest.mark.parametrize("uri, shown", [
    ("https://h/a.png?X-Amz-Signature=abc", "https://h/a.png"),
    ("HTTP://alice:pw@h:8/a.png#t=1", "http://h:8/a.png"),
    ("ftp://erin:pw@127.0.0.1:1/a.png", "ftp://127.0.0.1:1/a.png"),       # userinfo in any scheme
    ("smb://dom;u:pw@srv/share/x.png", "smb://srv/share/x.png"),
    ("s3://bucket/a?b#c.png", "s3://bucket/a?b#c.png"),                    # '?' and '#' are part of a key
    ("s3://bucket/me@home.png", "s3://bucket/me@home.png"),               # '@' in a key is a name
    ("http://alice:pa/55SECRET@h:8/x.png", "http://h:8/x.png"),           # a password with an unescaped '/'
    ("http://alice:p#SECRET@h/x.png?a=b@c", "http://h/x.png"),            # ... or '#'; an '@' in the query
    ("ftp://erin:p/w@h/a.png", "ftp://h/a.png"),
    ("/tmp/x?y.png", "/tmp/x?y.png"), ("file:///a%20b.png", "file:///a%20b.png")])
def test_a_uri_is_shown_without_its_credentials(uri, shown):
    assert redact_uri(uri) == shown


def test_every_uri_in_a_message_is_shown_without_its_credentials():
    said = "could not read: ftp://erin:pw@h:1/a.png: refused; see https://x:y@h/p?sig=1 (and s3://b/k?v)"
    assert redact_urls(said) == "could not read: ftp://h:1/a.png: refused; see https://h/p (and s3://b/k?v)"


def test_schemes_are_case_insensitive():
    """``HTTPS://h/a.png`` was "Protocol not known: HTTPS" (RFC 3986 3.1: schemes are case-insensitive)."""
    assert lower_scheme("HTTPS://h/A.png") == "https://h/A.png" and lower_scheme("S3://B/K") == "s3://B/K"
    assert lower_scheme("C:/data/x.png") == "C:/data/x.png" and lower_scheme("Notes:today.png") == "Notes:today.png"
    assert local_path("FILE:///tmp/a%20b.png") == "/tmp/a b.png" and not is_remote("File:///tmp/a.png")
    assert is_remote("Https://h/a.png")
