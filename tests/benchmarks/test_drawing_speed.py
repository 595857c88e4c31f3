"""`make bench-draw`: the plain and the fast drawing compared output for output and generator for
generator, and a real short run's report."""

import json

import numpy as np
import pytest
import torch
import typer

from benchmarks.drawing_speed import compare, main, scene_sizes


def _same_array(a, b):
    return np.array_equal(a, b)


def test_compare_finds_a_pixel_apart_and_a_stream_left_elsewhere():
    sizes = scene_sizes(4)
    assert all(480 <= w < 1280 and 480 <= h < 1280 for w, h in sizes) and len(set(sizes)) == 4

    def plain(rng, w, h):
        return rng.integers(0, 255, (4, 4))

    def one_pixel_apart(rng, w, h):
        a = plain(rng, w, h)
        a[0, 0] += w == sizes[2][0]  # on one size only
        return a

    def one_draw_more(rng, w, h):
        a = plain(rng, w, h)
        rng.random()
        return a

    same = compare(plain, plain, sizes, _same_array)
    assert same["identical"] and same["n"] == 4 and same["plain_ms"] > 0 and same["fast_ms"] > 0
    assert same["speedup"] == pytest.approx(same["plain_ms"] / same["fast_ms"])
    assert not compare(plain, one_pixel_apart, sizes, _same_array)["identical"]
    assert not compare(plain, one_draw_more, sizes, _same_array)["identical"]


@pytest.mark.parametrize("pages,batches", [(0, 1), (1, 0), (-3, 2)])
def test_bad_counts_are_refused_before_any_work(tmp_path, pages, batches):
    with pytest.raises(typer.BadParameter, match="--pages and --batches must be >= 1"):
        main(pages=pages, batches=batches, out=tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_a_short_real_run_reports_identical_drawings_and_both_stages(tmp_path):
    out = tmp_path / "drawing.json"
    threads = torch.get_num_threads()
    main(pages=3, batches=1, out=out)
    report = json.loads(out.read_text())
    for part in ("page", "noise_texture"):
        assert report[part]["identical"] is True and report[part]["n"] == 3
        assert report[part]["plain_ms"] > 0 and report[part]["fast_ms"] > 0
    assert report["seconds_per_batch"]["stage1"] > 0 and report["seconds_per_batch"]["stage2"] > 0
    assert report["stages"]["stage1"]["batch_size"] == 128 and report["stages"]["stage2"]["open_share"] == 0.5
    assert torch.get_num_threads() == threads  # the benchmark times on one thread and gives the caller's back


def test_an_out_that_is_a_folder_is_refused_before_any_work(tmp_path):
    with pytest.raises(typer.BadParameter, match="is a folder"):
        main(pages=1, batches=1, out=tmp_path)


def test_a_fast_drawing_a_pixel_apart_exits_1_and_times_no_batch(tmp_path, monkeypatch):
    import spote.bench.scenes as scenes

    real = scenes._page

    def one_pixel_apart(rng, w, h):
        page, d = real(rng, w, h)
        page.putpixel((0, 0), (0, 0, 0))
        return page, d

    monkeypatch.setattr(scenes, "_page", one_pixel_apart)
    out = tmp_path / "drawing.json"
    with pytest.raises(typer.Exit) as exited:
        main(pages=2, batches=1, out=out)
    assert exited.value.exit_code == 1
    report = json.loads(out.read_text())
    assert report["page"]["identical"] is False and report["noise_texture"]["identical"] is True
    assert "seconds_per_batch" not in report


def test_the_timed_batches_are_make_train_opens():
    """STAGE1 / STAGE2 copy make train-open's stream settings (TRAIN_OPEN, itself checked against the
    Makefile) and training.train's batch size: they must agree."""
    import inspect

    from benchmarks.drawing_speed import STAGE1, STAGE2
    from benchmarks.training_speed import TRAIN_OPEN
    from training.train import train

    def value(flag, n=1):
        i = TRAIN_OPEN.index(flag)
        return [float(v) for v in TRAIN_OPEN[i + 1:i + 1 + n]]

    assert [STAGE1["open_share"]] == value("--stage1-open-share") and list(STAGE1["glyph_px"]) == value("--glyph-px", 2)
    assert [STAGE1["start"]] == value("--stage1-start") and [STAGE2["open_share"]] == value("--open-share")
    batch = inspect.signature(train).parameters["batch_size"].default
    assert STAGE2["batch_size"] == batch and STAGE1["batch_size"] == 2 * batch  # pretrain_vision's is twice stage 2's
    assert STAGE1["pool"] == min(256, 2 * STAGE1["batch_size"])  # as pretrain_vision sizes the pool
