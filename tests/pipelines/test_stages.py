"""The job's stages one row at a time, without Ray."""

import json

from PIL import Image

from pipelines.stages import SpotePredictor


def _row(image: Image.Image, **kw) -> dict:
    return {"id": "a", "source": "a.png", "question": "what letter is in the red box ?",
            "choices": json.dumps(list("ABCDEF")), "status": "ok", "error": "", "pixels": image.tobytes(),
            "height": image.height, "width": image.width, **kw}


def test_an_answered_rows_policy_is_the_one_the_search_ran(random_tiny_dir):
    """The ``policy`` column said ``use_relevance: true`` where the search read no attention (a budget with no
    room for the relevance pass, an endpoint); an answered row records ``SpotResult.policy``, a row never
    answered the policy asked for."""
    img = Image.new("RGB", (320, 240), (200, 200, 200))
    tight = SpotePredictor(str(random_tiny_dir), {"budget": 3}, device="cpu")
    out = tight.predict(_row(img))
    assert out["status"] == "ok" and json.loads(out["policy"])["use_relevance"] is False
    assert json.loads(out["policy"])["budget"] == 3
    roomy = SpotePredictor(str(random_tiny_dir), {"budget": 96, "exit_entropy": 0.0, "exit_entropy_per_ln_k": 0.0},
                           device="cpu")
    assert json.loads(roomy.predict(_row(img))["policy"])["use_relevance"] is True
    failed = tight.predict(_row(img, status="error", error="unreadable image"))
    assert json.loads(failed["policy"])["use_relevance"] is True   # asked; nothing ran
