"""The families' real processors: ``Qwen2VLProcessor``, ``Qwen2_5_VLProcessor`` and ``SmolVLMProcessor``
with their video processors and torchvision image processors, as a downloaded checkpoint carries them.

Tiny random checkpoints (``tiny_vlms``) are saved with their real processors and loaded back through
``spote.load_adapter`` and ``spote.answer``, offline. The processors need torchvision (and SmolVLM
``num2words``), which the main test environment lacks: ``make test-processors`` runs this file in a
second environment that has them; elsewhere it is skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchvision", reason="the real Qwen2-VL / SmolVLM processors need torchvision")
pytest.importorskip("num2words", reason="SmolVLMProcessor needs num2words")

from spote.adapters.idefics3 import Idefics3Adapter  # noqa: E402
from spote.adapters.qwen2vl import Qwen2VLAdapter  # noqa: E402
from spote.spotlight import ViewRenderer  # noqa: E402
from tiny_vlms import (CHOICES, IDEFICS_SEQ, IDEFICS_TILE, QWEN_MAX_PIXELS, Q, random_image,  # noqa: E402
                       save_checkpoint)

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "smolvlm"]
PROCESSOR = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "smolvlm": "SmolVLMProcessor"}
VIDEO_PROCESSOR = {"qwen2_vl": "Qwen2VLVideoProcessor", "qwen2_5_vl": "Qwen2VLVideoProcessor",
                   "smolvlm": "SmolVLMVideoProcessor"}
IMAGE_PROCESSOR = {"qwen2_vl": "Qwen2VLImageProcessor", "qwen2_5_vl": "Qwen2VLImageProcessor",
                   "smolvlm": "SmolVLMImageProcessor"}
ADAPTER = {"qwen2_vl": Qwen2VLAdapter, "qwen2_5_vl": Qwen2VLAdapter, "smolvlm": Idefics3Adapter}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {family: save_checkpoint(family, tmp_path_factory.mktemp(family), real_processor=True)
            for family in FAMILIES}


@pytest.fixture(scope="module")
def adapters(checkpoints):
    import spote

    return {family: spote.load_adapter(path, device="cpu") for family, path in checkpoints.items()}


def _views(adapter, n: int) -> list[Image.Image]:
    return [random_image(seed=seed).resize((adapter.input_size,) * 2) for seed in range(n)]


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_processor_is_the_real_processor(checkpoints, adapters, family, monkeypatch):
    from transformers import AutoProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    processor = AutoProcessor.from_pretrained(checkpoints[family])
    assert type(processor).__name__ == PROCESSOR[family]  # not the bare tokenizer AutoProcessor falls back to
    assert type(processor.video_processor).__name__ == VIDEO_PROCESSOR[family]
    assert type(processor.image_processor).__name__ == IMAGE_PROCESSOR[family]  # the torchvision image processor

    adapter = adapters[family]
    assert type(adapter) is ADAPTER[family] and adapter.model.config.model_type == family
    assert type(adapter.processor).__name__ == PROCESSOR[family]
    assert adapter.supports_relevance
    # Qwen: sqrt(max_pixels) rounded down to 28 px; SmolVLM: one tile (max_image_size)
    assert adapter.input_size == (int(QWEN_MAX_PIXELS ** 0.5) if family.startswith("qwen") else IDEFICS_TILE)


@pytest.mark.parametrize("family", FAMILIES)
def test_closed_set_answer_on_a_batch_of_views(adapters, family):
    """A group of views is one batch of prompts; each row is the answer its view gets alone.

    SmolVLMProcessor reads a flat image list as one prompt's images, so a batch only works when the
    adapter hands the images over one list per prompt.
    """
    adapter = adapters[family]
    views = _views(adapter, 3)
    lp = adapter.choice_logprobs([[v] for v in views], Q, list(CHOICES))
    assert lp.shape == (3, 2) and torch.isfinite(lp).all()
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3), atol=1e-5, rtol=0)
    alone = torch.cat([adapter.choice_logprobs([[v]], Q, list(CHOICES)) for v in views])
    torch.testing.assert_close(lp, alone, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(lp[0], lp[1], atol=1e-6)  # the views differ, so do the answers

    # zoom+context: two images per prompt; the grid read is the first image's
    pairs = [[v, views[0]] for v in views]
    lp2 = adapter.choice_logprobs(pairs, Q, list(CHOICES))
    assert lp2.shape == (3, 2) and torch.isfinite(lp2).all()
    batch = adapter.encode(pairs[:1], [adapter.prompt_text(2, Q, CHOICES)])
    grids = adapter.image_grid(batch)
    rows, cols = grids[0]
    assert len(grids) == 2 and grids[0] == grids[1]
    image_pos = (batch["input_ids"][0] == adapter.model.config.image_token_id).nonzero().flatten()
    assert int(adapter.image_token_positions(batch)[: rows * cols].max()) < int(image_pos[len(image_pos) // 2])


def _image_features(adapter, batch) -> torch.Tensor:
    """The vision tower's output, one row per image token of the prompt, in sequence order."""
    names = ("pixel_values", "image_grid_thw", "pixel_attention_mask")
    with torch.inference_mode():
        out = adapter.model.model.get_image_features(**{k: v for k, v in batch.items() if k in names})
    out = getattr(out, "pooler_output", out)
    if isinstance(out, (list, tuple)):
        out = torch.cat([o.reshape(-1, o.shape[-1]) for o in out])
    return out.reshape(-1, out.shape[-1]).float()


