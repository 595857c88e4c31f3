"""The picture of one SPOT-E run: the image with every spotlight tried (the chosen ones marked), what the
model saw (the whole view, and the rendered view the answer came from), and the entropy and reward per
step."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .core import PolicyConfig, exit_threshold  # noqa: E402
from .spotlight import Box, ViewRenderer  # noqa: E402

DEFAULT_VIEW_SIZE = 384  # pixels, when the model's input size is not given


def model_views(image, result, input_size: int) -> list[tuple[str, object]]:
    """(title, PIL image) of what the model was given: the whole view (step 0), then the answer's
    rendered view(s) in the run's mode, as ``ViewRenderer`` made them (the whole view not repeated)."""
    renderer = ViewRenderer(image, input_size)
    views = [(f"model input, step 0:\nthe whole image ({input_size} px)", renderer.global_view)]
    if result.evidence_box:
        rendered = renderer.render(Box(*result.evidence_box), result.mode)
        extra = [v for v in rendered if v is not renderer.global_view]
        label = {"zoom": "zoom", "zoom+context": "zoom (given beside the whole image)",
                 "highlight": "highlight on the whole image"}.get(result.mode, result.mode)
        for v in extra:
            views.append((f"model input the answer came from:\n{label}", v))
    return views


def trace_figure(image, result, question: str = "", evidence=None, input_size: int | None = None):
    """The trace as a matplotlib Figure: spotlights on the image | what the model saw | entropy per step."""
    views = model_views(image, result, input_size or DEFAULT_VIEW_SIZE)
    fig = plt.figure(figsize=(16, 5.6))
    grid = fig.add_gridspec(len(views), 3, width_ratios=[1.4, 0.75, 1.1])
    ax_img = fig.add_subplot(grid[:, 0])
    ax_curve = fig.add_subplot(grid[:, 2])
    _spotlights(ax_img, image, result, question, evidence)
    ax = None
    for i, (title, view) in enumerate(views):
        ax = fig.add_subplot(grid[i, 1])
        ax.imshow(view)
        ax.set_title(title, fontsize=8.5)
        ax.set_xticks([])
        ax.set_yticks([])
        if i and result.evidence_box:
            for side in ax.spines.values():
                side.set_edgecolor("red")
                side.set_linewidth(2.0)
    if not result.evidence_box:
        z = result.reward_standout
        why = ("no spotlight beat it" if z is None else
               f"the best spotlight did not stand out\n(robust z {z:.2f} < standout_z {result.policy['standout_z']:g})")
        ax.set_xlabel(f"the whole image answered:\n{why}", fontsize=8.5)
    _curves(ax_curve, result)
    fig.tight_layout()
    return fig


def plot_trace(image, result, out: str | Path, question: str = "", evidence=None,
               input_size: int | None = None) -> Path:
    """Write the trace PNG to ``out`` (folders made); ``input_size``: the model's view side in pixels."""
    fig = trace_figure(image, result, question, evidence, input_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _spotlights(ax, image, result, question, evidence) -> None:
    w, h = image.size if hasattr(image, "getbbox") else (image.shape[1], image.shape[0])
    # boxes are pixel edges ([0, 0, w, h] is the whole image); imshow's default grid puts pixel centres on
    # integers, which would shift every box by half a pixel and clip one on the image's right or lower edge
    extreme = max(w / h, h / w) > 20  # a 1 x 1000 strip drawn to scale is under one screen pixel wide
    ax.imshow(image, extent=(0, w, h, 0), aspect="auto" if extreme else "equal")
    ax.set_axis_off()
    steps = max(result.box_steps, default=-1) + 1
    cmap = plt.get_cmap("viridis", max(steps, 1))
    for box, step in zip(result.boxes, result.box_steps or [0] * len(result.boxes)):
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.8, alpha=0.55, ec=cmap(step)))
    for i, box in enumerate(result.chosen_boxes):
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2.0, ec=cmap(i), ls="--"))
    if result.evidence_box:
        x0, y0, x1, y1 = result.evidence_box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2.8, ec="red", label="answer view"))
    if evidence:
        x0, y0, x1, y1 = evidence
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, ec="white", ls=":", label="evidence"))
    # the user's text is drawn as written: "$5 and $x" is no TeX math (mathtext would garble it or fail)
    ax.set_title(f"{question}\nanswer: {result.answer}  (confidence {result.confidence:.2f}, "
                 f"{result.forward_passes} passes)" + (f"\n(stretched to show: {w} x {h} px)" if extreme else ""),
                 fontsize=10, parse_math=False)


def _curves(ax, result) -> None:
    xs = list(range(len(result.entropy_trace)))
    ax.plot(xs, result.entropy_trace, "o-", color="tab:blue", label="answer entropy (nats)")
    ax.set_xlabel("step (0 = whole image; glance, probe, then GRPO)")
    ax.set_ylabel("entropy of the best spotlight (nats)", color="tab:blue")
    tau = exit_threshold(PolicyConfig(**result.policy), len(result.distribution) if result.distribution else None)
    ax.axhline(tau, color="tab:blue", ls=":", lw=0.8)
    if result.reward_trace:
        ax_r = ax.twinx()
        ax_r.plot(range(1, len(result.reward_trace) + 1), result.reward_trace, "s--", color="tab:orange",
                  label="best reward")
        ax_r.set_ylabel("best reward", color="tab:orange")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlim(-0.3, max(1, len(xs) - 1) + 0.3)
    ax.set_title(f"mode={result.mode}  method={result.method}", fontsize=10)
    ax.grid(alpha=0.3)
