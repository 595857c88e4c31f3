import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from spote.bench.scenes import make_item, make_open_item
from spote.spotlight import Box, ViewRenderer
from training.train import check_settings, train


def test_training_smoke_saves_a_loadable_checkpoint(tmp_path):
    report = train(tmp_path / "m", steps=4, batch_size=8, vision_steps=2, eval_items=3, log_every=1,
                   checkpoint_every=2)
    assert np.isfinite(report["final_loss_ema"])
    assert [p.name for p in (tmp_path / "m").glob("checkpoint-*")] == ["checkpoint-2"]  # after step 2 of 0..3
    mid = _tensors(tmp_path / "m" / "checkpoint-2", "language_model")
    end = _tensors(tmp_path / "m", "language_model")
    assert mid.keys() == end.keys() and not all(torch.equal(mid[k], end[k]) for k in mid)  # step 3 came after it
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"model.safetensors", "config.json", "processor_config.json", "train_log.jsonl"} <= files
    assert not any(f.endswith((".bin", ".pt")) for f in files)
    log = [json.loads(x) for x in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log} == {1, 2}
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "m", use_safetensors=True)
    proc = AutoProcessor.from_pretrained(tmp_path / "m")
    assert model.config.model_type == "llava" and proc.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id


def _tensors(path, prefix):
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(path / "model.safetensors").items() if prefix in k}


def test_stage2_vision_lr_scale_zero_keeps_stage1_vision_weights(tmp_path):
    kw = dict(batch_size=8, vision_steps=2, eval_items=2, seed=3)
    train(tmp_path / "frozen1", steps=1, stage2_vision_lr_scale=0.0, **kw)  # same seed: same stage 1
    train(tmp_path / "frozen3", steps=3, stage2_vision_lr_scale=0.0, **kw)
    train(tmp_path / "free3", steps=3, stage2_vision_lr_scale=1.0, **kw)
    v1, v3, free = (_tensors(tmp_path / d, "vision_tower") for d in ("frozen1", "frozen3", "free3"))
    assert v1 and all(torch.equal(v1[k], v3[k]) for k in v1)            # stage 2 left the tower as stage 1 made it
    assert not all(torch.equal(v3[k], free[k]) for k in v3)            # without the scale, stage 2 moves it
    lm1, lm3 = (_tensors(tmp_path / d, "language_model") for d in ("frozen1", "frozen3"))
    assert not all(torch.equal(lm1[k], lm3[k]) for k in lm1)           # the rest still learns


def test_shipped_model_reads_close_views_and_is_unsure_on_the_whole_image(shipped_adapter):
    """The committed weights really learned: close views answered well, whole images uncertain."""
    close_ok, h_close, h_whole = [], [], []
    for i in range(60):
        item = make_item(0, "val", i)
        if item.evidence is None or item.easy:
            continue
        r = ViewRenderer(item.image, shipped_adapter.input_size)
        ev = Box(*item.evidence)
        side = max(ev.width, ev.height) * 2.0
        cx, cy = ev.centre
        lp = shipped_adapter.choice_logprobs([r.render(Box.square(cx, cy, side), "zoom"),
                                              [r.global_view]], item.question, item.choices)
        ent = -(lp.exp() * lp).sum(-1)
        close_ok.append(item.choices[int(lp[0].argmax())] == item.answer)
        h_close.append(float(ent[0]))
        h_whole.append(float(ent[1]))
    assert np.mean(close_ok) >= 0.8  # the shipped model reads these items almost all right
    assert np.mean(h_whole) > np.mean(h_close) + 0.5  # measured 1.24 vs 0.24 nats


def test_shipped_model_spells_codes_and_is_unsure_where_it_cannot_read(shipped_adapter):
    """The committed weights read open items: from the oracle's close-up of the field they spell a code
    one character a token, often exactly; on the whole page, where the glyphs are a few pixels high,
    each token's p is near a guess among the 34 code characters."""
    from spote.bench.run import run_method
    from spote.bench.scenes import CODE_ALPHABET, make_open_item
    from spote.core import PolicyConfig

    exact, logp_close, logp_whole = 0, [], []
    for i in range(24):  # a reader of a fifth of codes: 8 items would leave its count to chance (1-4 of 8)
        item = make_open_item(0, "val", i)
        for method, ps in (("oracle", logp_close), ("baseline", logp_whole)):
            res = run_method(method, shipped_adapter, item.image, item.question, None, PolicyConfig(),
                             evidence=item.evidence, max_passes=1)
            assert res.answer and set(res.answer) <= set(CODE_ALPHABET)
            assert len(res.token_confidences) == len(res.answer_token_ids) == len(res.answer)  # one a character
            assert res.confidence == pytest.approx(min(res.token_confidences), rel=1e-5)  # the least sure character
            ps.extend(np.log(res.token_confidences))
            exact += method == "oracle" and res.answer == item.answer
    assert exact >= 3  # measured 7 of 24
    assert np.mean(logp_whole) < np.mean(logp_close) - 1.0  # mean log p a token: measured -2.67 against -1.03; ln(1/34) = -3.53


