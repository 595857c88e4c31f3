"""Qwen2-VL / Qwen2.5-VL: dynamic resolution, ``image_grid_thw`` patches merged 2 x 2 into tokens."""

from __future__ import annotations

import math

from .base import HFAdapter, size_field


class Qwen2VLAdapter(HFAdapter):
    family = "qwen2_vl"
    supports_relevance = True
    default_input_size = 448  # views are rendered square at this size: (448/14/2)^2 = 256 tokens each

    def _merge_size(self) -> int:
        return int(getattr(self.model.config.vision_config, "spatial_merge_size", 2))

    def _guess_input_size(self) -> int:
        """448, or less when the processor's ``max_pixels`` would shrink a 448 x 448 view anyway.

        The processor's ``size`` holds pixel counts (``shortest_edge`` = min_pixels, ``longest_edge`` =
        max_pixels), not sides, so the generic guess does not apply.
        """
        ip = getattr(self.processor, "image_processor", None)
        patch = int(getattr(ip, "patch_size", None) or getattr(self.model.config.vision_config, "patch_size", 14))
        factor = patch * int(getattr(ip, "merge_size", None) or self._merge_size())
        max_pixels = size_field(getattr(ip, "size", None) or {}, "longest_edge") or getattr(ip, "max_pixels", None)
        if not max_pixels:
            return self.default_input_size
        side = math.isqrt(int(max_pixels)) // factor * factor
        return max(factor, min(self.default_input_size, side))

    def image_grid(self, batch: dict) -> list[tuple[int, int]]:
        """Token grid per image: (h / merge, w / merge) from the processor's ``image_grid_thw``.

        The processor orders each image's patches (t, h/merge, w/merge, merge, merge) and the vision
        merger turns every merge x merge group into one token, so the tokens are row-major on this grid.
        """
        merge = self._merge_size()
        return [(int(h) // merge, int(w) // merge) for _, h, w in batch["image_grid_thw"].tolist()]
