"""Regenerate the small sample corpus shipped for ``make demo``: SpotBench scenes, a manifest, and
two deliberately bad rows (a corrupt file and a missing one) so the demo shows error rows too.

    python -m pipelines.samples.make_samples
"""

from __future__ import annotations

import json
from pathlib import Path

from spote.bench.scenes import make_item

HERE = Path(__file__).parent / "vqa"


def main(n: int = 10, seed: int = 7) -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        item = make_item(seed, "test", i)
        ext = "png" if item.domain == "documents" else "jpg"
        name = f"{item.id}.{ext}"
        item.image.save(HERE / name, quality=92) if ext == "jpg" else item.image.save(HERE / name, optimize=True)
        rows.append({"id": item.id, "image_uri": name, "question": item.question, "choices": list(item.choices),
                     "answer": item.answer})
    (HERE / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this file is not really a PNG")
    rows.append({"id": "bad-corrupt", "image_uri": "corrupt.png", "question": "is there a boat ?", "choices": ["yes", "no"]})
    rows.append({"id": "bad-missing", "image_uri": "missing.png", "question": "is there a boat ?", "choices": ["yes", "no"]})
    rows.append({"id": "bad-question", "image_uri": rows[0]["image_uri"], "question": " ", "choices": ["yes", "no"]})
    (HERE / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


if __name__ == "__main__":
    main()
