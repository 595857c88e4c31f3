import json
import math

import pytest

from research.answer_choice import RULES, run, score_rows
from tests.conftest import random_tiny_dir  # noqa: F401 (fixture: a random spote-tiny)


def _r(text, per_token):
    return (text, [per_token] * max(1, len(text)))


def test_surest_takes_the_best_mean_log_p_and_mbr_the_reading_the_others_nearly_agree_with():
    readings = [_r("3A9", -0.2), _r("3A9Q", -0.5), _r("3A9Q", -0.6), _r("3A0Q", -0.7), _r("8", -3.0)]
    assert RULES["surest"](readings) == 0
    assert RULES["agreed"](readings) == 0
    assert RULES["vote"](readings) == 1  # "3A9Q" twice; of the two, the surer
    assert RULES["mbr"](readings) == 1 and RULES["mbr_uniform"](readings) == 1


def test_mbr_weights_the_readings_by_how_sure_they_are():
    """Three readings of "K7" at p 0.05 per token against one "K1" at p 0.9: unweighted, "K7" is nearest
    the rest; weighted, the sure reading decides. A tie in risk goes to the surer reading."""
    unsure, sure = math.log(0.05), math.log(0.9)
    readings = [_r("K7", unsure), _r("K7", unsure), _r("K1", sure), _r("K7", unsure)]
    assert readings[RULES["mbr_uniform"](readings)][0] == "K7"
    assert readings[RULES["mbr"](readings)][0] == "K1"
    tie = [_r("K7", unsure), _r("K7", unsure), _r("K1", sure), _r("K1", sure)]
    assert tie[RULES["mbr_uniform"](tie)][0] == "K1"


def test_score_rows_counts_every_item_and_any_is_the_ceiling():
    def row(gold, variant, readings, answer=None):
        return {"gold": gold, "variant": variant, "answer": answer or (readings[0]["text"] if readings else ""),
                "readings": readings}

    def rd(text, lp):
        return {"window": [0, 0, 10, 10], "text": text, "logprobs": [lp] * len(text)}

    rows = [row("AB", "small", [rd("A", -0.1), rd("AB", -0.3)]),
            row("CD", "split", [rd("CD", -0.2), rd("C", -0.5)]),
            row("EF", "large", [], answer="EF")]  # answered on the whole image: no readings
    t = score_rows(rows)
    assert t["all"]["surest"]["n"] == 3 and t["all"]["surest"]["exact_match"] == pytest.approx(2 / 3)
    assert t["all"]["any"]["exact_match"] == 1.0 and t["small"]["surest"]["exact_match"] == 0.0
    assert t["large"]["vote"]["exact_match"] == 1.0


def test_a_run_keeps_every_reading_and_answers_with_the_surest(random_tiny_dir, tmp_path):  # noqa: F811
    out = tmp_path / "c.json"
    run(model=str(random_tiny_dir), n=2, seed=0, split="val", out=out)
    items = json.loads(out.read_text())["items"]
    assert len(items) == 2
    for r in items:
        if r["readings"]:
            texts = [x["text"] for x in r["readings"]]
            best = RULES["surest"]([(x["text"], x["logprobs"]) for x in r["readings"]])
            assert r["answer"] == texts[best] and all(len(x["window"]) == 4 for x in r["readings"])
