"""Qwen2-VL / Qwen2.5-VL: dynamic resolution, ``image_grid_thw`` patches merged 2 x 2 into tokens."""

from __future__ import annotations

from .base import HFAdapter


class Qwen2VLAdapter(HFAdapter):
    family = "qwen2_vl"
    supports_relevance = True
    default_input_size = 448  # views are rendered square at this size: (448/14/2)^2 = 256 tokens each

    def _guess_input_size(self) -> int:
        return self.default_input_size

    def image_grid(self, batch: dict) -> list[tuple[int, int]]:
        """Token grid per image: (h / merge, w / merge) from the processor's ``image_grid_thw``."""
        merge = int(getattr(self.model.config.vision_config, "spatial_merge_size", 2))
        return [(int(h) // merge, int(w) // merge) for _, h, w in batch["image_grid_thw"].tolist()]