def test_shipped_model_answers_an_unknown_phrasing_with_nothing_read_and_without_tokenizer_marks(shipped_adapter):
    """Asked in words it was not trained on ("what is the reference code ?"), the shipped model mostly
    ends the answer at once (on most pages surely: about 0.01 nats at the end step), and no answer text
    keeps the WordPiece "##". SPOT-E then reports the empty answer as nothing read: confidence 0 and no
    token confidences, however sure the end step was."""
    from spote.bench.scenes import make_open_item
    from spote.core import PolicyConfig, exit_threshold, spote

    empty, sure = 0, []
    for i in range(10):
        item = make_open_item(0, "val", i)
        gen = shipped_adapter.generate([ViewRenderer(item.image, shipped_adapter.input_size).global_view],
                                       "what is the reference code ?")
        assert not gen.text.startswith("#") and (gen.text == "") == (gen.token_ids == [])
        empty += not gen.token_ids
        if not gen.token_ids and gen.end_entropy <= exit_threshold(PolicyConfig(), None):  # SPOT-E's open exit
            sure.append(item)
    assert empty >= 5 and sure  # measured 8 and 7 of 10
    res = spote(shipped_adapter, sure[0].image, "what is the reference code ?")
    assert res.answer == "" and res.evidence_box is None  # it stopped on the whole image, sure of ending
    assert res.confidence == 0.0 and res.token_confidences == [] and res.answer_token_ids == []
    ids = shipped_adapter.tokenizer.convert_tokens_to_ids(["##T", "##Q"])
    assert shipped_adapter.decode_answer(ids) == "TQ"


