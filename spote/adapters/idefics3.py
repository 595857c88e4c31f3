"""Idefics3 / SmolVLM: an image may be split into tiles, followed by the global image.

Each tile and the global image become ``image_seq_len`` tokens, a square grid after pixel
shuffle. The relevance map is read from the *last* block of image tokens, the global view,
which covers the whole rendered view.
"""

from __future__ import annotations

import math

import torch

from .base import HFAdapter


class Idefics3Adapter(HFAdapter):
    family = "idefics3"
    supports_relevance = True
    default_input_size = 512

    def _guess_input_size(self) -> int:
        ip = getattr(self.processor, "image_processor", None)
        size = getattr(ip, "max_image_size", None) or {}
        return int(size.get("longest_edge", self.default_input_size)) if isinstance(size, dict) else self.default_input_size

    def _seq_len(self) -> int:
        return int(getattr(self.processor, "image_seq_len", 0)) or int(
            (self.model.config.vision_config.image_size // self.model.config.vision_config.patch_size) ** 2
            // self.model.config.scale_factor ** 2)

    def image_grid(self, batch: dict) -> list[tuple[int, int]]:
        side = int(math.isqrt(self._seq_len()))
        return [(side, side)]

    def image_token_positions(self, batch: dict) -> torch.Tensor:
        """Positions of the first image's *global* block: the last ``image_seq_len`` tokens of that image."""
        pos = super().image_token_positions(batch)
        seq = self._seq_len()
        n_blocks = len(pos) // seq
        per_image = n_blocks  # one image in relevance passes
        return pos[(per_image - 1) * seq: per_image * seq]
