"""The picture of one SPOT-E run: the image with every spotlight tried (the chosen ones marked), what the
model saw (the whole view, and the rendered view the answer came from), and the entropy and reward per
step."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .core import PolicyConfig, exit_threshold  # noqa: E402
from .spotlight import Box, ViewRenderer  # noqa: E402
from .uris import replacing  # noqa: E402

DEFAULT_VIEW_SIZE = 384  # pixels, when the model's input size is not given
NOTHING_READ = "(nothing read)"  # an empty open answer, as `spote ask` prints it
# fonts that draw what DejaVu Sans lacks (CJK, Arabic, Devanagari, ...), tried in this order where installed:
# matplotlib draws each character in the first font of the list that has it
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Noto Sans JP",
                  "Noto Sans SC", "Noto Sans TC", "Noto Sans KR", "Source Han Sans", "Source Han Sans JP",
                  "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback",
                  "IPAexGothic", "IPAGothic", "TakaoGothic", "AR PL UMing CN", "NanumGothic", "Noto Sans Arabic",
                  "Noto Sans Hebrew", "Noto Sans Devanagari", "Noto Sans Bengali", "Noto Sans Tamil",
                  "Noto Sans Thai", "Noto Sans", "Microsoft YaHei", "SimHei", "Hiragino Sans", "PingFang SC",
                  "Apple SD Gothic Neo", "Malgun Gothic", "MS Gothic", "Arial Unicode MS", "Unifont")


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
    title = _spotlights(ax_img, image, result, question, evidence)
    ax = None
    view_axes = []
    for i, (view_title, view) in enumerate(views):
        ax = fig.add_subplot(grid[i, 1])
        view_axes.append(ax)
        ax.imshow(view)
        ax.set_title(view_title, fontsize=8.5)
        ax.set_xticks([])
        ax.set_yticks([])
        if i and result.evidence_box:
            for side in ax.spines.values():
                side.set_edgecolor("red")
                side.set_linewidth(2.0)
    if not result.evidence_box:
        ax.set_xlabel(whole_image_reason(result), fontsize=8.5)
    _curves(ax_curve, result)
    # the question and answer, and each view's caption, are wrapped to their column as laid out without them,
    # then laid out again with the lines they take; a title wider than its column would run over the next one
    titles = [(ax_img, title)] + [(a, t) for a, (t, _) in zip(view_axes, views)]
    for a, _ in titles:
        a.title.set_text("")
    with quiet_glyphs():
        fig.tight_layout()
        for _ in range(3):
            changed = False
            for a, text in titles:
                # the question: its column; a view's caption: as wide as the view is drawn (it keeps its
                # aspect, narrower than its cell), so that it stays clear of the next column's axis labels
                a.apply_aspect()
                slot = (a.get_subplotspec().get_position(fig) if a is ax_img else a.get_position()).width * fig.bbox.width
                lines = wrap_text(text, 0.96 * slot, a.title.get_fontproperties(), fig.canvas.get_renderer())
                if lines != a.title.get_text():
                    a.title.set_text(lines)
                    changed = True
            if not changed:
                break
            fig.tight_layout()
    return fig


def whole_image_reason(result) -> str:
    """Why the whole image answered (no spotlight view did), as the picture says it."""
    if not result.boxes:  # no spotlight was read: the search did not start, or the method has none
        tau = exit_threshold(PolicyConfig(**result.policy), len(result.distribution) if result.distribution else None)
        sure = result.method in ("spote", "naive_entropy") and result.entropy_trace and result.entropy_trace[0] <= tau
        return ("the whole image answered confidently:\nno spotlight tried" if sure
                else "the whole image answered:\nno spotlight tried")
    z = result.reward_standout
    if z is not None and z < result.policy["standout_z"]:
        return ("the whole image answered:\nthe best spotlight did not stand out\n"
                f"(robust z {z:.2f} < standout_z {result.policy['standout_z']:g})")
    if not result.answer and result.answer_readings:  # a spotlight answered, and read nothing
        return f"the best spotlight answered {NOTHING_READ}:\nno view holds the evidence"
    return "the whole image answered:\nno spotlight beat it"


def font_families() -> list[str]:
    """matplotlib's font family, then the installed ``FALLBACK_FONTS`` for characters it lacks."""
    return [*matplotlib.rcParams["font.family"], *_installed_fallbacks()]


@cache
def _installed_fallbacks() -> tuple[str, ...]:
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    return tuple(name for name in FALLBACK_FONTS if name in names)


@contextmanager
def quiet_glyphs():
    """Characters no installed font has are drawn as boxes; matplotlib's warning for each, with its source
    line, says nothing the picture does not."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        yield


def wrap_text(text: str, width: float, prop: FontProperties, renderer) -> str:
    """``text`` with line breaks so that no line is wider than ``width`` display pixels when drawn in
    ``prop``: between words where they fit, else inside a word (text with no spaces, such as Chinese)."""
    def fits(line: str) -> bool:
        return renderer.get_text_width_height_descent(line, prop, ismath=False)[0] <= width

    out = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            joined = f"{line} {word}" if line else word
            if fits(joined):
                line = joined
                continue
            if line:
                out.append(line)
                line = ""
            for ch in word:  # the word alone: broken where it overflows
                if line and not fits(line + ch):
                    out.append(line)
                    line = ""
                line += ch
        out.append(line)
    return "\n".join(out)


def plot_trace(image, result, out: str | Path, question: str = "", evidence=None,
               input_size: int | None = None) -> Path:
    """Write the trace PNG to ``out`` (folders made); ``input_size``: the model's view side in pixels."""
    fig = trace_figure(image, result, question, evidence, input_size)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with quiet_glyphs(), replacing(out) as part:
            fig.savefig(part, dpi=110)
    finally:
        plt.close(fig)
    return out


def _spotlights(ax, image, result, question, evidence) -> str:
    """Draw the image and its spotlights; their title (the question, the answer) is set and returned."""
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
    passes = f"{result.forward_passes} pass" + ("" if result.forward_passes == 1 else "es")
    title = (f"{question}\nanswer: {result.answer or NOTHING_READ}  (confidence {result.confidence:.2f}, {passes})"
             + (f"\n(stretched to show: {w} x {h} px)" if extreme else ""))
    # the user's text is drawn as written: "$5 and $x" is no TeX math (mathtext would garble it or fail)
    ax.set_title(title, fontsize=10, parse_math=False, fontfamily=font_families())
    return title


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