def test_stage1_stream_labels_lie_in_each_items_choice_set():
    """Stage 1 reads out over the item's own choices: every label is one of them, never the whole vocabulary."""
    from training.build import IMAGE_SIZE
    from training.train import CloseViewStream

    pv, labels, mask, region, order = next(iter(CloseViewStream(seed=3, batch_size=24, pool=12)))
    assert (order == -100).all()  # no glyph places to learn on closed views
    assert torch.equal(region, torch.ones(24, 64))  # closed views: the mean of the image tokens
    assert pv.shape == (24, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(mask[torch.arange(24), labels]).all()  # the label is never masked out
    allowed = torch.isfinite(mask).sum(1)
    assert ((allowed >= 2) & (allowed <= 10)).all()  # a choice set, not the whole vocabulary


def test_bridge_windows_sit_on_the_crossing_at_boat_scale():
    """Bridge negatives: centred near where the road crosses the water, a boat (14-24 px) spanning
    12-48 px of the input, so the model learns the crossing is not a boat at the scales a search tries."""
    from training.build import IMAGE_SIZE
    from training.train import BRIDGE_SHIFT, _bridge_box

    rng = np.random.default_rng(0)
    for i in range(6):
        item = make_item(0, "train", i, kind="boat")
        (bx, _), (top, bottom) = item.meta["bridge"], item.meta["water_rows"]
        for _ in range(20):
            box = _bridge_box(rng, item)
            assert 14 * IMAGE_SIZE / 48 - 1e-6 <= box.width <= 24 * IMAGE_SIZE / 12 + 1e-6
            assert abs(box.centre[0] - bx) <= BRIDGE_SHIFT * box.width + 1e-6
            assert top <= box.centre[1] <= bottom


def test_far_views_label_large_evidence_and_leave_small_evidence_unsure():
    """Far views (the whole image, squares of half the short side or more): an easy item's evidence is
    legible there and keeps its answer; a small item's is a few pixels and gets no label (UNSURE)."""
    from training.train import _far_view

    rng = np.random.default_rng(0)
    labelled = {True: [], False: []}
    for i in range(120):
        item = make_item(0, "train", 20_000_000 + i)
        box, label = _far_view(rng, item)
        assert box.width >= min(item.image.size) / 2 - 1e-6
        assert label in (None, item.answer)
        if item.evidence is not None:
            labelled[item.easy].append(label is not None)
    assert labelled[True] and np.mean(labelled[True]) >= 0.7   # measured 30 of 33 on train scenes
    assert labelled[False] and not any(labelled[False])        # never legible from afar


def test_stage1_loss_pulls_unsure_rows_toward_uniform_over_the_choices():
    from training.train import UNSURE, stage1_loss

    mask = torch.full((2, 8), float("-inf"))
    mask[:, [1, 2, 3]] = 0.0
    y = torch.tensor([2, UNSURE])
    peaked = torch.tensor([[0.0, 0.0, 5.0, 0.0, 0, 0, 0, 0]] * 2)
    flat = torch.tensor([[0.0, 0.0, 5.0, 0.0, 0, 0, 0, 0], [0.0] * 8])
    # the labelled row alone: the usual cross-entropy
    assert torch.isclose(stage1_loss(peaked[:1] + mask[:1], y[:1], mask[:1]),
                         torch.nn.functional.cross_entropy(peaked[:1] + mask[:1], y[:1]))
    # an unsure row costs ln K when flat, more when it picks one choice
    assert stage1_loss(flat + mask, y, mask) < stage1_loss(peaked + mask, y, mask)
    logits = (flat + mask).requires_grad_()
    stage1_loss(logits, y, mask).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[:, [0, 4]].abs().sum() == 0
    lone = stage1_loss(flat[1:] + mask[1:], y[1:], mask[1:])
    assert math.isclose(lone.item(), math.log(3), rel_tol=1e-5)


def test_legible_only_far_views_drop_the_unsure_ones_for_close_views():
    """``far_unsure=False``: an illegible far view becomes the usual close view, so no row is UNSURE
    and every row is labelled with one of its item's choices."""
    from training.train import UNSURE, CloseViewStream

    def batch(far_unsure):
        stream = CloseViewStream(0, batch_size=48, pool=48, far_views=1.0, far_unsure=far_unsure)
        return next(iter(stream))

    _, with_unsure, _, _, _ = batch(True)
    _, legible_only, mask, _, _ = batch(False)
    assert (with_unsure == UNSURE).any() and not (legible_only == UNSURE).any()
    assert torch.isfinite(mask[torch.arange(len(legible_only)), legible_only]).all()


def test_easy_rate_sets_stage2s_share_of_easy_scenes():
    from itertools import islice

    from training.train import ViewStream

    def easy_share(rate):
        return np.mean([s.easy for s in islice(ViewStream(0, 8, easy_rate=rate).scenes(), 200)])

    assert easy_share(0.15) < 0.25 < 0.4 < easy_share(0.6)


def test_init_from_fine_tunes_a_saved_model_without_touching_its_vision_tower(tmp_path):
    train(tmp_path / "base", steps=1, batch_size=8, vision_steps=2, eval_items=2, seed=3)
    report = train(tmp_path / "ft", steps=2, batch_size=8, lr=2e-4, warmup=1, eval_items=2, seed=3,
                   init_from=tmp_path / "base", easy_rate=0.5)
    assert report["init_from"] == str(tmp_path / "base") and report["vision_steps"] == 0
    log = [json.loads(x) for x in (tmp_path / "ft" / "train_log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log} == {2}                                 # no stage 1 on a saved model
    v0, v1 = (_tensors(tmp_path / d, "vision_tower") for d in ("base", "ft"))
    assert v0 and all(torch.equal(v0[k], v1[k]) for k in v0)
    lm0, lm1 = (_tensors(tmp_path / d, "language_model") for d in ("base", "ft"))
    assert not all(torch.equal(lm0[k], lm1[k]) for k in lm0)                # the fine-tune moved the LM


def test_tower_from_takes_stage1_parts_from_a_saved_model_and_starts_the_lm_fresh(tmp_path):
    from training.build import build_model, build_processor

    train(tmp_path / "base", steps=2, batch_size=8, vision_steps=2, eval_items=2, seed=3)
    # lr 0 and no stage 1 steps: what is saved is exactly what the continuation starts from
    train(tmp_path / "cont", steps=1, batch_size=8, lr=0.0, vision_steps=0, eval_items=2, seed=3,
          tower_from=tmp_path / "base")
    base, cont = _tensors(tmp_path / "base", ""), _tensors(tmp_path / "cont", "")
    parts = ("vision_tower", "multi_modal_projector", "embed_tokens")
    taken = [k for k in base if any(p in k for p in parts)]
    assert taken and all(torch.equal(base[k], cont[k]) for k in taken)
    fresh = {f"language_model.model.{k}": v for k, v in build_model(build_processor(), 3).model.language_model.state_dict().items()}
    layers = [k for k in cont if k.startswith("language_model.") and "embed_tokens" not in k]
    assert layers and all(torch.equal(cont[k], fresh[k]) for k in layers)        # the LM layers start fresh
    assert not all(torch.equal(base[k], cont[k]) for k in layers)                 # not the saved model's
    with pytest.raises(ValueError, match="give one"):
        train(tmp_path / "both", steps=1, init_from=tmp_path / "base", tower_from=tmp_path / "base")


# ----------------------------------------------------------------------------- open items
def test_open_tokenizer_spells_codes_per_character_and_keeps_closed_ids():
    from spote.bench.scenes import TASKS, open_items
    from spote.prompt import format_question
    from training.build import build_processor, code_token_ids

    closed, opened = build_processor(), build_processor(open_items=True)
    assert len(closed.tokenizer) == 54  # the shipped tokenizer's size: the closed recipe is unchanged
    for _, _, question, choices in TASKS:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": format_question(question, choices)}]},
                {"role": "assistant", "content": choices[-1]}]
        text = closed.apply_chat_template(msgs, tokenize=False)
        assert opened.tokenizer(text).input_ids == closed.tokenizer(text).input_ids
    tok = opened.tokenizer
    first, rest = code_token_ids(tok)
    for item in open_items("train", 30, 0):
        ids = tok(item.answer, add_special_tokens=False).input_ids
        assert len(ids) == len(item.answer) and ids[0] in first and all(i in rest for i in ids[1:])
        assert tok.decode(ids) == item.answer
        assert tok.unk_token_id not in tok(item.question).input_ids
    with pytest.raises(ValueError, match="does not spell codes"):
        code_token_ids(closed.tokenizer)


def test_open_targets_follow_what_each_view_shows():
    """Whole view of a mixed code: the large prefix sure, the small rest unsure. A 1:1 close-up of a
    small code reads it all; one cut to its first glyphs reads those only (a partial reading); a view
    far from the field reads nothing, so the whole code is unsure; beside the whole image, the whole code."""
    from spote.bench.scenes import make_open_item
    from training.train import read_alone, read_with_context

    mixed = make_open_item(0, "train", 1, variant="mixed")
    k = mixed.meta["legible_whole"].index(False)
    whole = read_alone(mixed, Box.full(*mixed.image.size))
    assert whole.text == mixed.answer and whole.unsure == (False,) * k + (True,) * (len(mixed.answer) - k)
    small = next(it for i in range(20) if len((it := make_open_item(0, "train", i, variant="small")).answer) >= 3)
    ev = Box(*small.evidence)
    close = Box.square(*ev.centre, max(64, 1.05 * ev.width))
    assert read_alone(small, close) == (small.answer, (False,) * len(small.answer))
    g0, g1 = Box(*small.meta["chars"][0]), Box(*small.meta["chars"][1])
    cut = Box(g0.x0 - 2, g0.y0 - 2, g1.x1 + 1, g1.y1 + 2)
    assert read_alone(small, cut) == (small.answer[:2], (False, False))                   # confident and partial
    far = Box(0, 0, 40, 40) if ev.x0 > 100 or ev.y0 > 100 else Box(*[v - 41 for v in small.image.size] + list(small.image.size))
    assert read_alone(small, far) == (small.answer, (True,) * len(small.answer))
    assert read_with_context(small, cut) == (small.answer, (False, False) + (True,) * (len(small.answer) - 2))


def test_encode_open_supervises_each_code_token_and_marks_unsure_ones():
    from spote.bench.scenes import OPEN_QUESTION
    from training.build import build_processor, code_token_ids
    from training.train import OpenLabel, encode, encode_open

    processor = build_processor(open_items=True)
    first, rest = code_token_ids(processor.tokenizer)
    view = [Image.new("RGB", (64, 64), (255, 255, 255))]
    closed_ex = (view, "what digit is in the red box ?", tuple("0123456789"), "7")
    open_ex = (view, OPEN_QUESTION.format("reference"), None, OpenLabel("3A9Q", (False, True, False, True)))
    batch = encode_open(processor, [closed_ex, open_ex], first, rest)
    ids, labels, unsure = batch["input_ids"], batch["labels"], batch["unsure"]
    assert torch.equal(labels[0], encode(processor, [closed_ex, closed_ex], None)["labels"][0][-labels.shape[1]:])
    assert processor.tokenizer.convert_ids_to_tokens(ids[1, -5:].tolist()) == ["3", "##A", "##9", "##Q", "</s>"]
    assert labels[1, -5:].tolist() == [ids[1, -5].item(), -100, ids[1, -3].item(), -100, ids[1, -1].item()]
    assert unsure[1, -5:].tolist() == [0, 2, 0, 2, 0] and unsure[0].sum() == 0 and (labels[1, :-5] == -100).all()
    first_unsure = encode_open(processor, [(view, open_ex[1], None, OpenLabel("K7", (True, False)))], first, rest)
    assert first_unsure["unsure"][0, -3:].tolist() == [1, 0, 0]  # a code's first token: the first-character set


def test_open_loss_is_cross_entropy_on_sure_targets_and_uniform_on_unsure_ones():
    from training.train import open_loss

    torch.manual_seed(0)
    first, rest = [1, 2, 3], [4, 5]
    logits = torch.randn(2, 5, 8)
    labels = torch.full((2, 5), -100)
    labels[:, 3:] = torch.tensor([[2, 7], [6, 7]])
    none = torch.zeros(2, 5, dtype=torch.int8)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 8), labels[:, 1:].reshape(-1))
    assert torch.isclose(open_loss(logits, labels, none, first, rest), ce)  # no unsure target: the model's own loss
    unsure = none.clone()
    unsure[0, 2] = 2  # position 2's token (predicted at 1) is unsure, over the continuation set
    flat = torch.zeros(1, 5, 8)
    flat[0, 1, [4, 5]] = 10.0  # all the mass spread evenly on the two continuation characters
    peaked = flat.clone()
    peaked[0, 1, 4] = 14.0
    lab, uns = torch.full((1, 5), -100), unsure[:1]
    assert open_loss(flat, lab, uns, first, rest) < open_loss(peaked, lab, uns, first, rest)
    assert math.isclose(open_loss(flat, lab, uns, first, rest).item(), math.log(2), rel_tol=1e-3)
    x = torch.zeros(1, 5, 8, requires_grad=True)
    open_loss(x, lab, uns, first, rest).backward()
    assert x.grad[0, 1, [4, 5]].lt(0).all() and x.grad[0, [0, 2, 3, 4]].abs().sum() == 0  # only the unsure position


