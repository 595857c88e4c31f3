import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from spote.bench.scenes import make_item
from spote.spotlight import Box, ViewRenderer
from training.train import train


def test_training_smoke_saves_a_loadable_checkpoint(tmp_path):
    report = train(tmp_path / "m", steps=3, batch_size=8, vision_steps=2, eval_items=3, log_every=1)
    assert np.isfinite(report["final_loss_ema"])
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


def test_stage1_stream_labels_lie_in_each_items_choice_set():
    """Stage 1 reads out over the item's own choices: every label is one of them, never the whole vocabulary."""
    from training.build import IMAGE_SIZE
    from training.train import CloseViewStream

    pv, labels, mask = next(iter(CloseViewStream(seed=3, batch_size=24, pool=12)))
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

    _, with_unsure, _ = batch(True)
    _, legible_only, mask = batch(False)
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
