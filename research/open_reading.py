"""Where does a model's reading of SpotBench codes fail: the glyphs' size in the view, or the place
in the code? (docs/experiments/open-items-training.md)

    python -m research.open_reading by-size results/train-open-2/open4-bench-open-val-seed0.items.jsonl
    python -m research.open_reading teacher-forced --model out/open4/spote-tiny-open --n 60 --min-side 64
    python -m research.open_reading phrasing --n 60 --question "what is the reference code ?"

``by-size`` reads the per-item rows of ``spote bench --open-items`` and tables one method's exact
match and character accuracy by the code's smallest glyph height in the oracle's view (view pixels;
the oracle's square: 1.05 x the field's long side, at least the model input) and by code length.

``teacher-forced`` feeds the gold code after the question on the oracle's view (whole image beside
the close-up, as ``oracle`` reads it) and reports, per place in the code, the mean p(gold token),
the share of codes where it is at least 0.5, and p(eos) after the last character: how far into a code the model reads when every earlier character is given.

``answer-windows`` runs the whole image and SPOT-E (defaults) on fields of one variant and reports how
the field compares with the search's largest window, and whether the window SPOT-E answers from
(its evidence box) holds the field: why large codes read less than on the whole image.

``standout`` reads the per-item rows of ``spote bench --open-items`` run with ``standout_z`` 0 (the
search always answers) and tables, per variant, how far each search's best reward stood out of all it
read (robust z, ``spote.core.standout``), and the exact match had the whole image answered wherever it
stood out less than each threshold: how ``PolicyConfig.standout_z`` was chosen.

``winning-views`` runs SPOT-E (defaults, ``standout_z`` 0) on one open item and lists its best-rewarded
views (side over the page's short side, reward, share of the field held), then the whole image's answer
teacher-forced on the whole image, on the best view and on a square of the page's short side centred on
the field: per token p and entropy, and what each generates: why a view that holds nothing new wins.

``whole-anchors`` reads each variant's fields on the whole image (SpotBench's question) and reports, per
anchor threshold, how many places of the greedy answer fall below it and how many of those hold the
right character: where the whole image is sure enough to give SPOT-E an anchor, and whether an anchor
there would keep a right character or a wrong one.

``prefixed`` reads each field from the oracle's view (the whole page and the close-up) three ways: plainly;
after the whole image's leading characters read below a threshold, given as the answer's start (the
anchors kept by force); and, on mixed fields, after the code's true large characters: whether any way
of keeping what the whole image read lets the model read a mixed code.

``phrasing`` reads the same fields from the oracle's view asked in SpotBench's words and in others
(the documents job's default question file asks "what is the reference code ?") and reports each
phrasing's exact match: whether a model trained on one phrasing answers another.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import typer

from spote.baselines import ORACLE_MARGIN_OPEN
from spote.bench.scenes import make_open_item
from spote.spotlight import Box, ViewRenderer

app = typer.Typer(add_completion=False)
SIZE_BINS = ((0, 14), (14, 16), (16, 18), (18, 24), (24, 10_000))  # glyph height in view pixels


def _item_of(row: dict):
    """The open item a bench row is about (its id is ``{split}-{seed}-open-{index}``)."""
    m = re.fullmatch(r"(\w+)-(\d+)-open-(\d+)", row["id"])
    if m is None:
        raise ValueError(f"{row['id']!r} is not an open item's id")
    return make_open_item(int(m[2]), m[1], int(m[3]))


def oracle_box(item, input_size: int) -> Box:
    """The oracle's close-up of an open item (``baselines.run_oracle``), or a tighter one with ``input_size``."""
    ev = Box(*item.evidence)
    side = min(min(item.image.size), max(ORACLE_MARGIN_OPEN * max(ev.width, ev.height), input_size))
    return Box.square(*ev.centre, side).shifted_inside(*item.image.size)