def test_a_scenes_renderer_shared_by_its_examples_draws_what_fresh_ones_do():
    from training.train import IMAGE_SIZE, sample_open_views, sample_views

    for item in (make_item(0, "train", 3), make_item(0, "train", 8, kind="boat"), make_open_item(0, "train", 5)):
        sample = sample_open_views if item.open else sample_views
        shared = ViewRenderer(item.image, IMAGE_SIZE)
        a, b = np.random.default_rng(1), np.random.default_rng(1)
        for _ in range(12):
            views, label = sample(a, item, shared)
            fresh_views, fresh_label = sample(b, item)
            assert label == fresh_label and [v.tobytes() for v in views] == [v.tobytes() for v in fresh_views]
        assert "global_view" in vars(shared)  # some of the 12 showed the whole image


def test_open_share_zero_draws_the_closed_streams_and_open_share_mixes_codes_in():
    from training.train import CloseViewStream, ViewStream

    scenes = ViewStream(0, 8).scenes()
    assert not any(next(scenes).open for _ in range(40))
    mixed = ViewStream(0, 8, open_share=0.5).scenes()
    kinds = [next(mixed).open for _ in range(40)]
    assert 8 < sum(kinds) < 32
    pv, labels, mask, region, order = next(iter(CloseViewStream(seed=3, batch_size=32, pool=8, open_share=0.5)))
    assert mask.shape[1] > 54 and torch.isfinite(mask[torch.arange(32), labels]).all()
    allowed = torch.isfinite(mask).sum(1)
    assert (allowed == 34).any() and ((allowed >= 2) & (allowed <= 34)).all()  # 34 code characters for glyph views
    glyph = allowed == 34
    assert (region[glyph] < 1).any(1).all() and (region[glyph].sum(1) > 0).all()  # read where the glyph lies
    assert torch.equal(region[~glyph], torch.ones(int((~glyph).sum()), 64))
    assert (order[~glyph] == -100).all() and (order[glyph, 0] != -100).any()
    assert ((order[glyph, 0] == -100) | ((order[glyph, 0] >= 0) & (order[glyph, 0] < 5))).all()


