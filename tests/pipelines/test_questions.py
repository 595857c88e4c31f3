"""Question files: fields by name, open and closed entries, and one clear message for a bad file."""

import json

import pytest
from typer.testing import CliRunner

from pipelines import documents
from pipelines.questions import load_questions


def _write(tmp_path, text: str, name: str = "q.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_default_questions_ask_for_fields_by_name():
    qs = load_questions(str(documents.DEFAULT_QUESTIONS))
    by_field = {q["field"]: q for q in qs}
    assert list(by_field) == ["reference_code", "date", "total_amount", "signed"]
    open_fields = [f for f, q in by_field.items() if not q["choices"]]
    assert open_fields == ["reference_code", "date", "total_amount"]
    assert json.loads(by_field["signed"]["choices"]) == ["yes", "no"]
    assert by_field["reference_code"]["question"] == "what is the reference code ?"
    assert not any("red box" in q["question"] for q in qs)


def test_yaml_and_json_files_give_the_same_questions(tmp_path):
    yaml_uri = _write(tmp_path, "- field: invoice_number\n  question: what is the invoice number ?\n"
                                "- field: paid\n  question: is the invoice paid ?\n  choices: [yes, no]\n"
                                "- field: currency\n  question: which currency ?\n  choices: EUR, USD, GBP\n")
    json_uri = _write(tmp_path, json.dumps([
        {"field": "invoice_number", "question": "what is the invoice number ?"},
        {"field": "paid", "question": "is the invoice paid ?", "choices": ["yes", "no"]},
        {"field": "currency", "question": "which currency ?", "choices": "EUR, USD, GBP"}]), "q.json")
    qs = load_questions(yaml_uri)
    assert qs == load_questions(json_uri)
    assert qs[0] == {"question": "what is the invoice number ?", "choices": "", "field": "invoice_number"}
    assert json.loads(qs[1]["choices"]) == ["yes", "no"] and json.loads(qs[2]["choices"]) == ["EUR", "USD", "GBP"]


def test_choices_are_stored_as_written_so_a_query_finds_them(tmp_path):
    """``WHERE choices LIKE '%日本%'`` must find a row: no ``\\u`` escapes in the stored text."""
    qs = load_questions(_write(tmp_path, "- field: country\n  question: which country ?\n  choices: [日本, Ελλάδα, yes]\n"))
    assert "日本" in qs[0]["choices"] and "Ελλάδα" in qs[0]["choices"] and "\\u" not in qs[0]["choices"]
    assert json.loads(qs[0]["choices"]) == ["日本", "Ελλάδα", "yes"]


def test_files_without_field_names_keep_working_and_are_named_by_position(tmp_path):
    uri = _write(tmp_path, "- question: is the red box ticked ?\n  choices: [yes, no]\n"
                           "- {question: 'count ?', choices: '1,2'}\n- question: what is written ?\n")
    qs = load_questions(uri)
    assert [q["field"] for q in qs] == ["q0", "q1", "q2"]
    assert json.loads(qs[0]["choices"]) == ["yes", "no"] and json.loads(qs[1]["choices"]) == ["1", "2"]
    assert qs[2]["choices"] == ""


def test_every_value_is_kept_as_the_text_written(tmp_path):
    """YAML 1.1 would read these as booleans (on, true, Yes), octal (010 is 8), base 60 (12:30 is 750) and
    floats (1.10 is 1.1): the answers the model compares are the words in the file."""
    uri = _write(tmp_path, "- {field: on, question: 'is the light on ?', choices: [on, off]}\n"
                           "- {question: 'is it true ?', choices: [true, false]}\n"
                           "- {question: 'agreed ?', choices: [Yes, No]}\n"
                           "- {question: 'which agent ?', choices: [007, 010, 012]}\n"
                           "- {question: 'which slot ?', choices: [12:30, 13:45]}\n"
                           "- {question: 'which version ?', choices: [1.10, 1.2]}\n"
                           "- {question: 1.10, field: no}\n")
    qs = load_questions(uri)
    assert [json.loads(q["choices"]) for q in qs[:6]] == [["on", "off"], ["true", "false"], ["Yes", "No"],
                                                           ["007", "010", "012"], ["12:30", "13:45"], ["1.10", "1.2"]]
    assert qs[0]["field"] == "on" and qs[6] == {"question": "1.10", "choices": "", "field": "no"}


def test_json_numbers_and_booleans_are_their_text_as_written(tmp_path):
    uri = _write(tmp_path, '[{"question": "which version ?", "choices": [1.10, 7, 1e3, true]}]', "q.json")
    assert json.loads(load_questions(uri)[0]["choices"]) == ["1.10", "7", "1e3", "true"]


def test_a_key_given_null_or_no_value_is_as_if_left_out(tmp_path):
    yaml_uri = _write(tmp_path, "- question: what is written ?\n  choices:\n  field: ~\n"
                                "- {question: 'and here ?', choices: null}\n")
    json_uri = _write(tmp_path, '[{"question": "what is written ?", "choices": null, "field": null},'
                                ' {"question": "and here ?", "choices": null}]', "q.json")
    expected = [{"question": "what is written ?", "choices": "", "field": "q0"},
                {"question": "and here ?", "choices": "", "field": "q1"}]
    assert load_questions(yaml_uri) == expected and load_questions(json_uri) == expected


def test_entries_share_keys_through_yaml_merge_keys(tmp_path):
    """``<<: *anchor`` was refused as an unknown key ``'<<'``: a form's yes/no questions share their choices."""
    uri = _write(tmp_path, "- &tick\n  field: signed\n  question: is the form signed ?\n  choices: [yes, no]\n"
                           "- <<: *tick\n  field: stamped\n  question: is the form stamped ?\n"
                           "- <<: [*tick]\n  field: dated\n")
    assert load_questions(uri) == [
        {"question": "is the form signed ?", "choices": '["yes", "no"]', "field": "signed"},
        {"question": "is the form stamped ?", "choices": '["yes", "no"]', "field": "stamped"},
        {"question": "is the form signed ?", "choices": '["yes", "no"]', "field": "dated"}]


BAD_FILES = {
    "unknown key": ("- question: what is the date ?\n  choice: [a, b]\n",
                    "entry 1 (line 1): unknown key 'choice' (an entry has question, choices, field)"),
    "empty question": ("- field: date\n  question: what is the date ?\n- field: total\n  question: '  '\n",
                       "entry 2 (line 3): empty question"),
    "no question": ("- field: date\n", "entry 1 (line 1): no 'question'"),
    "question not text": ("- question: [what, is]\n", "entry 1 (line 1): question must be text, got a list"),
    "duplicate field": ("- {field: date, question: 'what is the date ?'}\n- {field: Date, question: 'when ?'}\n",
                        "entry 2 (line 2): field 'Date' is also entry 1 (line 1)'s (field names must be unique)"),
    "field clashes with a position name": ("- {field: q1, question: 'a ?'}\n- {question: 'b ?'}\n",
                                           "entry 2 (line 2): field 'q1' (its name by position: it gives no field) "
                                           "is also entry 1 (line 1)'s"),
    "field clashes with an earlier position name": ("- {question: 'a ?'}\n- {field: q0, question: 'b ?'}\n",
                                                   "entry 2 (line 2): field 'q0' is also entry 1 (line 1)'s name by "
                                                   "position (it gives no field)"),
    "question of invisible characters": ("- question: \"\\u200b\\ufeff\"\n", "entry 1 (line 1): empty question"),
    "field not a name": ("- {field: total amount, question: 'what is the total ?'}\n",
                         "entry 1 (line 1): field 'total amount' is not a name: use a letter A-Z or a-z, then such letters"),
    "field in another script": ("- {field: 番号, question: 'what is the number ?'}\n",
                                "field '番号' is not a name: use a letter A-Z or a-z"),
    "field a number": ("- {field: 7, question: 'what is the total ?'}\n", "field '7' is not a name"),
    "choices a mapping": ("- question: is it signed ?\n  choices: {yes: 1}\n",
                          "entry 1 (line 1): choices must be a list of strings (or 'a,b,c'), got a mapping"),
    "choices nested": ("- question: which ?\n  choices: [[a], [b]]\n",
                       "choices must be a list of strings (or 'a,b,c'), got a list [['a'], ['b']]"),
    "choices a number": ("- question: how many ?\n  choices: 3\n",  # the text '3', one answer
                         "choices needs at least two answers, got ['3']"),
    "one choice": ("- question: is it signed ?\n  choices: [yes]\n",
                   "choices needs at least two answers, got ['yes'] (leave choices out to ask an open question)"),
    "duplicate choices": ("- question: which ?\n  choices: [a, b, a]\n", "duplicate choices: ['a', 'b', 'a']"),
    # refused as `spote ask --choices a,,b` refuses it, not read as two answers
    "empty choice": ("- question: which ?\n  choices: a,,b\n", "entry 1 (line 1): empty choice in ['a', '', 'b']"),
    "empty choice in a list": ("- question: which ?\n  choices: [a, '', b]\n", "empty choice in ['a', '', 'b']"),
    "trailing comma": ("- {question: 'which ?', choices: 'a,b,'}\n", "empty choice in ['a', 'b', '']"),
    "null choice": ("- question: which ?\n  choices: [a, ~]\n",
                    "choices must be a list of strings (or 'a,b,c'), got a list ['a', None]"),
    # YAML's loaders keep the last of a repeated key without a word
    "repeated key": ("- field: date\n  question: what is the date ?\n- field: total\n  question: what is the total ?\n"
                     "  question: what is the sum ?\n", "entry 2 (line 3): key 'question' is given 2 times; give it once"),
    "repeated key in JSON": ('[{"question": "a ?", "choices": "x,y", "choices": "x,z", "choices": "y,z"}]',
                             "entry 1 (line 1): key 'choices' is given 3 times; give it once"),
    "repeated key beside a merge key": ("- &a {field: a, question: 'x ?'}\n- <<: *a\n  field: b\n  field: c\n",
                                        "entry 2 (line 2): key 'field' is given 2 times; give it once"),
    "merge key of a word": ("- {question: 'x ?'}\n- {<<: yes, field: b}\n",
                            "not valid YAML or JSON: expected a mapping or list of mappings for merging"),
    "entry not a mapping": ("- what is the date ?\n", "entry 1 (line 1): expected a mapping with a 'question', got text"),
    "not a list": ("question: what is the date ?\n", "expected a non-empty list of {question, choices, field} entries, "
                                                    "got a mapping"),
    "empty file": ("", "expected a non-empty list of {question, choices, field} entries, got nothing"),
    "not YAML": ("- {field: date, question: what is the date ?}\n",
                 "not valid YAML or JSON: expected ',' or '}', but got '?' at line 1, column 44"),
    # PyYAML refuses these as it reads the text, before it parses: a ReaderError, which was a traceback
    "form feed pasted from a PDF": ("- field: total\n  question: \"what is the total\x0c ?\"\n",
                                    "control character U+000C at line 2, column 31 (YAML allows none; remove it)"),
    "NUL bytes": ("\x00\x00\x00", "control character U+0000 at line 1, column 1"),
    # JSON's and YAML's escapes can name half a UTF-16 pair, which no file or Arrow string holds: the job
    # failed in its planning tasks with a traceback
    "escaped lone surrogate": ('- question: "a\\ud800b ?"\n', "entry 1 (line 1): holds \\ud800, an escaped lone "
                                                             "surrogate, which is no character"),
    "escaped lone surrogate in a choice": ('[{"question": "ok ?", "choices": ["x", "y\\udc00"]}]', "holds \\udc00"),
    "nested too deeply": ("- question: which ?\n  choices: " + "[" * 5000 + "]" * 5000 + "\n",
                          "nested too deeply to read"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_question_file_gives_one_message_naming_the_problem(tmp_path, kind):
    text, says = BAD_FILES[kind]
    uri = _write(tmp_path, text)
    with pytest.raises(ValueError) as err:
        load_questions(uri)
    msg = str(err.value)
    assert msg.startswith(f"{uri}: ") and says in msg, msg
    assert "\n" not in msg


def test_every_problem_of_a_file_is_named_at_once(tmp_path):
    uri = _write(tmp_path, "- {field: date, question: 'what is the date ?'}\n- {question: '', colour: red}\n"
                           "- {field: date, question: 'when ?', choices: [x]}\n")
    with pytest.raises(ValueError) as err:
        load_questions(uri)
    problems = str(err.value).removeprefix(f"{uri}: ").split("; ")
    assert problems == ["entry 2 (line 2): unknown key 'colour' (an entry has question, choices, field)",
                        "entry 2 (line 2): empty question",
                        "entry 3 (line 3): choices needs at least two answers, got ['x'] "
                        "(leave choices out to ask an open question)",
                        "entry 3 (line 3): field 'date' is also entry 1 (line 1)'s (field names must be unique)"]


def test_a_binary_file_is_not_a_question_file(tmp_path):
    (tmp_path / "q.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(ValueError, match="not UTF-8 text .*or no text file"):
        load_questions(str(tmp_path / "q.yaml"))


@pytest.mark.parametrize("encoding, says", [("latin-1", "not UTF-8 text (invalid continuation byte"),
                                            ("utf-16", "is UTF-16 or UTF-32 text"), ("utf-16-le", "is UTF-16 text")])
def test_a_question_file_in_another_encoding_says_so(tmp_path, encoding, says):
    """A Latin-1 file said "not a text file", and a UTF-16 one without a mark the same: both are text, in
    another encoding than UTF-8, which is what the user must change."""
    (tmp_path / "q.yaml").write_bytes("- question: quelle est la référence ?\n".encode(encoding))
    with pytest.raises(ValueError) as err:
        load_questions(str(tmp_path / "q.yaml"))
    assert says in str(err.value) and str(err.value).endswith("save it as UTF-8"), str(err.value)


@pytest.mark.parametrize("kind", ["unknown key", "duplicate field", "not YAML", "missing file", "repeated key",
                                  "empty choice", "form feed pasted from a PDF", "nested too deeply",
                                  "escaped lone surrogate"])
def test_the_documents_command_refuses_a_bad_question_file_in_one_line(tmp_path, kind):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    uri = str(tmp_path / "nowhere.yaml") if kind == "missing file" else _write(tmp_path, BAD_FILES[kind][0])
    res = CliRunner().invoke(documents.app, ["--input", str(inbox), "--output", str(tmp_path / "out"),
                                             "--questions", uri])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Traceback" not in res.output
    assert (BAD_FILES[kind][1] if kind != "missing file" else "nowhere.yaml") in res.stderr
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_missing_or_folder_question_file_is_named_as_the_question_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"question file .*nowhere.yaml: no such file"):
        load_questions(str(tmp_path / "nowhere.yaml"))
    with pytest.raises(ValueError, match=r"is a folder; give a YAML or JSON file"):
        load_questions(str(tmp_path))