def glyph_px(item, view_size: int = 64, min_side: int | None = None) -> float:
    """The code's smallest glyph height (view pixels) in the oracle's ``view_size`` close-up."""
    box = oracle_box(item, view_size if min_side is None else min_side)
    return min(b[3] - b[1] for b in item.meta["chars"]) * view_size / max(box.width, box.height)


def by_size_table(rows: list[dict], method: str = "oracle", view_size: int = 64) -> list[dict]:
    """Rows of (group, n, exact_match, char_accuracy) by glyph height bin and by code length."""
    picked = [r for r in rows if r["method"] == method and r.get("open")]
    if not picked:
        raise ValueError(f"no open rows of method {method!r}")
    px = np.array([glyph_px(_item_of(r), view_size) for r in picked])
    n_chars = np.array([len(r["gold"]) for r in picked])
    em = np.array([float(r["correct"]) for r in picked])
    ca = np.array([r["char_accuracy"] for r in picked])
    out = []
    for lo, hi in SIZE_BINS:
        m = (px >= lo) & (px < hi)
        if m.any():
            out.append({"group": f"glyphs {lo}-{hi if hi < 10_000 else ''} px", "n": int(m.sum()),
                        "exact_match": em[m].mean(), "char_accuracy": ca[m].mean(), "mean_length": n_chars[m].mean()})
    for k in sorted(set(n_chars)):
        m = n_chars == k
        out.append({"group": f"{k} characters", "n": int(m.sum()), "exact_match": em[m].mean(),
                    "char_accuracy": ca[m].mean(), "glyph_px": px[m].mean()})
    return out


@app.command("by-size")
def by_size(items: Path, method: str = "oracle", view_size: int = 64):
    """Exact match and character accuracy by glyph height in the oracle's view and by code length."""
    rows = [json.loads(line) for line in items.open()]
    for r in by_size_table(rows, method, view_size):
        extra = f"mean length {r['mean_length']:.1f}" if "mean_length" in r else f"glyph height {r['glyph_px']:.1f} px"
        print(f"{r['group']:>16}: n={r['n']:3d}  exact match {r['exact_match']:.2f}  "
              f"char accuracy {r['char_accuracy']:.2f}  {extra}")


def standout_table(rows: list[dict], thresholds: list[float]) -> dict:
    """Per variant and over all items: n, the robust z of the search's best reward (10th/50th/90th
    percentiles, an item's own value; null for an item without one: no view beat the whole image, or no
    search ran), exact match of the search and
    of the whole image, and at each threshold the exact match had the whole image answered below it. (A search
    that stopped on a clear view answers there whatever its z; the rows do not say which did, and on open
    items the shipped weights' searches stop on a clear view rarely.)

    Raises:
        ValueError: no spote rows, or a spote row without its baseline row.
    """
    whole = {r["id"]: r for r in rows if r["method"] == "baseline" and r.get("open")}
    found = [r for r in rows if r["method"] == "spote" and r.get("open")]
    if not found:
        raise ValueError("no open spote rows (run spote bench --open-items N --methods baseline,spote)")
    missing = [r["id"] for r in found if r["id"] not in whole]
    if missing:
        raise ValueError(f"{len(missing)} spote rows have no baseline row, e.g. {missing[0]}")
    out = {}
    for variant in sorted({r["variant"] for r in found}) + ["all"]:
        picked = [r for r in found if variant in ("all", r["variant"])]
        z = np.array([r.get("standout", np.inf) for r in picked], dtype=float)
        em_search = np.array([float(r["correct"]) for r in picked])
        em_whole = np.array([float(whole[r["id"]]["correct"]) for r in picked])
        pct = np.percentile(z, [10, 50, 90], method="nearest")  # an item's own z; null for an item without one
        out[variant] = {"n": len(picked), "z_p10_p50_p90": [round(float(v), 2) if np.isfinite(v) else None for v in pct],
                        "exact_match_search": float(em_search.mean()), "exact_match_whole": float(em_whole.mean()),
                        "exact_match_at": {str(t): float(np.where(z >= t, em_search, em_whole).mean()) for t in thresholds}}
    return out