def test_open_phrasing_asks_open_items_in_other_words_the_tokenizer_spells_and_leaves_the_views_alone():
    from training.build import build_processor
    from training.train import OPEN_PHRASINGS, ViewStream, open_question

    item = make_open_item(0, "train", 3)
    rng = np.random.default_rng(0)
    assert open_question(rng, item, 0.0) == item.question and rng.random() == np.random.default_rng(0).random()
    asked = [open_question(np.random.default_rng(i), item, 1.0) for i in range(30)]
    assert set(asked) == {p.format(item.meta["field_name"]) for p in OPEN_PHRASINGS}
    assert "what is the reference code ?" in {p.format("reference") for p in OPEN_PHRASINGS}  # the documents job's
    half = [open_question(np.random.default_rng(i), item, 0.5) for i in range(200)]
    assert 60 < sum(q == item.question for q in half) < 140
    tok = build_processor(open_items=True).tokenizer  # every word of every phrasing is a word it knows
    for q in asked:
        assert tok.unk_token_id not in tok(q, add_special_tokens=False).input_ids, q
    # the same views and targets as without it; only the open examples' questions differ
    plain = next(iter(ViewStream(0, 16, views_per_scene=4, open_share=0.5)))
    other = next(iter(ViewStream(0, 16, views_per_scene=4, open_share=0.5, open_phrasing=1.0)))
    assert torch.equal(plain["pixel_values"], other["pixel_values"])
    assert not torch.equal(plain["input_ids"], other["input_ids"])
    with pytest.raises(ValueError, match="open_phrasing"):
        check_settings(Path("unused"), open_phrasing=0.3)  # without open items
    with pytest.raises(ValueError, match="open_phrasing"):
        check_settings(Path("unused"), open_share=0.5, open_phrasing=1.5)


def test_glyph_order_is_known_only_where_the_view_shows_the_codes_ends():
    from spote.bench.scenes import make_open_item
    from spote.spotlight import Box
    from training.train import glyph_order

    item = make_open_item(0, "train", 5, variant="small")
    chars = [Box(*b) for b in item.meta["chars"]]
    n = len(chars)
    field = Box(min(b.x0 for b in chars), min(b.y0 for b in chars), max(b.x1 for b in chars), max(b.y1 for b in chars))
    whole = Box.square(*field.centre, 1.5 * max(field.width, field.height))
    assert [glyph_order(item, whole, k) for k in range(n)] == [(k, int(k == n - 1)) for k in range(n)]
    last = chars[-1]
    tight = Box.square(*last.centre, 1.2 * last.height)  # only the last glyph: its place is unknowable, its end is not
    assert glyph_order(item, tight, n - 1) == (-100, 1)
    first = chars[0]
    assert glyph_order(item, Box.square(*first.centre, 1.2 * first.height), 0) == (0, -100 if n > 1 else 1)


def test_glyph_region_covers_the_glyphs_patches_and_follows_it_across_the_view():
    """The readout weights of glyph k are the shares of the 8 x 8 patches it covers in the letterboxed view."""
    from spote.bench.scenes import make_open_item
    from spote.spotlight import Box
    from training.train import glyph_region

    item = make_open_item(0, "train", 5, variant="small")
    chars = [Box(*b) for b in item.meta["chars"]]
    g = chars[0]
    side = 4 * g.height
    centred = glyph_region(item, Box.square(*g.centre, side), 0).reshape(8, 8)
    scale = 64 / side  # the glyph's area in patches (8 x 8 px each)
    assert np.isclose(centred.sum(), g.width * g.height * scale**2 / 64, rtol=1e-3)
    rows, cols = np.nonzero(centred)
    assert 3 <= rows.mean() <= 4 and 3 <= cols.mean() <= 4  # the middle of the grid
    left = glyph_region(item, Box.square(g.centre[0] + side / 4, g.centre[1], side), 0).reshape(8, 8)
    assert np.nonzero(left)[1].mean() < cols.mean() - 1  # the view moved right: the glyph sits left in it
    second = glyph_region(item, Box.square(*g.centre, side), 1).reshape(8, 8)
    assert np.nonzero(second)[1].mean() > cols.mean()  # the next glyph lies to its right


def test_open_training_smoke_saves_a_model_that_generates_codes(tmp_path):
    report = train(tmp_path / "m", steps=2, batch_size=8, vision_steps=2, eval_items=2, open_share=0.5,
                   open_eval_items=2, log_every=1, order_weight=0.5, open_phrasing=0.3)
    assert report["open_share"] == 0.5 and {"val_open_whole_exact_match", "val_open_close_entropy"} <= set(report)
    assert report["open_phrasing"] == 0.3
    proc = AutoProcessor.from_pretrained(tmp_path / "m")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "m", use_safetensors=True)
    assert model.config.model_type == "llava"
    assert proc.tokenizer.convert_ids_to_tokens(proc.tokenizer("K7", add_special_tokens=False).input_ids) == ["K", "##7"]


def test_tower_from_a_closed_model_copies_the_shared_token_embeddings(tmp_path):
    from training.build import build_processor

    train(tmp_path / "closed", steps=1, batch_size=8, vision_steps=1, eval_items=2, seed=3)
    train(tmp_path / "open", steps=1, batch_size=8, lr=0.0, vision_steps=0, eval_items=2, seed=3, open_share=0.5,
          open_eval_items=0, tower_from=tmp_path / "closed")
    key = "language_model.model.embed_tokens.weight"
    old, new = (_tensors(tmp_path / d, "embed_tokens")[key] for d in ("closed", "open"))
    vocab = build_processor(open_items=True).tokenizer.get_vocab()
    assert new.shape[0] == len(vocab) > old.shape[0] == 54
    assert torch.equal(new[:54], old)  # the closed tokens keep their ids and their embeddings
    assert not torch.equal(new[vocab["##7"]], new[vocab["7"]])


