"""Question files: the questions a job asks of every tile or page.

A question file is a YAML or JSON list of entries, each a mapping with

- ``question`` (text, required): what to ask, e.g. ``what is the reference code ?``;
- ``choices`` (optional): a list, or ``"a,b,c"``, of at least two distinct answers: a closed-set
  question. Without it the question is open-ended and the model writes its answer;
- ``field`` (optional): the name the answer is reported under (the results' ``field`` column): an
  ASCII letter, then ASCII letters, digits or ``_``, at most 64 (a name any SQL engine takes unquoted); unique in the file (case-insensitively, as SQL
  column names are). An entry without one is named by its position: ``q0``, ``q1``, ...

Every value is the text written: YAML 1.1's implicit types are not applied, so ``[on, off]``, ``[007, 010]``,
``12:30`` or ``1.10`` stay those words, and a JSON number or ``true`` is its text as written too. The one
type kept is null (``null``, ``~`` or no value at all): an entry's key given no value is as if left out. YAML's
merge key works (``<<: *yes_no`` takes the keys of the entry anchored ``&yes_no`` that this one does not give).

The whole file is checked before any work: every problem found is named in one ``ValueError``.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter

from spote.images import check_choices, shows_nothing

from .planning import lone_surrogate, not_utf8_path, not_utf8_text
from .storage import read_bytes

QUESTION_KEYS = ("question", "choices", "field")
FIELD_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
FIELD_RULE = "a letter A-Z or a-z, then such letters, digits 0-9 or '_' (at most 64)"


def default_field(index: int) -> str:
    """The field name of an entry that gives none: its position in the file, ``q<index>`` (0-based)."""
    return f"q{index}"


class _Mapping(dict):
    """A mapping of the file, with ``repeated``: each key given more than once -> how many times."""

    repeated: dict[str, int]


@functools.cache
def _text_loader() -> type:
    """A YAML loader that keeps every scalar as the text written (no implicit booleans, numbers, dates or
    sexagesimals: the user's answers are words, ``on``, ``007``, ``12:30``), null aside, and that notes a key
    repeated in a mapping (YAML's usual loaders keep the last one without a word)."""
    import yaml

    merge = "tag:yaml.org,2002:merge"

    class TextLoader(yaml.BaseLoader):
        flatten_mapping = yaml.constructor.SafeConstructor.flatten_mapping  # YAML's merge key, ``<<: *common``

        def construct_mapping(self, node, deep=False):
            # a key written twice is counted before merging: keys merged in are defaults the entry may override
            times = Counter(self.construct_object(key_node, deep=deep) for key_node, _ in node.value
                            if key_node.tag != merge)
            self.flatten_mapping(node)
            mapping = _Mapping(super().construct_mapping(node, deep=deep))
            mapping.repeated = {key: n for key, n in times.items() if n > 1}
            return mapping

    # null is YAML's and JSON's word for "no value", never meant as text, and ``<<`` its merge key (entries
    # sharing choices): PyYAML's own patterns for them
    null = "tag:yaml.org,2002:null"
    for start, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items():
        for tag, pattern in resolvers:
            if tag in (null, merge):
                TextLoader.add_implicit_resolver(tag, pattern, [start])
    TextLoader.add_constructor(null, lambda loader, node: None)
    return TextLoader


def load_questions(uri: str, storage_options=None) -> list[dict]:
    """The questions of a YAML or JSON file, checked: ``[{"question", "choices", "field"}]`` in file order.

    ``choices`` is a JSON list of strings, or ``""`` for an open-ended question; ``field`` is the
    entry's own name or ``q<index>``.

    Raises:
        FileNotFoundError: no file at ``uri``.
        ValueError: ``uri`` is a folder; the file is not YAML/JSON, not a non-empty list, or has bad entries; one message,
            ``<uri>: <problem>; <problem> ...``, each problem naming its entry and line.
    """
    import yaml

    if (why := not_utf8_path("question file", uri)) is not None:  # the run records where its questions came from
        raise ValueError(why)
    try:
        data = read_bytes(uri, storage_options)
        if (why := not_utf8_text(data[:65536])) is not None:  # UTF-16 without a mark decodes, NULs and all
            raise ValueError(f"{uri}: {why}")
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{uri}: not UTF-8 text ({err.reason} at byte {err.start}: saved in another encoding, or "
                         "no text file); save it as UTF-8") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"question file {uri}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"question file {uri} is a folder; give a YAML or JSON file") from None
    loader = None
    try:
        loader = _text_loader()(text)  # YAML is a superset of JSON; the nodes keep each entry's line
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.reader.ReaderError as err:  # raised as the loader reads the text: a character YAML refuses
        raise ValueError(f"{uri}: not valid YAML or JSON: {_reader_problem(err, text)}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{uri}: not valid YAML or JSON: {_yaml_problem(err)}") from None
    except RecursionError:  # PyYAML composes and constructs nested nodes recursively
        raise ValueError(f"{uri}: nested too deeply to read (a question file is a flat list of entries)") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, list) or not data:
        raise ValueError(f"{uri}: expected a non-empty list of {{question, choices, field}} entries, "
                         f"got {_kind(data)}")
    lines = [item.start_mark.line + 1 for item in node.value]
    questions, problems, seen = [], [], {}
    for i, entry in enumerate(data):
        where = f"entry {i + 1} (line {lines[i]})"
        question, name, entry_problems = _entry(entry, i)
        if (odd := _lone_surrogate(entry)) is not None:  # "\ud800" in JSON or YAML: text no file can hold
            question, entry_problems = None, [*entry_problems, f"holds {odd}, an escaped lone surrogate, which is no "
                                                               "character"]
        by_position = not (isinstance(entry, dict) and entry.get("field") is not None)
        if name is not None and name.lower() in seen:
            theirs, theirs_by_position = seen[name.lower()]
            mine = " (its name by position: it gives no field)" if by_position else ""
            whose = f"{theirs}'s name by position (it gives no field)" if theirs_by_position else f"{theirs}'s"
            entry_problems.append(f"field {name!r}{mine} is also {whose} (field names must be unique)")
        elif name is not None:
            seen[name.lower()] = (where, by_position)
        problems += [f"{where}: {p}" for p in entry_problems]
        questions.append(question)
    if problems:
        raise ValueError(f"{uri}: " + "; ".join(problems))
    return questions


def _entry(entry, index: int) -> tuple[dict | None, str | None, list[str]]:
    """(the checked question, or None when it has problems; its field name, None when not a name; its problems)."""
    if not isinstance(entry, dict):
        return None, None, [f"expected a mapping with a 'question', got {_kind(entry)}"]
    problems = [f"unknown key {k!r} (an entry has {', '.join(QUESTION_KEYS)})" for k in entry
                if k not in QUESTION_KEYS]
    problems += [f"key {k!r} is given {n} times; give it once" for k, n in getattr(entry, "repeated", {}).items()]
    question = entry.get("question")
    if "question" not in entry:
        problems.append("no 'question'")
    elif question is None or (isinstance(question, str) and shows_nothing(question)):
        problems.append("empty question")
    elif not isinstance(question, str):
        problems.append(f"question must be text, got {_kind(question)}")
    name = entry.get("field")
    if name is None:
        name = default_field(index)
    elif not isinstance(name, str) or not FIELD_PATTERN.fullmatch(name):
        problems.append(f"field {name!r} is not a name: use {FIELD_RULE}")
        name = None
    choices, choice_problem = _choices(entry.get("choices"))
    if choice_problem:
        problems.append(choice_problem)
    if problems:
        return None, name, problems
    return {"question": question.strip(), "choices": json.dumps(choices, ensure_ascii=False) if choices else "", "field": name}, name, []


def _choices(raw) -> tuple[list[str] | None, str]:
    """(the choices as text, or None for an open question; a problem, or "")."""
    if raw is None:
        return None, ""
    if not (isinstance(raw, str) or isinstance(raw, list) and all(isinstance(c, str) for c in raw)):
        return None, f"choices must be a list of strings (or 'a,b,c'), got {_kind(raw)}"
    # a single answer gets the file's own hint; the rest (an empty choice as in "a,,b", a repeated one) is
    # refused as `spote ask --choices` refuses it
    items = (raw.split(",") if raw.strip() else []) if isinstance(raw, str) else raw
    if len(items) < 2:
        return None, (f"choices needs at least two answers, got {[c.strip() for c in items]} "
                      "(leave choices out to ask an open question)")
    try:
        return list(check_choices(items)), ""
    except ValueError as err:
        return None, str(err)


def _yaml_problem(err) -> str:
    """A YAML parser error as one short line: what is wrong and where (1-based line and column)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _lone_surrogate(value) -> str | None:
    """The first lone surrogate (``\\ud800``) in the strings of ``value``, escaped, or None."""
    if isinstance(value, str):
        return lone_surrogate(value)
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple)):
        return next((odd for v in value if (odd := _lone_surrogate(v)) is not None), None)
    return None


def _reader_problem(err, text: str) -> str:
    """A character YAML does not allow (a form feed or an escape pasted from a PDF, a NUL) as one short line
    naming it and where it is (1-based line and column)."""
    pos = getattr(err, "position", None)
    char = getattr(err, "character", None)
    if not isinstance(pos, int) or not isinstance(char, int):  # PyYAML gives the character's code point
        return " ".join(str(err).split())
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"control character U+{char:04X} at line {line}, column {column} (YAML allows none; remove it)"


def _kind(value) -> str:
    """A value's kind for an error message: ``a list [...]``, ``text 'x'``, ``nothing``."""
    if value is None:
        return "nothing"
    kind = next((k for t, k in ((str, "text"), (list, "a list"), (dict, "a mapping")) if isinstance(value, t)),
                type(value).__name__)
    shown = repr(value)
    return f"{kind} {shown if len(shown) <= 60 else shown[:57] + '...'}"
