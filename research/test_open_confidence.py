import pytest

from research.open_confidence import agreement, confidence_table


def _row(correct, tokens, readings=None, answer="K7", method="spote"):
    conf = 1.0
    for p in tokens:
        conf *= p
    row = {"method": method, "open": True, "correct": correct, "answer": answer, "confidence": conf,
           "token_confidences": tokens}
    if readings is not None:
        row["readings"] = readings
    return row


def test_agreement_is_the_share_of_places_reading_the_answer():
    assert agreement(_row(True, [0.9, 0.9], [["K7", -0.2], ["k 7", -0.3], ["K1", -0.4], ["K7", -0.1]])) == 0.75
    assert agreement(_row(True, [0.9, 0.9])) == 0.0   # the whole image answered: no place was read


def test_a_score_that_ranks_every_right_answer_first_has_auroc_one():
    # right answers: a long code read surely per token (low product); wrong ones: one unsure character
    rows = [_row(True, [0.8] * 5, [["K7", -1.0]]) for _ in range(3)] + \
           [_row(False, [0.99, 0.4], [["K7", -1.0]]) for _ in range(3)] + [_row(False, [0.9], method="baseline")]
    table = confidence_table(rows)
    assert table["n"] == 6 and table["exact_match"] == 0.5 and table["places_read"] == 6
    assert table["auroc"]["product"] == 0.0                # 0.8^5 = 0.33 < 0.99 x 0.4 = 0.40
    assert table["auroc"]["least token p"] == pytest.approx(1.0)
    assert table["auroc"]["geometric mean"] == pytest.approx(1.0)