def test_lm_from_starts_stage2_from_a_saved_language_model_after_stage_1(tmp_path):
    """``lm_from``: stage 2 starts from the saved model's language model (layers and the shared tokens'
    embeddings), while the code tokens keep the embeddings stage 1 taught them."""
    train(tmp_path / "closed", steps=2, batch_size=8, vision_steps=1, eval_items=2, seed=3)
    kw = dict(steps=1, batch_size=8, lr=0.0, vision_steps=2, eval_items=2, seed=3, open_share=0.5,
              open_eval_items=0, tower_from=tmp_path / "closed")
    train(tmp_path / "fresh-lm", **kw)
    report = train(tmp_path / "extended", lm_from=tmp_path / "closed", **kw)
    assert report["lm_from"] == str(tmp_path / "closed")
    closed, fresh, extended = (_tensors(tmp_path / d, "language_model") for d in ("closed", "fresh-lm", "extended"))
    layers = [k for k in closed if "embed_tokens" not in k]
    assert layers and all(torch.equal(closed[k], extended[k]) for k in layers)
    assert not all(torch.equal(closed[k], fresh[k]) for k in layers)  # without it, the layers start fresh
    key = "language_model.model.embed_tokens.weight"
    assert torch.equal(extended[key][:54], closed[key])                # the shared tokens: the saved LM's
    assert not torch.equal(fresh[key][:54], closed[key])               # (stage 1 moved them)
    assert torch.equal(extended[key][54:], fresh[key][54:])            # the code tokens: stage 1's
    log = [json.loads(x) for x in (tmp_path / "extended" / "train_log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log} == {1, 2}


def test_lm_from_refuses_another_language_model_shape_before_stage_1(tmp_path):
    from transformers import LlavaForConditionalGeneration

    train(tmp_path / "closed", steps=1, batch_size=8, vision_steps=0, eval_items=2, seed=3)
    config = LlavaForConditionalGeneration.from_pretrained(tmp_path / "closed").config
    config.text_config.num_hidden_layers = 2
    LlavaForConditionalGeneration(config).save_pretrained(tmp_path / "other")
    AutoProcessor.from_pretrained(tmp_path / "closed").save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"lm_from \(--lm-from\) .* another language model shape .*layers\.2\."):
        train(tmp_path / "m", steps=1, vision_steps=1, lm_from=tmp_path / "other")
    assert not (tmp_path / "m").exists()
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "training.train", "--lm-from", str(tmp_path / "other"),
                           "--out", str(tmp_path / "m")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    assert [line for line in proc.stderr.splitlines() if "error" in line.lower()][0].startswith(
        "training.train: error: lm_from (--lm-from)")
    assert not (tmp_path / "m").exists()


def test_distill_weight_holds_the_closed_views_tokens_to_the_starting_towers(tmp_path):
    """Feature distillation (``distill_weight``): the first step's term is 0 (the copy is the tower), and a
    continued stage 1 with it moves the closed views' image tokens less than the same run without it."""
    train(tmp_path / "base", steps=1, batch_size=8, vision_steps=1, eval_items=2, seed=3)
    kw = dict(steps=1, batch_size=8, vision_steps=4, vision_lr=1e-2, eval_items=2, seed=3, open_share=0.5,
              open_eval_items=0, tower_from=tmp_path / "base")
    train(tmp_path / "free", **kw)
    train(tmp_path / "held", distill_weight=100.0, **kw)
    log = [json.loads(x) for x in (tmp_path / "held" / "train_log.jsonl").read_text().splitlines()]
    distill = [r["distill"] for r in log if r["stage"] == 1]
    assert distill[0] < 1e-9 < distill[-1]  # stage 1 logs its first and last steps
    assert not any("distill" in r for r in (json.loads(x) for x in (tmp_path / "free" / "train_log.jsonl").open()))

    items = [make_item(3, "val", i) for i in range(6)]
    processor = AutoProcessor.from_pretrained(tmp_path / "base")
    views = [ViewRenderer(it.image, 64).render(Box.square(*Box(*it.evidence).centre, 2 * max(Box(*it.evidence).width,
                                                                                      Box(*it.evidence).height)), "zoom")[0]
             if it.evidence else it.image.resize((64, 64)) for it in items]  # closed close views and whole images
    pv = processor.image_processor(views, return_tensors="pt")["pixel_values"]

    from research.tower_drift import image_tokens

    def tokens(name):
        return image_tokens(tmp_path / name, pv)

    base = tokens("base")
    moved = {name: ((tokens(name) - base) ** 2).sum().item() for name in ("free", "held")}
    assert 0 < moved["held"] < 0.5 * moved["free"]


def test_tower_layers_deepens_a_continued_tower_from_the_identity(tmp_path):
    """``tower_layers`` beyond the saved tower's start as the identity (``deepen_tower``): the deeper tower's
    image tokens are the saved one's until stage 1 trains the new layers; fewer layers, or new ones that no
    stage 1 would train, are refused before any work; continued again, the deeper tower keeps its depth."""
    from training.build import build_model, build_processor
    from training.train import deepen_tower

    train(tmp_path / "base", steps=1, batch_size=8, vision_steps=1, eval_items=2, seed=3)
    saved = AutoModelForImageTextToText.from_pretrained(tmp_path / "base", use_safetensors=True).model.vision_tower
    deep = build_model(build_processor(), 3, tower_layers=6).model.vision_tower
    assert deepen_tower(deep, saved) == 2
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(deep(x, output_hidden_states=True).hidden_states[-1],
                              saved(x, output_hidden_states=True).hidden_states[-1], atol=1e-6)
    report = train(tmp_path / "deep", steps=1, batch_size=8, vision_steps=2, vision_lr=1e-2, eval_items=2, seed=3,
                   tower_from=tmp_path / "base", tower_layers=5)
    assert report["tower_layers"] == 5
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "deep", use_safetensors=True)
    assert model.config.vision_config.num_hidden_layers == 5
    assert model.model.vision_tower.encoder.layers[4].mlp.fc2.weight.abs().sum() > 0  # stage 1 trained the new layer
    again = train(tmp_path / "again", steps=1, batch_size=8, vision_steps=1, eval_items=2, seed=3, tower_from=tmp_path / "deep")
    assert again["tower_layers"] == 5  # without tower_layers a continued tower keeps its depth
    for kw, why in (({"tower_layers": 3}, "at least"), ({"tower_layers": 6, "vision_steps": 0}, "vision_steps")):
        with pytest.raises(ValueError, match=f"tower_layers.*{why}"):
            train(tmp_path / "refused", **{"steps": 1, "vision_steps": 1, "tower_from": tmp_path / "base", **kw})
    assert not (tmp_path / "refused").exists()


