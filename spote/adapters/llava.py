"""LLaVA-1.5 style models (and spote-tiny): one fixed square patch grid per image."""

from __future__ import annotations

import math

from .base import HFAdapter


class LlavaAdapter(HFAdapter):
    family = "llava"
    supports_relevance = True
    default_input_size = 336

    def _guess_input_size(self) -> int:
        vc = self.model.config.vision_config
        return int(getattr(vc, "image_size", self.default_input_size))

    def image_grid(self, batch: dict) -> list[tuple[int, int]]:
        """LLaVA drops CLS ('default' strategy): (image_size / patch_size)^2 tokens in row-major order."""
        vc = self.model.config.vision_config
        side = vc.image_size // vc.patch_size
        n_tokens = int((batch["input_ids"][0] == self.model.config.image_token_id).sum())
        n_images = max(1, n_tokens // (side * side))
        if side * side * n_images != n_tokens:  # e.g. 'full' strategy keeps CLS; fall back to the square root
            side = int(math.isqrt(n_tokens // n_images))
        return [(side, side)] * n_images