@app.command("standout")
def standout(items: list[Path], threshold: list[float] = typer.Option([1.0, 2.0, 3.0, 4.0, 6.0, 10.0])):
    """Per variant: how far the search's best stood out, and exact match with the whole image answering below each threshold."""
    rows = [json.loads(line) for path in items for line in path.open()]
    print(json.dumps({"items": [str(p) for p in items], "variants": standout_table(rows, threshold)}, indent=2))


def winning_views_report(adapter, item, top: int = 12) -> dict:
    """The ``top`` best-rewarded views of one SPOT-E run (defaults, ``standout_z`` 0) on ``item``, and the
    whole image's answer read on the whole image, the best view and the field-holding square (the page's
    short side, centred on the field): per-token p and entropy (nats) and the generated text."""
    from spote.core import PolicyConfig, Reader, reward, find_anchors, spote

    cfg = PolicyConfig(standout_z=0.0)
    res = spote(adapter, item.image, item.question, None, cfg)
    w, h = item.image.size
    short = min(w, h)
    field = Box(*item.meta["field"])
    order = np.argsort(-np.array(res.box_rewards), kind="stable")[:top]
    views = [{"box": [round(v) for v in res.boxes[k]], "side": round(Box(*res.boxes[k]).width / short, 3),
              "reward": res.box_rewards[k], "field_held": round(Box(*res.boxes[k]).contains_frac(field), 3)} for k in order]
    renderer = ViewRenderer(item.image, adapter.input_size)
    reader = Reader(adapter, item.question, None)
    base, whole_text = reader.baseline([renderer.global_view])
    anchors = find_anchors(base, cfg)
    places = {"best view": Box(*res.boxes[int(order[0])]), "field-holding square": Box.square(*field.centre, short).shifted_inside(w, h)}
    readings = reader.read([renderer.render(b, cfg.mode) for b in places.values()])
    tokens = [adapter.tokenizer.decode([t]) for t in reader.span_ids]
    teacher_forced = {"whole image": {"p": base.span_logp.exp().tolist(), "entropy": base.span_entropy.tolist(),
                                      "generates": whole_text, "reward": 0.0}}
    for (name, box), rd in zip(places.items(), readings):
        teacher_forced[name] = {"box": [round(v) for v in box.as_list()], "p": rd.span_logp.exp().tolist(),
                                "entropy": rd.span_entropy.tolist(), "reward": reward(base, rd, anchors, cfg),
                                "generates": adapter.generate(renderer.render(box, cfg.mode), item.question).text}
    return {"id": item.id, "gold": item.answer, "spote_answer": res.answer, "field_side": round(max(field.width, field.height) / short, 3),
            "views_read": len(res.boxes), "best_views": views, "whole_image_tokens": tokens, "teacher_forced": teacher_forced}


@app.command("winning-views")
def winning_views(index: int = 13, seed: int = 0, split: str = "val", variant: str = "large", top: int = 12,
                  model: str = typer.Option(None, help="default: the shipped spote-tiny")):
    """One open item: SPOT-E's best-rewarded views, and the whole image's answer read on them."""
    from spote.loading import load_adapter

    print(json.dumps(winning_views_report(load_adapter(model), make_open_item(seed, split, index, variant=variant), top), indent=2))