def test_train_new_layers_only_leaves_the_saved_layers_as_they_were(tmp_path):
    """With ``train_new_layers_only`` stage 1 moves the layers ``tower_layers`` adds and nothing of the
    saved tower below them (patch and position embeddings, its layers); without it, those move too.
    Asked for with no layers added it is refused before any work."""
    train(tmp_path / "base", steps=1, batch_size=8, vision_steps=1, eval_items=2, seed=3)
    saved = AutoModelForImageTextToText.from_pretrained(tmp_path / "base", use_safetensors=True).model.vision_tower

    def moved(out, **kw):
        report = train(out, steps=1, batch_size=8, vision_steps=2, vision_lr=1e-2, eval_items=2, seed=3,
                       tower_from=tmp_path / "base", tower_layers=5, **kw)
        tower = AutoModelForImageTextToText.from_pretrained(out, use_safetensors=True).model.vision_tower
        before = saved.state_dict()
        old = {k: not torch.equal(v, before[k]) for k, v in tower.state_dict().items() if k in before}
        return report, old, tower.encoder.layers[4].mlp.fc2.weight.abs().sum().item()

    report, old, new_fc2 = moved(tmp_path / "new-only", train_new_layers_only=True)
    assert report["train_new_layers_only"] and new_fc2 > 0
    kept = [k for k in old if k.startswith(("embeddings.", "pre_layrnorm.", "encoder.layers."))]
    assert kept and not any(old[k] for k in kept)
    _, old_all, _ = moved(tmp_path / "all")
    assert any(old_all[k] for k in kept)
    with pytest.raises(ValueError, match="train_new_layers_only"):
        train(tmp_path / "refused", steps=1, vision_steps=1, tower_from=tmp_path / "base", train_new_layers_only=True)
    assert not (tmp_path / "refused").exists()


def test_glyph_views_draw_the_glyph_height_asked_for():
    """Stage 1 glyph views put glyph k at glyph_px input pixels high (log-uniform between the two)."""
    from spote.bench.scenes import make_open_item
    from training.train import OPEN_STAGE1_CAP_PX, glyph_view

    item = make_open_item(0, "train", 5, variant="small")
    rng = np.random.default_rng(0)
    heights = []
    for _ in range(200):
        box, k = glyph_view(rng, item, (11, 16))
        heights.append(Box(*item.meta["chars"][k]).height * 64 / box.width)
    assert 11 - 1e-6 <= min(heights) and max(heights) <= 16 + 1e-6 and max(heights) - min(heights) > 3
    default = [Box(*item.meta["chars"][k]).height * 64 / b.width for b, k in (glyph_view(rng, item) for _ in range(200))]
    assert min(default) >= OPEN_STAGE1_CAP_PX[0] - 1e-6 and max(default) > 24


@pytest.mark.parametrize("kwargs", [
    {"stage1_open_share": 0.0}, {"stage1_open_share": 0.3, "open_share": 0.0}, {"glyph_px": (20, 12)},
    {"glyph_px": (0, 12)}, {"glyph_px": (11, float("inf"))}, {"open_share": 1.0}, {"tower_from": "nowhere"},
    {"init_from": "spote"}, {"init_from": "a closed-set model"}, {"steps": 0}, {"warmup": 0},
    {"lr": float("nan")}, {"lr": -1e-3}, {"far_views": -0.1}, {"glyph_px": (11, 100)}, {"out": "is-a-file"},
    {"distill_weight": 1.0}, {"distill_weight": -1.0, "tower_from": "spote/weights/spote-tiny"},
    {"lm_from": "nowhere"}, {"lm_from": "spote/weights/spote-tiny", "init_from": "spote/weights/spote-tiny"},
    {"lm_from": "a damaged model"}, {"tower_from": "a damaged model"}, {"out": "spote/weights/spote-tiny"},
    {"out": "spote/weights/spote-tiny/sub"}, {"tower_layers": 0}, {"tower_layers": 6, "init_from": "spote/weights/spote-tiny"}])
def test_train_refuses_bad_settings_before_any_work(tmp_path, kwargs):
    name = next(iter(kwargs))
    out = tmp_path / "m"
    if kwargs.get("out", "").startswith("spote/weights/spote-tiny"):  # refused even with overwrite
        out = Path(kwargs.pop("out"))
        kwargs["overwrite"] = True
    elif kwargs.get("out"):
        out = tmp_path / kwargs.pop("out")
        out.write_text("a file")
    for key in ("lm_from", "tower_from"):
        if kwargs.get(key) == "a damaged model":  # the files are there, their contents are not
            kwargs[key] = tmp_path / "damaged"
            kwargs[key].mkdir()
            (kwargs[key] / "config.json").write_text("{}")
            (kwargs[key] / "model.safetensors").write_bytes(b"not safetensors")
    if kwargs.get("init_from") == "a closed-set model":  # no code tokens to fine-tune on open items
        kwargs["init_from"] = tmp_path / "closed"
        train(kwargs["init_from"], steps=1, batch_size=8, vision_steps=0, eval_items=2, seed=3)
    with pytest.raises(ValueError, match=name):
        train(out, **{"steps": 1, "vision_steps": 1, "open_share": 0.5, **kwargs})
    assert not (tmp_path / "m").exists()


