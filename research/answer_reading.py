"""How to read an open answer off a window: renderings, copies and a blank-view prior
(docs/experiments/agreed-answers.md#how-to-read-a-window)

    python -m research.answer_reading run --n 100 --seed 0 --out results/agreed-answers/reading-val-seed0.json
    python -m research.answer_reading score results/agreed-answers/reading-val-seed*.json
    python -m research.answer_reading places results/agreed-answers/choice-val-seed*.json

After a search on an open item SPOT-E reads the code at each of its places (the agreed window and its
neighbours, ``core.answer_neighbours``) jointly from 9 shifted copies (``core.answer_windows``), each
copy rendered as the search's views are (``zoom+context``: the whole image and the close-up), and
answers with the reading surest per token (``core.surest_reading``). ``run`` runs SPOT-E at the
defaults before centring (``answer_choice.BEFORE_CENTRING``) on open items, then re-reads the same
places, and the oracle's close-up (``research.open_reading.oracle_box``; one place, so only the ``ORACLE_READINGS``), under each of
``READINGS``:

- ``ctx9``: SPOT-E's own reading (a check: re-read, it gives SPOT-E's answer);
- ``zoom9``: the same 9 copies shown as the close-up alone;
- ``ctx27`` / ``zoom27``: each of the 9 shifted copies also at 0.9 and 1.1 of its side (27 copies);
- ``ctx27_agreed``: ``ctx27`` on the agreed window alone, which is what a 96-pass budget pays for at
  27 copies a place;
- ``ctx9_grid``: 9 places, the agreed window and its neighbours across, down and diagonally
  (``grid_places``, at ``answer_step``), 9 copies each (81 passes against SPOT-E's 45);
- ``ctx5_grid``: the same 9 places at 5 copies each (the unshifted one and the grid's corners): 45
  passes, SPOT-E's own.

It also scores the choice among SPOT-E's own readings by pointwise mutual information with a blank
view (``pmi``): mean_t [log p(y_t | views) - log p(y_t | blank)], the blank a pair of white 64 px
images, so that a reading the language model would give without the image (a doubled character)
counts for less. Re-reads are not counted in the passes: this measures what a reading reads, not
what it costs. An item SPOT-E answered without a search's readings (the whole image, or a clear
window read once) keeps SPOT-E's answer in every row.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import typer
from PIL import Image
from tqdm import tqdm

from research.answer_choice import BEFORE_CENTRING, searched_agreed_windows, summarise
from research.open_reading import oracle_box
from spote.bench.run import char_accuracy, exact_match
from spote.bench.scenes import open_items
from spote.core import PolicyConfig, answer_windows, spote, surest_reading, view_mode
from spote.loading import load_adapter
from spote.spotlight import Box, ViewRenderer

app = typer.Typer(add_completion=False)

RESCALE = 0.1  # the 27-copy readings: each of the 9 also at 0.9 and 1.1 of its side (core.answer_windows)
# name -> (rendering: the search's own or "zoom", copies: 5, 9 or 27, places: SPOT-E's ("all"), the agreed
# window alone ("agreed"), or a 3 x 3 grid of them around it ("grid"))
READINGS = {"ctx9": ("search", 9, "all"), "zoom9": ("zoom", 9, "all"), "ctx27": ("search", 27, "all"),
            "zoom27": ("zoom", 27, "all"), "ctx27_agreed": ("search", 27, "agreed"),
            "ctx9_grid": ("search", 9, "grid"), "ctx5_grid": ("search", 5, "grid")}
ORACLE_READINGS = [name for name, (_, _, where) in READINGS.items() if where == "all"]  # one place: its close-up
BLANK_RGB = (255, 255, 255)  # a form's paper


def copies(place: Box, n: int, cfg: PolicyConfig, width: int, height: int) -> list[Box]:
    """The windows (source pixels) one place is read off: SPOT-E's 9 shifted copies; (``n`` = 5) the
    unshifted one and the four corners of their grid; or (``n`` = 27) each of the 9 also at 0.9 and 1.1
    of its side (at most the image's short side), about the same centre.

    Raises:
        ValueError: ``n`` not 5, 9 or 27.
    """
    if n not in (5, 9, 27):
        raise ValueError(f"copies are 5, 9 or 27 windows, got {n}")
    shifted = answer_windows(place, replace(cfg, answer_grid=3), width, height)
    if n == 9:
        return shifted
    if n == 5:
        return shifted[:1] + shifted[-4:]  # answer_windows lists the offsets nearest first: the corners last
    return answer_windows(place, replace(cfg, answer_grid=3, answer_rescale=RESCALE), width, height, rescaled=True)


def grid_places(agreed: Box, step: float, width: int, height: int) -> list[Box]:
    """The agreed window and its 8 neighbours moved by ``step`` of its side across, down and diagonally
    (``core.answer_neighbours`` takes the first four), each moved back inside the image; 9 windows."""
    return [agreed.moved(dx * step, dy * step).shifted_inside(width, height)
            for dx, dy in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1))]


def read_places(adapter, image, question, places: list[Box], reading: str, cfg: PolicyConfig) -> tuple[str, list[float]]:
    """The surest reading over ``places`` (the agreed window first) under ``reading`` (a READINGS name):
    (text, per-token log p)."""
    render_mode, n, which = READINGS[reading]
    mode = view_mode(cfg, adapter) if render_mode == "search" else render_mode
    renderer = ViewRenderer(image, adapter.input_size)
    where = grid_places(places[0], cfg.answer_step, *image.size) if which == "grid" else places if which == "all" else places[:1]
    gens = [adapter.generate_agreed([renderer.render(w, mode) for w in copies(p, n, cfg, *image.size)], question)
            for p in where]
    k = surest_reading([g.logprobs for g in gens])
    return gens[k].text, list(gens[k].logprobs)


def pmi_choice(adapter, question: str, readings: list[tuple[str, list[float]]], n_images: int) -> int:
    """Index of the reading with the highest mean_t [log p(y_t | views) - log p(y_t | blank)] (nats). An
    empty reading, or one whose text the tokenizer does not spell back into as many tokens as it has
    log p (so that the blank's log p would sit on other tokens), ranks last; ties go to the earliest."""
    blank = [Image.new("RGB", (adapter.input_size,) * 2, BLANK_RGB)] * n_images
    prompt = adapter.prompt_text(n_images, question)

    def score(text, logprobs):
        ids = adapter.tokenizer(text, add_special_tokens=False).input_ids
        if not logprobs or len(ids) != len(logprobs):
            return -math.inf
        prior, _ = adapter.teacher_forced([blank], prompt, ids)
        return float(np.mean(logprobs) - prior[0].mean())
    scores = [score(t, lp) for t, lp in readings]
    return max(range(len(readings)), key=lambda i: scores[i])


@app.command()
def run(model: str = typer.Option("spote-tiny", help="weights that spell codes (default: the shipped ones)"),
        n: int = 100, seed: int = 0, split: str = "val",
        out: Path = Path("results/agreed-answers/reading-val-seed0.json")):
    """SPOT-E on ``n`` open items, then every reading of READINGS (and ``pmi``) at its places and the
    oracle's close-up; one row per item to ``out``, and the table."""
    adapter = load_adapter(model)
    cfg = replace(PolicyConfig(), seed=seed, **BEFORE_CENTRING)
    n_images = 2 if view_mode(cfg, adapter) == "zoom+context" else 1
    rows = []
    for item in tqdm(list(open_items(split, n, seed)), desc="open items"):
        res = spote(adapter, item.image, item.question, None, cfg)
        searched = res.answer_from_neighbour is not None  # read at the agreed window and its neighbours
        row = {"id": item.id, "gold": item.answer, "variant": item.meta["variant"], "spote": res.answer,
               "searched": searched}
        places = [Box(*w) for w, _, _ in res.answer_readings] if searched else []
        for name in READINGS:
            row[name] = read_places(adapter, item.image, item.question, places, name, cfg)[0] if searched else res.answer
        for name in ORACLE_READINGS:
            row["oracle_" + name] = read_places(adapter, item.image, item.question, [oracle_box(item, adapter.input_size)],
                                                name, cfg)[0]
        readings = [(t, lp) for _, t, lp in res.answer_readings] if searched else []
        row["pmi"] = readings[pmi_choice(adapter, item.question, readings, n_images)][0] if searched else res.answer
        rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "split": split, "seed": seed, "n": n, "items": rows}, indent=1))
    _print(score_rows(rows))