def teacher_forced_places(adapter, items, min_side: int | None = None) -> dict:
    """Per place k in the code: mean p(gold token k | image, question, gold tokens < k) and the share
    of codes where it is at least 0.5 (then gold is the model's top token), on the oracle's view
    (``adapter.teacher_forced``); and the mean p(eos) after the last character. ``min_side`` (source
    pixels) replaces the model input as the close-up's smallest side (smaller: tighter, upscaled)."""
    tok, size = adapter.tokenizer, adapter.input_size
    p_gold, p_eos = {}, []
    for item in items:
        views = ViewRenderer(item.image, size).render(oracle_box(item, size if min_side is None else min_side),
                                                      "zoom+context")
        ids = tok(item.answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
        logp, _ = adapter.teacher_forced([views], adapter.prompt_text(len(views), item.question), ids)
        p = logp[0].exp().tolist()
        for k, v in enumerate(p[:-1]):
            p_gold.setdefault(k, []).append(v)
        p_eos.append(p[-1])
    return {"places": [{"place": k, "n": len(v), "p_gold": float(np.mean(v)),
                        "sure": float(np.mean(np.array(v) >= 0.5))} for k, v in sorted(p_gold.items())],
            "p_eos_after_last": float(np.mean(p_eos))}


@app.command("teacher-forced")
def teacher_forced(model: str = typer.Option(..., help="a saved model that spells codes"), n: int = 60,
                   seed: int = 0, split: str = "val", min_side: int = typer.Option(None, help="close-up's smallest "
                                                                                        "side, source pixels")):
    """How far into a code the model reads on the oracle's view, every earlier character given."""
    from spote.loading import load_adapter

    adapter = load_adapter(model)
    res = teacher_forced_places(adapter, [make_open_item(seed, split, i) for i in range(n)], min_side)
    for r in res["places"]:
        print(f"place {r['place']}: n={r['n']:3d}  p(gold) {r['p_gold']:.3f}  share with p(gold) >= 0.5 {r['sure']:.2f}")
    print(f"p(eos) after the last character: {res['p_eos_after_last']:.3f}")


def phrasing_exact_match(adapter, items, questions: list[str | None], method: str = "oracle") -> dict[str, float]:
    """Exact match of ``method``'s reading of ``items`` asked each of ``questions`` (None: the item's own
    SpotBench question), keyed by the question ("spotbench" for None). ``oracle`` reads its close-up once;
    ``spote`` runs the whole loop at the default ``PolicyConfig``."""
    from spote.bench.run import run_method
    from spote.core import PolicyConfig

    if method not in ("oracle", "spote"):
        raise ValueError(f"method must be oracle or spote, not {method!r}")
    out = {}
    for q in questions:
        hits = []
        for it in items:
            kw = {"evidence": it.evidence, "max_passes": 1} if method == "oracle" else {}
            # the defaults the study ran at, before standout_z: the search always answers
            hits.append(run_method(method, adapter, it.image, q or it.question, None, PolicyConfig(standout_z=0.0), **kw).answer
                        == it.answer)
        out[q or "spotbench"] = float(np.mean(hits))
    return out


@app.command("phrasing")
def phrasing(model: str = typer.Option(None, help="default: the shipped spote-tiny"), n: int = 60, seed: int = 0,
             split: str = "val", question: list[str] = typer.Option(..., help="another phrasing; repeat for more"),
             method: str = typer.Option("oracle", help="oracle (its close-up read once) or spote (the whole loop)")):
    """``method``'s exact match on the same fields asked in SpotBench's words and in each ``question``."""
    from spote.loading import load_adapter

    adapter = load_adapter(model)
    res = phrasing_exact_match(adapter, [make_open_item(seed, split, i) for i in range(n)], [None, *question], method)
    print(json.dumps({"model": model or "spote-tiny", "method": method, "split": split, "seed": seed, "n": n,
                      "exact_match": res}, indent=2))


def whole_image_endings(adapter, items, question: str, sure: float = 0.35) -> dict[str, float]:
    """How the whole image answers ``question`` on ``items``: the share of empty answers (the first token
    ends them), the share of empty answers ended surely (end-step entropy below ``sure`` nats: the open
    exit threshold, so SPOT-E would stop there with nothing read), and the median end-step entropy of the
    empty ones (nats; ``None`` when none, so that the printed JSON stays valid JSON)."""
    ends = []
    for it in items:
        gen = adapter.generate([ViewRenderer(it.image, adapter.input_size).global_view], question)
        if not gen.token_ids:
            ends.append(gen.end_entropy)
    return {"empty": len(ends) / len(items), "sure_empty": sum(e < sure for e in ends) / len(items),
            "median_end_entropy": float(np.median(ends)) if ends else None}


@app.command("whole-endings")
def whole_endings(model: str = typer.Option(None, help="default: the shipped spote-tiny"), n: int = 60, seed: int = 0,
                  split: str = "val", question: list[str] = typer.Option(..., help="a phrasing; repeat for more")):
    """Per ``question``: how often the whole page is answered with nothing, and how surely."""
    from spote.loading import load_adapter

    adapter = load_adapter(model)
    items = [make_open_item(seed, split, i) for i in range(n)]
    print(json.dumps({"model": model or "spote-tiny", "split": split, "seed": seed, "n": n,
                      "endings": {q: whole_image_endings(adapter, items, q) for q in question}}, indent=2))


def answer_windows_table(adapter, items) -> dict:
    """Per item the field's long side and the search's largest window side (both over the page's short
    side), the share of the field inside SPOT-E's evidence box (1 when it answers from the whole image),
    and whether the whole image and SPOT-E read the code; medians and shares over ``items``."""
    from spote.bench.run import exact_match
    from spote.core import PolicyConfig, Reader, spote, window_grid

    rows = []
    for it in items:
        w, h = it.image.size
        field = Box(*it.meta["field"])
        windows, _ = window_grid(w, h, adapter.input_size, PolicyConfig.min_window, scale_step=PolicyConfig.scale_step)
        _, whole = Reader(adapter, it.question, None).baseline([ViewRenderer(it.image, adapter.input_size).global_view])
        res = spote(adapter, it.image, it.question, None, PolicyConfig(standout_z=0.0))  # where the search itself answers
        held = 1.0 if res.evidence_box is None else Box(*res.evidence_box).contains_frac(field)
        rows.append({"field_side": max(field.width, field.height) / min(w, h),
                     "largest_window": max(max(b.width, b.height) for b in windows) / min(w, h),
                     "field_held": held, "whole_exact": exact_match(whole, it.answer),
                     "spote_exact": exact_match(res.answer, it.answer), "passes": res.forward_passes,
                     "on_whole": res.evidence_box is None})
    col = lambda k: np.array([r[k] for r in rows], dtype=float)  # noqa: E731
    return {"n": len(rows), "median_field_side": float(np.median(col("field_side"))),
            "largest_window": float(col("largest_window").max()),
            "share_fields_larger_than_any_window": float((col("field_side") > col("largest_window")).mean()),
            "median_field_held": float(np.median(col("field_held"))),
            "share_field_half_held": float((col("field_held") >= 0.5).mean()),
            "share_field_not_touched": float((col("field_held") == 0).mean()),
            "share_answered_on_whole_image": float(col("on_whole").mean()),
            "whole_exact_match": float(col("whole_exact").mean()), "spote_exact_match": float(col("spote_exact").mean()),
            "spote_passes_mean": float(col("passes").mean())}


@app.command("answer-windows")
def answer_windows(model: str = typer.Option(None, help="default: the shipped spote-tiny"), n: int = 40, seed: int = 0,
                   split: str = "val", variant: list[str] = typer.Option(["large", "small"], help="repeat for more")):
    """Per variant: the field against the search's largest window, and how much of it SPOT-E's answer window holds."""
    from spote.loading import load_adapter

    adapter = load_adapter(model)
    print(json.dumps({"model": model or "spote-tiny", "split": split, "seed": seed, "n": n,
                      "variants": {v: answer_windows_table(adapter, [make_open_item(seed, split, i, variant=v)
                                                                     for i in range(n)]) for v in variant}}, indent=2))


def whole_image_readings(adapter, items) -> list[dict]:
    """The whole image's greedy answer on each item, place by place: ``variant``, ``entropies`` (nats, one per
    answer token, as ``spote.core.find_anchors`` reads them), ``hits`` (per token: the code's character at the
    same place, characters compared as ``spote.bench.run.normalise_code`` does; a place is a token, which
    holds one character with tokenizers that spell codes, as spote-tiny's does) and ``length_right`` (as many
    characters as the code). An empty answer has no places here; SPOT-E anchors its end step instead
    (``spote.core.Reader.baseline``), which no code character can match."""
    from spote.bench.run import normalise_code

    out = []
    for it in items:
        gen = adapter.generate([ViewRenderer(it.image, adapter.input_size).global_view], it.question)
        gold = normalise_code(it.answer)
        chars = [normalise_code(adapter.decode_answer([t])) for t in gen.token_ids]
        out.append({"variant": it.meta["variant"], "entropies": list(gen.entropies),
                    "hits": [i < len(gold) and c == gold[i] for i, c in enumerate(chars)],
                    "length_right": len(normalise_code(gen.text)) == len(gold)})
    return out


def anchor_table(readings: list[dict], epsilons: list[float]) -> dict:
    """Where the whole image would give anchors, over ``readings`` (``whole_image_readings``): ``n``, ``places``
    (answer tokens in all), ``length_right`` (share), ``min_entropy``, ``median_entropy`` and ``max_entropy``
    over all places (nats; None without places), and per threshold (nats, as a string): ``anchors`` (places
    below it, ``spote.bench.run.anchor_positions``), ``right`` (of those, the places holding the code's
    character) and ``items`` (readings with at least one). At ``inf`` every place counts, so ``right`` is
    the whole image's per-place character hits."""
    from spote.bench.run import anchor_positions

    ents = np.asarray([e for r in readings for e in r["entropies"]], float)
    by_eps = {}
    for eps in epsilons:
        anchored = [anchor_positions(r["entropies"], eps) for r in readings]
        by_eps[str(eps)] = {"anchors": sum(map(len, anchored)),
                            "right": sum(r["hits"][i] for r, pos in zip(readings, anchored) for i in pos),
                            "items": sum(bool(pos) for pos in anchored)}
    stats = {k: (float(f(ents)) if len(ents) else None) for k, f in
             (("min_entropy", np.min), ("median_entropy", np.median), ("max_entropy", np.max))}
    return {"n": len(readings), "places": len(ents),
            "length_right": float(np.mean([r["length_right"] for r in readings])) if readings else None,
            **stats, "by_epsilon": by_eps}


@app.command("whole-anchors")
def whole_anchors(model: str = typer.Option(None, help="default: the shipped spote-tiny"), n: int = 100, seed: int = 0,
                  split: str = "val", epsilon: list[float] = typer.Option([0.1, 0.5, 1.0, 2.0, 3.0, float("inf")])):
    """SpotBench's first ``n`` open items, all and per variant: where the whole image is sure, and right."""
    from spote.bench.scenes import CODE_ALPHABET, open_items
    from spote.loading import load_adapter

    readings = whole_image_readings(load_adapter(model), list(open_items(split, n, seed)))
    variants = {"all": readings}
    for r in readings:
        variants.setdefault(r["variant"], []).append(r)
    print(json.dumps({"model": model or "spote-tiny", "split": split, "seed": seed, "n": n,
                      "uniform_entropy": float(np.log(len(CODE_ALPHABET))),
                      "variants": {v: anchor_table(rs, epsilon) for v, rs in variants.items()}}, indent=2))


def generate_after(adapter, views, question: str, start_ids: list[int], max_new_tokens: int = 12) -> str:
    """The greedy answer on ``views`` (a local adapter's model) when its first tokens are ``start_ids``, as
    text, the start included. The start goes in as token ids after the prompt, not as text, so that a
    continuation token ("##T") stays what it is; ``max_new_tokens`` counts after it.

    Raises:
        ValueError: the processor returns other per-token inputs than ``input_ids`` and ``attention_mask``
            (the start could not be appended to them), or ``encode``'s "question too long".
    """
    import torch

    tok = adapter.tokenizer
    batch = adapter.encode([views], [adapter.prompt_text(len(views), question)])
    if start_ids:
        per_token = [k for k, v in batch.items() if torch.is_tensor(v) and v.shape == batch["input_ids"].shape]
        if sorted(per_token) != ["attention_mask", "input_ids"]:
            raise ValueError(f"cannot append an answer's start to the per-token inputs {sorted(per_token)}")
        start = torch.tensor([start_ids], dtype=batch["input_ids"].dtype)
        batch["input_ids"] = torch.cat([batch["input_ids"], start], 1)
        batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(start)], 1)
    with torch.inference_mode():
        out = adapter.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, batch["input_ids"].shape[1]:].tolist()
    if tok.eos_token_id in new:
        new = new[:new.index(tok.eos_token_id)]
    return adapter.decode_answer(list(start_ids) + new)