def test_training_cli_reports_bad_settings_in_one_error_without_a_traceback(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "training.train", "--glyph-px", "20", "12", "--open-share", "0.3",
                           "--out", str(tmp_path / "m")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["training.train: error: glyph_px (--glyph-px) must be (low, high) input pixels with "
                      "1 <= low <= high <= 64 (the model input), got (20.0, 12.0)"]
    assert not (tmp_path / "m").exists()


def test_a_run_cannot_write_over_the_model_it_starts_from(tmp_path):
    train(tmp_path / "base", steps=1, batch_size=4, vision_steps=0, eval_items=2, log_every=1)
    before = (tmp_path / "base" / "model.safetensors").read_bytes()
    for kwargs in ({"init_from": tmp_path / "base"}, {"tower_from": tmp_path / "base"}):
        with pytest.raises(ValueError, match="would overwrite the model it starts from"):
            train(tmp_path / "base", steps=1, **kwargs)
    assert (tmp_path / "base" / "model.safetensors").read_bytes() == before
    # a checkpoint inside the output folder is the model it starts from too: --overwrite would remove it
    ckpt = tmp_path / "runs" / "checkpoint-3"
    ckpt.parent.mkdir()
    (tmp_path / "base").rename(ckpt)
    with pytest.raises(ValueError, match="or inside it: the run would overwrite the model it starts from"):
        check_settings(tmp_path / "runs", steps=1, init_from=ckpt, overwrite=True)
    assert (ckpt / "model.safetensors").read_bytes() == before


def test_a_folder_holding_a_run_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("a folder of one's own is fine")
    check_settings(out, steps=1)
    (out / "train_log.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match=r"already holds a run \(train_log.jsonl\).*--overwrite"):
        train(out, steps=1, vision_steps=0)
    assert (out / "train_log.jsonl").read_text() == "{}\n"  # refused before any work
    check_settings(out, steps=1, overwrite=True)
    (out / "checkpoint-500").mkdir()  # the earlier run's checkpoint, which the new run (1 step) never writes
    (out / "checkpoint-500" / "model.safetensors").write_bytes(b"old")
    (out / "checkpoint-best").mkdir()  # not a name a run writes
    train(out, steps=1, batch_size=8, vision_steps=0, eval_items=2, overwrite=True)
    assert not (out / "checkpoint-500").exists()
    assert (out / "checkpoint-best").is_dir() and (out / "notes.txt").read_text() == "a folder of one's own is fine"
    assert json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["stage"] == 2


def test_any_of_a_runs_entries_is_refused_and_overwrite_removes_them_but_never_a_links_target(tmp_path):
    from training.train import clear_run

    out, elsewhere = tmp_path / "m", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "model.safetensors").write_bytes(b"keep me")
    (out / "checkpoint-7").mkdir()                         # a checkpoint alone is a run's
    (out / "checkpoint-7" / "mine.txt").write_text("x")
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoint-7\)"):
        train(out, steps=1, batch_size=8, vision_steps=0, eval_items=2)
    assert (out / "checkpoint-7" / "mine.txt").exists()     # refused: nothing removed
    (out / "checkpoint-1").symlink_to(elsewhere, target_is_directory=True)  # a later save would write through it
    (out / "checkpoint-500").write_text("a file where a checkpoint goes")
    (out / "train_log.jsonl").mkdir()                       # a folder where the log goes
    (out / "checkpoint-٣").mkdir()                          # not ASCII digits: not a name the run writes
    with pytest.raises(ValueError, match="already holds a run"):
        check_settings(out, steps=1)
    check_settings(out, steps=1, overwrite=True)
    assert clear_run(out) == ["checkpoint-1", "checkpoint-500", "checkpoint-7", "train_log.jsonl"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-٣"]
    assert (elsewhere / "model.safetensors").read_bytes() == b"keep me"


def test_an_out_that_cannot_be_a_folder_is_refused_before_any_work(tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="cannot be made: .*a-file' is a file, not a folder"):
        check_settings(tmp_path / "a-file" / "sub", steps=1)
    with pytest.raises(ValueError, match="symbolic link to nothing"):
        check_settings(tmp_path / "dangling", steps=1)


def test_a_fine_tune_of_a_continued_model_needs_another_seed(tmp_path):
    """A model whose stage 2 continued a saved one (lm_from, init_from) drew FINETUNE_START's scenes with its
    seed; fine-tuning it with the same seed would train on those scenes again, so that is refused."""
    train(tmp_path / "base", steps=1, batch_size=4, vision_steps=0, eval_items=2, log_every=1)
    train(tmp_path / "tuned", steps=1, batch_size=4, eval_items=2, log_every=1, init_from=tmp_path / "base")
    check_settings(tmp_path / "again-base", steps=1, init_from=tmp_path / "base", seed=0)  # stage 2 from scene 0
    with pytest.raises(ValueError, match=r"init_from \(--init-from\) .*tuned' was itself trained on the scenes a "
                                         r"fine-tune draws with seed 0 .*pass another seed"):
        check_settings(tmp_path / "again", steps=1, init_from=tmp_path / "tuned", seed=0)
    check_settings(tmp_path / "again", steps=1, init_from=tmp_path / "tuned", seed=1)