ROWS = ("spote", *READINGS, "pmi", *("oracle_" + r for r in ORACLE_READINGS))


def score_rows(rows: list[dict]) -> dict:
    """Per answer column of ROWS: exact match and character accuracy, overall and per variant (a column a
    row lacks, from a file written before that reading was added, is left out for that row)."""
    got = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for name in (c for c in ROWS if c in r):
            for key in ("all", r["variant"]):
                got[key][name].append((exact_match(r[name], r["gold"]), char_accuracy(r[name], r["gold"])))
    return summarise(got)


def _print(table: dict) -> None:
    keys = ["all", *sorted(k for k in table if k != "all")]
    print("| reading | " + " | ".join(f"{k} ({table[k]['spote']['n']})" for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name in (c for c in ROWS if c in table["all"]):
        print(f"| {name} | " + " | ".join(f"{table[k][name]['exact_match']:.3f} / {table[k][name]['char_accuracy']:.3f}"
                                         for k in keys) + " |")


@app.command()
def score(paths: list[Path]):
    """The table of ``run`` over several of its files together."""
    _print(score_rows([r for p in paths for r in json.loads(p.read_text())["items"]]))


def place_fit(agreed: Box, oracle: Box) -> tuple[float, float]:
    """(agreed window's side over the oracle close-up's, their IoU)."""
    return agreed.width / oracle.width, agreed.iou(oracle)


@app.command()
def places(paths: list[Path], input_size: int = 64):
    """How SPOT-E's agreed window sits on the oracle's close-up, per variant (median side ratio and IoU),
    from ``research.answer_choice run`` files (their readings' windows, the agreed window first)."""
    fits = defaultdict(list)
    for item, variant, agreed in searched_agreed_windows(paths):
        fits[variant].append(place_fit(agreed, oracle_box(item, input_size)))
    print("| variant | n | side ratio (median) | IoU (median) |")
    print("|---|---|---|---|")
    for v in sorted(fits):
        ratio, iou = np.median(np.array(fits[v]), axis=0)
        print(f"| {v} | {len(fits[v])} | {ratio:.2f} | {iou:.2f} |")


if __name__ == "__main__":
    app()