def leading_run(flags) -> int:
    """How many of ``flags`` are true before the first false one."""
    return next((i for i, f in enumerate(flags) if not f), len(flags))


def prefixed_table(adapter, items, epsilons: list[float]) -> dict:
    """Per variant, codes read exactly from the oracle's view (``mode`` zoom+context): ``plain``; ``start<eps``,
    after the whole image's leading answer tokens whose entropy is below ``eps`` nats (the plain read where
    the first is not); and, for mixed fields, ``true_large_start``, after the code's leading large (whole-view
    legible) characters. Each: [read, items, items given a start]."""
    from spote.bench.run import exact_match, normalise_code

    counts: dict = {}

    def add(variant, key, hit, started):
        c = counts.setdefault(variant, {}).setdefault(key, [0, 0, 0])
        c[0], c[1], c[2] = c[0] + int(hit), c[1] + 1, c[2] + int(started)

    for it in items:
        r = ViewRenderer(it.image, adapter.input_size)
        whole = adapter.generate([r.global_view], it.question)
        views = r.render(oracle_box(it, adapter.input_size), "zoom+context")
        reads: dict[tuple, bool] = {}  # start -> read exactly: greedy decoding gives one answer per start

        def read(start):
            if tuple(start) not in reads:
                reads[tuple(start)] = exact_match(generate_after(adapter, views, it.question, start), it.answer)
            return reads[tuple(start)]

        v = it.meta["variant"]
        add(v, "plain", read([]), False)
        for eps in epsilons:
            k = leading_run([h < eps for h in whole.entropies])
            add(v, f"start<{eps}", read(whole.token_ids[:k]), k > 0)
        if v == "mixed":
            large = normalise_code(it.answer)[:leading_run(it.meta["legible_whole"])]
            ids = adapter.tokenizer(large, add_special_tokens=False)["input_ids"]  # spelled as the model spells it
            add(v, "true_large_start", read(ids), bool(ids))
    return counts


@app.command("prefixed")
def prefixed(model: str = typer.Option(None, help="default: the shipped spote-tiny"), n: int = 100, seed: int = 0,
             split: str = "val", epsilon: list[float] = typer.Option([1.0, 2.0, 3.0])):
    """SpotBench's first ``n`` open items: the oracle's view read plainly, or after the whole image's sure start."""
    from spote.bench.scenes import open_items
    from spote.loading import load_adapter

    print(json.dumps({"model": model or "spote-tiny", "split": split, "seed": seed, "n": n,
                      "variants": prefixed_table(load_adapter(model), list(open_items(split, n, seed)), epsilon)},
                     indent=2))


if __name__ == "__main__":
    app()
