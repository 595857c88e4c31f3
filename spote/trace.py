"""The picture of one SPOT-E run: the image with every spotlight tried (the chosen ones marked),
and the entropy and reward per step."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .core import PolicyConfig, exit_threshold  # noqa: E402


def plot_trace(image, result, out: str | Path, question: str = "", evidence=None) -> Path:
    fig, (ax_img, ax_curve) = plt.subplots(1, 2, figsize=(12, 5.2), gridspec_kw={"width_ratios": [1.4, 1]})
    ax_img.imshow(image)
    ax_img.set_axis_off()
    steps = max(result.box_steps, default=-1) + 1
    cmap = plt.get_cmap("viridis", max(steps, 1))
    for box, step in zip(result.boxes, result.box_steps or [0] * len(result.boxes)):
        x0, y0, x1, y1 = box
        ax_img.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.8, alpha=0.55, ec=cmap(step)))
    for i, box in enumerate(result.chosen_boxes):
        x0, y0, x1, y1 = box
        ax_img.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2.0, ec=cmap(i), ls="--"))
    if result.evidence_box:
        x0, y0, x1, y1 = result.evidence_box
        ax_img.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2.8, ec="red", label="answer view"))
    if evidence:
        x0, y0, x1, y1 = evidence
        ax_img.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, ec="white", ls=":", label="evidence"))
    ax_img.set_title(f"{question}\nanswer: {result.answer}  (confidence {result.confidence:.2f}, "
                     f"{result.forward_passes} passes)", fontsize=10)
    xs = list(range(len(result.entropy_trace)))
    ax_curve.plot(xs, result.entropy_trace, "o-", color="tab:blue", label="answer entropy (nats)")
    ax_curve.set_xlabel("step (0 = whole image; glance, probe, then GRPO)")
    ax_curve.set_ylabel("entropy of the best spotlight (nats)", color="tab:blue")
    tau = exit_threshold(PolicyConfig(**result.policy), len(result.distribution) if result.distribution else None)
    ax_curve.axhline(tau, color="tab:blue", ls=":", lw=0.8)
    if result.reward_trace:
        ax_r = ax_curve.twinx()
        ax_r.plot(range(1, len(result.reward_trace) + 1), result.reward_trace, "s--", color="tab:orange", label="best reward")
        ax_r.set_ylabel("best reward", color="tab:orange")
    ax_curve.set_title(f"mode={result.mode}  method={result.method}", fontsize=10)
    ax_curve.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
