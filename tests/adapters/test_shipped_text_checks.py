"""What the shipped model cannot read as text is refused before it is scored: its markers in a question
or a choice, a question or choice it reads as unknown tokens alone, and choices it reads as the same tokens."""

import re

import pytest
from PIL import Image

VIEW = [Image.new("RGB", (64, 64), (255, 255, 255))]


@pytest.mark.parametrize("question, choices, says", [
    ("what is in the <image> box ?", ["A", "B"], "the question holds '<image>'"),
    ("what letter ?", ["A", "<image>"], "choice '<image>' holds '<image>'"),
])
def test_a_marker_of_the_model_in_the_text_is_refused(shipped_adapter, question, choices, says):
    """``<image>`` in a question asked the processor for a second image: "Found total 2 <image> tokens and 1
    images", naming neither the question nor the token."""
    with pytest.raises(ValueError, match=f"^unreadable question: {says}, which this model reads as a marker of its own"):
        shipped_adapter.choice_logprobs([VIEW], question, choices)


def test_a_marker_in_an_open_question_is_refused(shipped_adapter):
    with pytest.raises(ValueError, match="^unreadable question: the question holds '<image>'"):
        shipped_adapter.generate(VIEW, "what is the code in the <image> field ?")


def test_choices_read_as_the_same_tokens_are_refused(shipped_adapter):
    """Two choices the model reads as the same tokens score the same, and the first was always the answer."""
    tok = shipped_adapter.tokenizer
    if tok("yes no", add_special_tokens=False).input_ids != tok("yes  no", add_special_tokens=False).input_ids:
        pytest.skip("this tokenizer reads the two spaces")
    with pytest.raises(ValueError, match=r"^unreadable question: choices 'yes no' and 'yes  no' are the same tokens to this model"):
        shipped_adapter.choice_logprobs([VIEW], "what is written ?", ["yes no", "yellow", "yes  no"])


@pytest.mark.parametrize("choices, bad, says", [
    (["Red", "yellow", "Blue"], "Red", "every token of it is"), (["yes", "No"], "No", "every token of it is"),
    (["Yes", "no"], "Yes", "every token of it is"), (["yes", "No."], "No.", "1 of its 2 tokens are")])
def test_a_choice_with_a_token_the_model_lacks_is_refused(shipped_adapter, choices, bad, says):
    """spote-tiny's vocabulary lacks 'Red', 'No' and 'Yes': each reads <unk> (alone, or beside '.') and scores as
    any word the model lacks, so the other choice won on every page at confidence 0.99999, whatever the page
    showed."""
    tok = shipped_adapter.tokenizer
    if tok.unk_token_id is None or tok.unk_token_id not in tok(bad, add_special_tokens=False).input_ids:
        pytest.skip("this tokenizer reads the choice")
    with pytest.raises(ValueError, match=rf"^unreadable question: choice '{re.escape(bad)}' is not read as written: "
                                         rf"{says} '<unk>' .*; reword it \('{re.escape(bad.lower())}' it reads\)$"):
        shipped_adapter.choice_logprobs([VIEW], "what is it ?", choices)
    lower = [c.lower() for c in choices]
    assert shipped_adapter.choice_logprobs([VIEW], "what is it ?", lower).shape == (1, len(lower))
    with pytest.raises(ValueError, match=r"choice 'No!' is not read as written: .*; reword it$"):   # 'no!' lacks '!' too
        shipped_adapter.choice_logprobs([VIEW], "what is it ?", ["yes", "No!"])


def test_the_text_checks_run_once_per_question_and_never_pass_a_later_bad_one(shipped_adapter, monkeypatch):
    """A search scores many batches of views for one question: the markers are read and the choices
    tokenized once for it, and a bad question or choice set after a good one is still refused."""
    calls = []
    markers = type(shipped_adapter).markers
    monkeypatch.setattr(type(shipped_adapter), "markers", lambda self: calls.append(1) or markers(self))
    shipped_adapter.choice_logprobs([VIEW, VIEW], "what letter now ?", ["A", "B"])
    first = len(calls)
    assert first >= 1
    for _ in range(3):
        shipped_adapter.choice_logprobs([VIEW, VIEW], "what letter now ?", ["A", "B"])
    assert len(calls) == first
    with pytest.raises(ValueError, match="^unreadable question: the question holds '<image>'"):
        shipped_adapter.choice_logprobs([VIEW], "what <image> letter now ?", ["A", "B"])
    tok = shipped_adapter.tokenizer
    if tok("yes no", add_special_tokens=False).input_ids == tok("yes  no", add_special_tokens=False).input_ids:
        shipped_adapter.choice_logprobs([VIEW], "what letter now ?", ["red", "blue"])
        with pytest.raises(ValueError, match=r"^unreadable question: choices 'yes no' and 'yes  no' are the same tokens"):
            shipped_adapter.choice_logprobs([VIEW], "what letter now ?", ["yes no", "yes  no"])


@pytest.mark.parametrize("question", ["x" * 20000, "🛥️", "⛵⛵"])
def test_a_question_the_model_reads_as_nothing_but_unknown_tokens_is_refused(shipped_adapter, question):
    """spote-tiny's word-piece vocabulary folds a word it lacks (a 20,000-character run, an emoji) into one
    <unk>: the model saw no question and answered 'AAA' at the confidence of a guess."""
    tok = shipped_adapter.tokenizer
    if tok.unk_token_id is None or set(tok(question, add_special_tokens=False).input_ids) != {tok.unk_token_id}:
        pytest.skip("this tokenizer reads the question")
    with pytest.raises(ValueError, match="^unreadable question: the question reads as nothing this model knows"):
        shipped_adapter.generate(VIEW, question)
    shipped_adapter.generate(VIEW, "what is the code " + question)  # a question with words it knows is read


@pytest.mark.parametrize("question", ["\u200b\u200c\ufeff", "\u2060 \u00ad", "\x00\x01"])
def test_a_question_of_characters_that_show_nothing_is_empty(question):
    from spote.images import check_question

    with pytest.raises(ValueError, match="^empty question: it holds only characters that show nothing"):
        check_question(question)
    assert check_question(" k7 \u200b") == "k7 \u200b"