@pytest.mark.parametrize("family", FAMILIES)
def test_grid_cells_map_back_to_the_source_pixels_they_show(adapters, family):
    """Source pixels -> letterboxed global view -> real processor -> image tokens -> grid cell -> source box.

    A bright square at one place of a dark 2:1 source changes one image token of the real pipeline
    (processor and vision tower) most; the adapter's grid must put that token in the cell whose
    ``grid_to_source`` box holds the square. This checks the token order (row-major), and that the
    processor shows the model the whole square view (no crop, no pad of its own).
    """
    adapter = adapters[family]
    size = adapter.input_size
    width, height = 2 * size, size  # letterboxed: scale 1/2, a band of padding above and below
    dark = np.full((height, width, 3), 40, np.uint8)
    prompt = adapter.prompt_text(1, Q, CHOICES)

    def encode(pixels):
        renderer = ViewRenderer(Image.fromarray(pixels), size)
        return renderer, adapter.encode([[renderer.global_view]], [prompt])

    renderer, base = encode(dark)
    rows, cols = adapter.image_grid(base)[0]
    if family.startswith("qwen"):
        assert base["image_grid_thw"].tolist() == [[1, size // 14, size // 14]]  # the whole view, patches of 14 px
    else:
        assert (rows, cols) == (int(IDEFICS_SEQ ** 0.5),) * 2
    image_pos = (base["input_ids"][0] == adapter.model.config.image_token_id).nonzero().flatten()
    grid_pos = adapter.image_token_positions(base)[: rows * cols]
    index = torch.searchsorted(image_pos, grid_pos)  # each grid token's row among the tower's outputs
    assert torch.equal(image_pos[index], grid_pos)
    before = _image_features(adapter, base)
    assert before.shape[0] == len(image_pos)
    boxes = renderer.grid_to_source(rows, cols)

    side = 2 * size // cols  # one grid cell of the view, in source pixels
    row_offset = (rows - rows // 2) // 2  # grid rows of padding above the image
    for r, c in [(0, 0), (1, cols - 2), (rows // 2 - 1, 1), (rows // 2 - 1, cols - 1)]:
        bright = dark.copy()
        bright[r * side:(r + 1) * side, c * side:(c + 1) * side] = 255
        _, batch = encode(bright)
        change = (_image_features(adapter, batch) - before).norm(dim=-1)[index]
        k = int(change.argmax())
        assert (k // cols, k % cols) == (r + row_offset, c)
        box = boxes[k]
        centre = ((c + 0.5) * side, (r + 0.5) * side)
        assert box.x0 <= centre[0] <= box.x1 and box.y0 <= centre[1] <= box.y1


@pytest.mark.parametrize("family", FAMILIES)
def test_relevance_map_from_real_attention(adapters, family):
    adapter = adapters[family]
    view = _views(adapter, 1)[0]
    rel = adapter.relevance([view], Q, list(CHOICES))
    batch = adapter.encode([[view]], [adapter.prompt_text(1, Q, CHOICES)])
    assert rel.shape == adapter.image_grid(batch)[0]
    assert np.isfinite(rel).all() and (rel >= 0).all() and abs(rel.sum() - 1) < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_spote_answer_end_to_end(checkpoints, family, tmp_path):
    import spote

    path = tmp_path / "scene.png"
    random_image(300, 160, seed=3).save(path)
    res = spote.answer(str(path), Q, CHOICES, model=str(checkpoints[family]), budget=8, exit_entropy_per_ln_k=0.0)
    assert res.answer in CHOICES and 0 < res.confidence <= 1
    assert 1 <= res.forward_passes <= 8
    if res.evidence_box is not None:
        x0, y0, x1, y1 = res.evidence_box
        assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 160

    open_res = spote.answer(str(path), "what is in the image ?", model=str(checkpoints[family]), budget=4)
    assert isinstance(open_res.answer, str) and 1 <= open_res.forward_passes <= 4
