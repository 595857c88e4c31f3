import json

import numpy as np
from typer.testing import CliRunner

from research.patch_legibility import app, draw_views, render
from spote.bench.scenes import CODE_ALPHABET, make_open_item


def test_both_arms_see_the_same_views_with_the_glyph_on_the_same_tokens():
    items = [make_open_item(0, "val", i) for i in range(6)]
    views = draw_views(np.random.default_rng(3), items, 12, (10.0, 26.0))
    small, r64 = render(views, 64, 8)
    large, r96 = render(views, 96, 12)
    assert [im.size for im in small] == [(64, 64)] * 12 and [im.size for im in large] == [(96, 96)] * 12
    assert r64.shape == r96.shape == (12, 64)                       # the same 8 x 8 grid
    assert np.abs(r64 - r96).max() < 0.2 and (r64.sum(1) > 0).all()  # the glyph covers the same patches
    for item, _, k, h64, target in views:
        assert 9.0 <= h64 <= 27.0 and CODE_ALPHABET[target] == item.answer[k]


def test_a_short_run_scores_every_arm_by_height(tmp_path):
    out = tmp_path / "pl.json"
    res = CliRunner().invoke(app, ["--steps", "2", "--batch", "4", "--train-items", "3", "--val-items", "2",
                                   "--val-views", "20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    held = json.loads(out.read_text())["held_out"]
    assert set(held) == {"64/8", "96/12"}
    for arm in held.values():
        assert sum(b["n"] for b in arm["by_height"].values()) == 20 and 0 <= arm["accuracy"] <= 1


def test_an_arm_whose_size_is_not_a_multiple_of_its_patch_is_refused():
    for arms, says in (("64/8,90/12", "multiple of the"), ("64/8,96x12", "expected INPUT/PATCH")):
        res = CliRunner().invoke(app, ["--arms", arms, "--steps", "1"])
        assert res.exit_code == 2 and says in res.output, res.output


def test_a_frozen_tower_keeps_its_weights_while_its_head_learns(tmp_path):
    from research.patch_legibility import GlyphReader
    from training.build import build_model, build_processor

    processor = build_processor()
    build_model(processor, seed=1).save_pretrained(tmp_path / "m", safe_serialization=True)
    reader = GlyphReader.frozen_from(tmp_path / "m", seed=0, lr=1e-2)
    assert (reader.size, reader.patch, reader.frozen) == (64, 8, True)
    before = [p.detach().clone() for p in reader.tower.parameters()]
    head = reader.head.weight.detach().clone()
    views = draw_views(np.random.default_rng(0), [make_open_item(0, "val", i) for i in range(3)], 6, (10.0, 26.0))
    reader.step(*render(views, 64, 8), [v[4] for v in views])
    assert all((a == b).all() for a, b in zip(before, reader.tower.parameters()))
    assert not (head == reader.head.weight).all()
    res = CliRunner().invoke(app, ["--frozen-tower", str(tmp_path / "nothing"), "--steps", "1"])
    assert res.exit_code == 2 and "saved model" in " ".join(res.output.split()), res.output
