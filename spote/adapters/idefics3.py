"""Idefics3 / SmolVLM: an image may be split into tiles, followed by the global image.

Each tile and the global image become ``image_seq_len`` tokens, a square grid after pixel
shuffle (row-major). The relevance map is read from the first image's *global* block, the
``image_seq_len`` image tokens right after its ``<global-img>`` tag, which covers the whole
rendered view; the tiles before it are ignored.
"""

from __future__ import annotations

import math

import torch

from .base import HFAdapter, size_field

GLOBAL_IMAGE_TAG = "<global-img>"


class Idefics3Adapter(HFAdapter):
    family = "idefics3"
    supports_relevance = True
    default_input_size = 512

    def _guess_input_size(self) -> int:
        ip = getattr(self.processor, "image_processor", None)
        size = getattr(ip, "max_image_size", None) or {}
        return int(size_field(size, "longest_edge") or self.default_input_size)

    def _seq_len(self) -> int:
        vc = self.model.config.vision_config
        return int(getattr(self.processor, "image_seq_len", 0)) or int(
            (vc.image_size // vc.patch_size) ** 2 // self.model.config.scale_factor ** 2)

    def _global_tag_id(self) -> int | None:
        """Token id of ``<global-img>`` (Idefics3Processor: ``global_image_tag``; SmolVLM: ``global_image_token``)."""
        tag_id = getattr(self.processor, "global_image_token_id", None)
        if tag_id is None:
            tag = getattr(self.processor, "global_image_tag", None) or getattr(
                self.processor, "global_image_token", None) or GLOBAL_IMAGE_TAG
            tag_id = self.tokenizer.convert_tokens_to_ids(tag)
        if tag_id is None or tag_id == self.tokenizer.unk_token_id:
            return None
        return int(tag_id)

    def image_grid(self, batch: dict) -> list[tuple[int, int]]:
        """(side, side) per image, side = sqrt(image_seq_len): the global image's token grid."""
        side = int(math.isqrt(self._seq_len()))
        tag_id = self._global_tag_id()
        n_images = int((batch["input_ids"][0] == tag_id).sum()) if tag_id is not None else 1
        return [(side, side)] * max(1, n_images)

    def image_token_positions(self, batch: dict) -> torch.Tensor:
        """Positions of the first image's *global* block: the ``image_seq_len`` image tokens after its tag.

        Without a ``<global-img>`` token in the vocabulary, falls back to the last block of image
        tokens (right for the single-image prompts of relevance passes).
        """
        pos = super().image_token_positions(batch)
        seq = self._seq_len()
        tag_id = self._global_tag_id()
        if tag_id is not None:
            tags = (batch["input_ids"][0] == tag_id).nonzero().flatten()
            if len(tags):
                return pos[pos > tags[0]][:seq]
        n_blocks = len(pos) // seq
        return pos[(n_blocks - 1) * seq: n_blocks * seq]
