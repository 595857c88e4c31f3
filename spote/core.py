"""SPOT-E: test-time entropy shaping with visual spotlights, for one frozen VLM and one instance.

Read top to bottom; the steps are numbered as in docs/design.md ("The loop"):

1. The whole image: a distribution over the choices (or a greedy answer span), its entropy
   ``H_base`` and the low-entropy *anchors*. ``H_base <= tau`` -> done after one forward pass. For
   K closed answers tau = 0.4 * ln K, the same certainty for a yes/no (0.28 nats) as for a digit
   (0.92 nats); open answers tau = 0.35 nats.
2. The glance: one square of 0.8 x the short side on the saliency centroid (large evidence the
   whole image leaves unsure is usually read at this closer look: long / (0.8 short) times the
   whole image's scale, 1.25x on a square); clear -> done after two passes.
3. The coarse probe, when almost clear (``H_base <= 2 tau``): four corner views of 0.65 x the short
   side, since what the whole image nearly shows is usually large; one of them clear -> done; else
   the centre view (large evidence across the corners' seams).
4. The spotlight policy (``SpotlightPolicy``): logits over a multi-scale grid of windows,
   initialised from the model's relative attention when it has one and a model-free saliency map.
5. GRPO steps, tuning it *for this instance*: a group of G spotlights (the first ``greedy_steps``
   groups the policy's most likely windows, the later ones sampled), rendered from the
   full-resolution pixels and read in batches of ``read_chunk`` views (every view one forward pass;
   the group ends at the first clear view), reward = clarity - lambda * anchor penalty
   (``reward``), group-relative advantages, a clipped policy-gradient step with a KL pull toward
   the initial logits (plus the current zoom bonus). The first group reads the windows centred on
   the strongest saliency peaks first: small evidence is usually the strongest local anomaly, and a
   window centred on it holds it where a small model reads best. Stop when confident, on a reward
   plateau, after T steps, or when the forward-pass budget is spent. A closed-set run also
   *settles*: after ``settle_after`` passes, if no view has given any answer but the whole image's a
   probability >= ``settle_p``, nothing seen contradicts the whole image (mostly an absence being
   proved, which no close-up makes clear).
6. The answer, from the best spotlight by reward; the whole image competes with reward 0, so a run
   whose every spotlight scores below zero keeps the baseline answer. An open answer is generated
   anew where the best spotlights agree, that window moved onto the salient thing near it
   (``answer_centred``), decoded jointly from shifted and rescaled copies of it (``answer_window``,
   ``answer_windows``); unless the best reward does not stand out of those of the views that may
   answer (``standout``: a robust z below ``standout_z``), which is chance among readings no view
   improved (evidence larger than every window), and the whole image's answer is kept.

Anchors. Open-ended answers: span positions whose baseline entropy is below ``anchor_epsilon`` nats;
a spotlight is penalised for raising their entropy (the paper's scaffold). Closed-set answers
are a single position, whose entropy *is* the clarity term, so there the anchor is the
baseline's top choice when the baseline is already almost sure of it (``anchor_min_prob``);
a spotlight is penalised for lowering that choice's log-probability, so a confidently wrong
spotlight cannot overturn what the whole image already showed. A mere lean is no anchor: it
would veto the very close-up that holds the evidence. Against the other collapse, a close-up
of empty water answering a confident "no", the default ``zoom+context`` rendering keeps the
global view beside every zoom, so an empty close-up leaves the model unsure. With the early exit an
anchored item rarely searches at all; in the paper's loop (every item searched, close-up alone) the
anchor is what stops a close-up of a large boat's hull flipping a sure "yes" to "no" (docs/design.md).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
from PIL import Image

from .adapters.base import entropy_nats, one_token_apart
from .saliency import WORKING_SIZE as SALIENCY_SIZE
from .saliency import salient_centre, saliency_cells, saliency_centroid, saliency_map, saliency_peaks
from .images import to_rgb
from .spotlight import MODES, Box, ViewRenderer, letterbox_transform


ANCHOR_PENALTIES = ("entropy", "logp")


def _real(v) -> bool:
    try:  # an int too large for a float (10**400 from JSON) is not a usable number either
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:
        return False


# PolicyConfig's field annotations -> the check a value must pass (numpy scalars count as numbers)
_FIELD_TYPES = {
    "int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
    "float": _real,
    "float | None": lambda v: v is None or _real(v),
    "bool": lambda v: isinstance(v, (bool, np.bool_)),
    "str": lambda v: isinstance(v, str),
}
_TYPE_WORDS = {"int": "an integer", "float": "a finite number", "float | None": "a finite number or null",
               "bool": "true or false", "str": "a string"}
# PolicyConfig fields that only make sense from a lower bound up (counts, weights, rates, ranges); the
# fields with narrower ranges are checked one by one in __post_init__
_AT_LEAST = {"first_group": 0, "steps": 0, "anchor_weight": 0, "anchor_epsilon": 0, "exit_entropy_per_ln_k": 0,
             "exit_entropy": 0, "learning_rate": 0, "kl_weight": 0, "clip": 0, "inner_epochs": 0, "grid": 1,
             "jitter": 0, "plateau_patience": 0, "relevance_sharpness": 0, "saliency_weight": 0, "saliency_peaks": 0,
             "probe_below": 0, "read_chunk": 0, "greedy_steps": 0}
# ... and up to a bound past which a search runs for hours or out of memory (grid: its map's cells; inner_epochs:
# Adam steps per GRPO step)
_AT_MOST = {"grid": 64, "inner_epochs": 64, "saliency_peaks": 256}
FLOAT_LIMIT = float(np.finfo(np.float32).max)  # |a float field| at most this: the policy's tensors are float32,
#                                               where 1e39 overflowed mid-search


@dataclass(frozen=True)
class PolicyConfig:
    """Everything that steers one SPOT-E run. Defaults are the ones the benchmark uses."""

    group_size: int = 16           # G: spotlights per GRPO step
    first_group: int = 0           # G_1: spotlights in the first step (0: G)
    steps: int = 12                # T: GRPO steps at most
    anchor_weight: float = 0.5     # lambda: weight of the anchor-preservation term (0 = naive entropy)
    anchor_epsilon: float = 0.1    # epsilon: open-ended anchors have baseline entropy below this (nats)
    anchor_penalty: str = "entropy"  # open ended: "entropy" (an anchor's entropy must not rise: the authors'
    #                                  scaffold) or "logp" (the baseline's token keeps its log p: its prediction)
    anchor_min_prob: float = 0.9   # closed-set anchor: the baseline's top choice, if almost sure (p >= this)
    exit_entropy_per_ln_k: float | None = 0.4  # closed set of K answers: stop when H <= this * ln K (None: exit_entropy)
    exit_entropy: float = 0.35     # tau (nats) for open-ended answers: stop when the span is at least this clear
    clarity_c: float = 0.1         # c in gamma = H / (H + c)
    learning_rate: float = 0.5     # Adam step size on the policy logits
    kl_weight: float = 0.01        # beta: KL pull toward the initial policy
    clip: float = 0.2              # PPO clip range
    inner_epochs: int = 4          # gradient steps per GRPO step
    mode: str = "zoom+context"     # highlight | zoom | zoom+context (global view + zoom, two images)
    budget: int = 96               # forward passes at most, everything included; the whole image is read whatever
    #                                it costs (one pass per choice where choices span several tokens)
    seed: int = 0
    grid: int = 16                 # resolution of the policy's position map
    min_window: float = 1.0        # smallest window side, in model input sizes
    scale_step: float = 2 ** (1 / 3)  # ratio of one window side to the next finer one (docs/experiments/window-scales.md)
    jitter: float = 0.2            # Gaussian exploration of window centres, in window sides
    zoom_bonus: float = 1.5        # adaptive zoom: logit bonus for finer windows inside the best one
    plateau_patience: int = 5      # steps without a better reward before stopping
    use_relevance: bool = True     # False: black-box mode (no attention read)
    relevance_sharpness: float = 0.5
    saliency_weight: float = 3.0   # model-free saliency prior (spote/saliency.py); 0 with use_relevance=False,
    #                                saliency_peaks=0 and glance_side=0: no image prior (the scale prior, fine_scale_bias, stays)
    fine_scale_bias: float = 1.0   # initial logit added per finer scale: the evidence we look for is small
    saliency_peaks: int = 8        # extra windows centred on the strongest saliency peaks (two finest scales)
    glance_side: float = 0.8       # one close look first: a square of this share of the short side on the saliency centroid (0: none)
    probe_side: float = 0.65       # coarse probe: 4 corner squares, then the centre one; share of the short side (0: none)
    probe_below: float = 2.0       # ... only when the whole image is almost clear: H_base <= probe_below * tau
    read_chunk: int = 4            # read a group k views at a time, ending it at the first clear view (0: all in one call)
    greedy_steps: int = 1          # the first k steps read the policy's most likely unread windows, in order (no sampling)
    peaks_first: bool = True       # the greedy first group reads the saliency peaks' finest windows first, strongest first, unjittered
    saliency_size: int = SALIENCY_SIZE  # long side (px) of the copy the saliency map is computed on (512)
    settle_after: int = 24         # closed set: stop after this many passes if no view gave another answer p >= settle_p (0: never);
    settle_p: float = 0.7          # ... the probability such another answer must reach; checked after every read
    #                                (a chunk, or a whole group with read_chunk=0)
    answer_top: int = 8            # open ended: the answer is read where the k best-rewarded windows agree
    #                                (answer_window; 1: on the best window itself)
    answer_centring: float = 1.5   # ... moved, same side, onto the most salient pixels within this many of its sides
    #                                about its centre (answer_centred; 0: not moved)
    answer_grid: int = 3           # ... decoded jointly from a g x g grid of copies of that window (answer_windows; odd;
    #                                1: one generation on it; also 1 when g^2 exceeds a third of the budget)
    answer_shift: float = 0.03     # ... shifted by up to this share of the window's side
    answer_rescale: float = 0.1    # ... each also at 1 - and 1 + this share of its side, where the copies still fit in a
    #                                third of the budget (3 g^2 copies; 0: the window's side only; only with g > 1 and
    #                                answer_step 0)
    answer_step: float = 0.0       # ... and so are that window's four neighbours moved by this share of its side; the
    #                                reading surest per token answers (answer_neighbours; 0: the window alone; only
    #                                with joint decoding, g > 1; as many as half the budget pays for)
    standout_z: float = 3.0        # open ended: an unclear search answers only if its best reward stands out of those of
    #                                the views that may answer, robust z = (r_max - median r) / (1.4826 MAD r) >= this;
    #                                else the whole image answers (standout; 0: always the search)

    def __post_init__(self):
        for f in fields(self):  # one clear error naming the field, before any comparison fails on a wrong type
            value = getattr(self, f.name)
            if not _FIELD_TYPES[f.type](value):
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                raise ValueError(f"{f.name} must be {_TYPE_WORDS[f.type]}, got {shown}")
            if value is not None and f.type != "str":  # a numpy scalar becomes the Python one: results stay JSON
                object.__setattr__(self, f.name, {"int": int, "bool": bool}.get(f.type, float)(value))
        for name, low in _AT_LEAST.items():
            if getattr(self, name) is not None and getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        for name, high in _AT_MOST.items():
            if getattr(self, name) > high:
                raise ValueError(f"{name} must be <= {high}, got {getattr(self, name)}")
        for f in fields(self):
            if f.type.startswith("float") and getattr(self, f.name) is not None and abs(getattr(self, f.name)) > FLOAT_LIMIT:
                raise ValueError(f"{f.name} must be at most {FLOAT_LIMIT:g} in size, got {getattr(self, f.name)}")
        if self.clarity_c <= 0:
            raise ValueError(f"clarity_c must be > 0 (gamma = H / (H + c) is 0/0 at c = 0 on a sure reading), got {self.clarity_c}")
        if not 0 <= self.anchor_min_prob <= 1:
            raise ValueError(f"anchor_min_prob must be a probability in [0, 1], got {self.anchor_min_prob}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 (advantages are relative to the group)")
        if self.first_group == 1:  # a group of one has no advantage: the search would end before it began
            raise ValueError("first_group must be 0 (group_size) or >= 2 (advantages are relative to the group)")
        if not 0 <= self.glance_side < 1:
            raise ValueError("glance_side must be in [0, 1): a share of the image's short side (0: no glance)")
        if not 0 <= self.probe_side < 1:
            raise ValueError("probe_side must be in [0, 1): a share of the image's short side (0: no probe)")
        if not 0.5 <= self.min_window <= 16:
            raise ValueError(f"min_window must be 0.5-16 model inputs (the finest window's side), got {self.min_window}")
        if not 1.1 <= self.scale_step <= 4:
            raise ValueError(f"scale_step must be 1.1-4 (the ratio of one window side to the next), got {self.scale_step}")
        if self.budget < 1:
            raise ValueError("budget must be >= 1 forward pass")
        if not 0 <= self.seed < 2**63:  # numpy refuses a negative seed, torch one past 64-bit, deep inside a search
            raise ValueError(f"seed must be 0 to 2**63 - 1, got {self.seed}")
        if self.settle_after < 0:
            raise ValueError(f"settle_after must be >= 0 forward passes (0: never settle), got {self.settle_after}")
        if not 0 < self.settle_p <= 1:
            raise ValueError(f"settle_p must be a probability in (0, 1], got {self.settle_p}")
        if not 32 <= self.saliency_size <= 4096:
            raise ValueError(f"saliency_size must be 32-4096 px, got {self.saliency_size}")
        if self.answer_top < 1:
            raise ValueError(f"answer_top must be >= 1 window, got {self.answer_top}")
        if self.answer_grid not in (1, 3, 5):
            raise ValueError(f"answer_grid must be 1, 3 or 5 (an odd g x g grid of shifted copies of the answer's window, "
                             f"the window itself at its centre), got {self.answer_grid}")
        if not (0 < self.answer_shift <= 0.25 or (self.answer_shift == 0 and self.answer_grid == 1)):
            raise ValueError(f"answer_shift must be in (0, 0.25] window sides (0 only with answer_grid 1: copies would "
                             f"be identical), got {self.answer_shift}")
        if not (self.answer_centring == 0 or 1 <= self.answer_centring <= 4):
            raise ValueError(f"answer_centring must be 0 (not moved) or 1-4 window sides (the region searched for the "
                             f"salient centre), got {self.answer_centring}")
        if not 0 <= self.answer_rescale <= 0.25:
            raise ValueError(f"answer_rescale must be in [0, 0.25] window sides (0: copies at the window's side only), "
                             f"got {self.answer_rescale}")
        if not 0 <= self.answer_step <= 0.5:
            raise ValueError(f"answer_step must be in [0, 0.5] window sides (0: the agreed window alone), "
                             f"got {self.answer_step}")
        if self.standout_z < 0:
            raise ValueError(f"standout_z must be >= 0 (a robust z-score; 0: the search always answers), got {self.standout_z}")
        if self.anchor_penalty not in ANCHOR_PENALTIES:
            raise ValueError(f"anchor_penalty must be one of {ANCHOR_PENALTIES}, got {self.anchor_penalty!r}")


# ============================================================================ answers & entropy
@dataclass
class Reading:
    """What the model says on one view set: a distribution (closed set) or span entropies (open)."""

    logp: torch.Tensor | None = None       # [C] log-probs over the choices
    span_entropy: torch.Tensor | None = None  # [L] per-token entropy along the answer span
    span_logp: torch.Tensor | None = None     # [L] log p of the baseline's span tokens

    @property
    def entropy(self) -> float:
        """H_ans: the entropy of the choice distribution, or the mean over the answer span (nats)."""
        if self.logp is not None:
            return float(entropy_nats(self.logp))
        return float(self.span_entropy.mean()) if len(self.span_entropy) else 0.0


def answer_entropy(logp: torch.Tensor) -> torch.Tensor:
    """H = -sum_c p_c log p_c (nats), over the last axis (a choice of probability 0 adds 0)."""
    return entropy_nats(logp)


@dataclass
class Anchors:
    choice: int | None = None               # closed set: index of the anchored choice
    positions: list[int] = field(default_factory=list)  # open ended: anchored span positions

    def describe(self, choices, span_tokens) -> list:
        if choices is not None:
            return [] if self.choice is None else [choices[self.choice]]
        return [{"position": i, "token": span_tokens[i]} for i in self.positions]


def find_anchors(base: Reading, cfg: PolicyConfig) -> Anchors:
    """The whole image's anchors: closed set, its top choice where its probability is >= ``anchor_min_prob``
    (else none); open ended, the answer positions whose entropy is below ``anchor_epsilon`` nats."""
    if base.logp is not None:
        top = int(base.logp.argmax())
        return Anchors(choice=top if base.logp[top].exp() >= cfg.anchor_min_prob else None)
    return Anchors(positions=[i for i, h in enumerate(base.span_entropy.tolist()) if h < cfg.anchor_epsilon])


LOGP_FLOOR = -100.0  # nats: the least log p a reward takes (p = 0 reads as e^-100; no softmax of finite logits goes below it here)


def reward(base: Reading, cand: Reading, anchors: Anchors, cfg: PolicyConfig) -> float:
    """r = gamma * (H_base - H_cand) - lambda * preservation_penalty.

    gamma = H_base / (H_base + c)   (dynamic: a confident baseline gets little push)
    open ended:  penalty = mean_{t in anchors} max(0, H_cand[t] - H_base[t])          ("entropy")
             or  penalty = mean_{t in anchors} max(0, log p_base(y_t) - log p_cand(y_t))  ("logp": y the
                 baseline's token; a view that reads another token confidently has low entropy there,
                 so only this form sees the flip)
    closed set:  penalty = max(0, log p_base[a*] - log p_cand[a*])   (a* the anchored choice)

    log p_cand is taken at least ``LOGP_FLOOR``: a view that gives the anchored token probability 0 (a
    masked choice) pays a large finite penalty, so that its group's advantages stay defined.
    """
    h_base, h_cand = base.entropy, cand.entropy
    gamma = h_base / (h_base + cfg.clarity_c)
    clarity = gamma * (h_base - h_cand)
    penalty = 0.0
    if base.logp is not None and anchors.choice is not None:
        penalty = max(0.0, float(base.logp[anchors.choice] - cand.logp[anchors.choice].clamp(min=LOGP_FLOOR)))
    elif base.logp is None and anchors.positions:
        idx = torch.tensor(anchors.positions)
        if cfg.anchor_penalty == "logp":
            rise = base.span_logp[idx] - cand.span_logp[idx].clamp(min=LOGP_FLOOR)
        else:
            rise = cand.span_entropy[idx] - base.span_entropy[idx]
        penalty = float(rise.clamp(min=0).mean())
    return clarity - cfg.anchor_weight * penalty


def _check_finite(scores: torch.Tensor) -> None:
    """Raises ValueError when the model's first scores (log-probabilities, entropies) are NaN or +infinity:
    broken weights (a NaN tensor) would otherwise give an answer of confidence NaN. A log-probability of
    -infinity is a choice of probability 0, which a sound model can give."""
    scores = scores.float()
    if torch.isnan(scores).any() or torch.isposinf(scores).any():
        raise ValueError("the model gives non-finite scores (NaN or infinity) reading the image: its weights "
                         "(or the dtype they run in) are broken")


def _choice_logp(adapter, views_batch, question: str, choices) -> torch.Tensor:
    """``adapter.choice_logprobs`` as a float tensor [B, C] of log-probabilities normalised over the choices.

    Raises:
        ValueError: another shape, or rows that are not log-probabilities summing to 1 (probabilities, raw
            scores: a hand-written adapter's slip would read as a confidence above 1).
    """
    out = adapter.choice_logprobs(views_batch, question, choices)
    logp = torch.as_tensor(out.detach().cpu() if isinstance(out, torch.Tensor) else out).float()
    if tuple(logp.shape) != (len(views_batch), len(choices)):
        raise ValueError(f"the adapter's choice_logprobs must return [{len(views_batch)}, {len(choices)}] (view sets x "
                         f"choices), got shape {tuple(logp.shape)}")
    _check_finite(logp)
    total = torch.logsumexp(logp, dim=-1)
    if total.abs().max() > 1e-2:  # 1%: half-precision log p, never probabilities or raw scores (C >= 2)
        raise ValueError("the adapter's choice_logprobs must return log-probabilities normalised over the choices "
                         f"(each row's exp summing to 1), got rows summing to {float(total.exp().min()):.4g}-"
                         f"{float(total.exp().max()):.4g}")
    # rounding of a low-precision dtype (bfloat16 rows sum to 1 within 0.5%) taken out, in float32
    return logp if total.abs().max() <= 1e-6 else torch.log_softmax(logp, dim=-1)


class Reader:
    """Reads a question off batches of view sets with one adapter: closed set or teacher-forced span."""

    def __init__(self, adapter, question: str, choices=None):
        self.adapter, self.question, self.choices = adapter, question, choices
        self.span_ids: list[int] | None = None    # the tokens scored on every view (open ended)
        self.answer_ids: list[int] | None = None  # the baseline's answer tokens: span_ids, or [] for an empty answer
        self.cut_off: bool | None = None  # open ended: the baseline's answer hit the token cap (None: not known)

    def baseline(self, views: list[Image.Image]) -> tuple[Reading, str]:
        if self.choices is not None:
            logp = _choice_logp(self.adapter, [views], self.question, self.choices)[0]
            return Reading(logp=logp), self.choices[int(logp.argmax())]
        gen = self.adapter.generate(views, self.question)
        self.cut_off = gen.cut_off
        _check_finite(torch.tensor([*gen.logprobs, *gen.entropies, gen.end_logp or 0.0, gen.end_entropy or 0.0]))
        if not gen.token_ids and gen.end_entropy is not None:
            # An empty answer is the model's choice to end at once: that step is its span, so an unsure
            # empty answer is not taken for a clear one (an empty span has entropy 0), and views are
            # scored by how sure they are of the first step.
            end = gen.end_token_id if getattr(gen, "end_token_id", None) is not None else self.adapter.tokenizer.eos_token_id
            self.span_ids, self.answer_ids = [end], []
            return Reading(span_entropy=torch.tensor([gen.end_entropy]), span_logp=torch.tensor([gen.end_logp])), gen.text
        self.span_ids = self.answer_ids = gen.token_ids
        return Reading(span_entropy=torch.tensor(gen.entropies), span_logp=torch.tensor(gen.logprobs)), gen.text

    def read(self, views_batch: list[list[Image.Image]]) -> list[Reading]:
        """One Reading per view set, from batched forward passes (``adapter.batch_size`` sets at a time; each
        set counts as one pass in ``adapter.forward_passes``, or one per choice for multi-token choices)."""
        if self.choices is not None:
            logp = _choice_logp(self.adapter, views_batch, self.question, self.choices)
            return [Reading(logp=row) for row in logp]
        if not self.span_ids:
            return [Reading(span_entropy=torch.zeros(0), span_logp=torch.zeros(0)) for _ in views_batch]
        prompt = self.adapter.prompt_text(len(views_batch[0]), self.question)
        lp, ent = self.adapter.teacher_forced(views_batch, prompt, self.span_ids)
        return [Reading(span_entropy=e, span_logp=l) for l, e in zip(lp, ent)]

    def cost_per_view(self) -> int:
        """Forward passes one candidate costs: 1, or one per choice where the choices are not one token apart
        (``one_token_apart``)."""
        if self.choices is None:
            return 1
        prompt = self.adapter.prompt_text(1, self.question, self.choices)
        ids = [self.adapter.continuation_ids(prompt, c) for c in self.choices]
        return 1 if one_token_apart(ids) is not None else len(self.choices)


# ============================================================================ the spotlight policy
def window_grid(width: int, height: int, input_size: int, min_window: float = 1.0,
                scale_step: float = PolicyConfig.scale_step) -> tuple[list[Box], np.ndarray]:
    """Multi-scale windows: sides short/2, short/(2 s), short/(2 s^2), ... down to ``min_window * input_size``
    (s = ``scale_step``), stride side/2. A thing fits a window at most about ``s`` times its size (where a
    window of its place is on the grid): with s = 2, a field shows up to half as large as in a tight crop.
    The floor side itself is added unless the finest side is already within half a step of it.

    Returns:
        (boxes, scale_idx): N square windows in source pixels (clipped to the image's sides), and an int
        array of shape [N], each window's scale, 0 the coarsest.
    """
    short = min(width, height)
    sides, side = [], short / 2
    floor = min_window * input_size
    while side >= floor:
        sides.append(side)
        side /= scale_step
    # the floor itself, unless the finest side is already close to it (within half a step, and 1.5x at most:
    # with a coarse step the finest window must still come near min_window)
    if not sides or sides[-1] > min((1 + scale_step) / 2, 1.5) * floor:
        sides.append(min(floor, short))
    boxes, scale_idx = [], []
    for k, side in enumerate(sides):  # k = 0 the coarsest scale (fine_scale_bias * k favours the finer)
        bw, bh = min(width, side), min(height, side)
        nx = max(1, math.ceil((width - bw) / (bw / 2)) + 1)
        ny = max(1, math.ceil((height - bh) / (bh / 2)) + 1)
        for j in range(ny):
            for i in range(nx):
                x0 = (width - bw) * (i / (nx - 1) if nx > 1 else 0.5)
                y0 = (height - bh) * (j / (ny - 1) if ny > 1 else 0.5)
                boxes.append(Box(x0, y0, x0 + bw, y0 + bh))
                scale_idx.append(k)
    return boxes, np.asarray(scale_idx)


class SpotlightPolicy:
    """Per-instance policy over spotlight windows: pi(w) = softmax_w(mean_{cells in w} M + S[scale(w)] + b_w),
    b_w the adaptive zoom's bonus (``zoom_bonus`` for windows finer than the best so far and centred in it, else 0).

    ``M`` (grid x grid position logits) and ``S`` (one logit per scale) are the only tuned
    parameters. Because windows share position cells, rewarding a coarse window raises the finer
    windows inside it, which is what lets a few steps go coarse to fine.

    The windows: a multi-scale grid (stride half a side) plus, at the two finest sides, windows
    centred on the strongest saliency peaks. A grid window holds a small thing anywhere, often at
    its edge, and a small model reads a glyph only near the centre (the peak-window ablation in
    docs/design.md).
    """

    def __init__(self, width: int, height: int, input_size: int, cfg: PolicyConfig,
                 relevance_cells: np.ndarray | None = None, saliency: np.ndarray | None = None,
                 peaks: list[tuple[float, float]] = ()):
        self.cfg, self.width, self.height = cfg, width, height
        self.windows, self.scale_idx = window_grid(width, height, input_size, cfg.min_window,
                                                   scale_step=cfg.scale_step)
        self.peak_windows: list[int] = []  # the finest side's peak windows, strongest peak first
        if peaks:  # windows of the two finest sides centred on saliency peaks, clamped inside the image
            extra, extra_scale = [], []
            finest = sorted(set(self.scale_idx.tolist()))[-2:]
            for k in finest:
                side = self.windows[int(np.argmax(self.scale_idx == k))].width
                seen: set[tuple] = set()  # peaks near a border can clamp to the same window: keep one
                for px, py in peaks:
                    b = Box.square(px, py, side).shifted_inside(width, height)
                    key = tuple(b.as_list())
                    if key in seen:
                        continue
                    seen.add(key)
                    if k == finest[-1]:
                        self.peak_windows.append(len(self.windows) + len(extra))
                    extra.append(b)
                    extra_scale.append(k)
            self.windows = self.windows + extra
            self.scale_idx = np.concatenate([self.scale_idx, extra_scale]).astype(int)
        g = cfg.grid
        cx = (np.arange(g) + 0.5) * width / g
        cy = (np.arange(g) + 0.5) * height / g
        A = np.zeros((len(self.windows), g * g), np.float32)
        for w, b in enumerate(self.windows):
            inside = np.outer((cy >= b.y0) & (cy < b.y1), (cx >= b.x0) & (cx < b.x1)).ravel()
            if not inside.any():  # a window smaller than a cell: the cell holding its centre
                inside[min(g - 1, int(b.centre[1] / height * g)) * g + min(g - 1, int(b.centre[0] / width * g))] = True
            A[w] = inside / inside.sum()
        self.A = torch.from_numpy(A)
        counts = np.bincount(self.scale_idx)
        # initial position logits: M0 = s_rel * log(rel / mean rel + 1e-3) + w_sal * log(sal / mean sal + 1e-3)
        # (the 1e-3 keeps a cell the map gives nothing a finite logit)
        pos0 = np.zeros(g * g)
        if relevance_cells is not None:
            rel = np.asarray(relevance_cells, np.float64).ravel()
            pos0 += cfg.relevance_sharpness * np.log(rel / rel.mean() + 1e-3)
        if saliency is not None:
            sal = np.asarray(saliency, np.float64).ravel()
            pos0 += cfg.saliency_weight * np.log(sal / sal.mean() + 1e-3)
        pos0 = torch.tensor(pos0, dtype=torch.float32)
        self.pos = pos0.clone().requires_grad_(True)
        # S0[k] = -log(count_k) + bias * k: scale k holds mass ~ exp(bias * k), spread over its windows
        scale0 = -np.log(counts) + cfg.fine_scale_bias * np.arange(len(counts))
        self.scale = torch.tensor(scale0, dtype=torch.float32).requires_grad_(True)
        self.bias = torch.zeros(len(self.windows))
        self.scale_t = torch.from_numpy(self.scale_idx)
        with torch.no_grad():
            self.init_logits = self._raw_logits()
        self.opt = torch.optim.Adam([self.pos, self.scale], lr=cfg.learning_rate)

    def _raw_logits(self) -> torch.Tensor:
        return self.A @ self.pos + self.scale[self.scale_t]

    def log_probs(self) -> torch.Tensor:
        return torch.log_softmax(self._raw_logits() + self.bias, -1)

    def sample(self, k: int, rng: np.random.Generator, exclude: set[int]) -> list[int]:
        """Gumbel-top-k: k distinct windows, none evaluated before."""
        return self.top(k, exclude, rng)

    def top(self, k: int, exclude: set[int] = frozenset(), rng: np.random.Generator | None = None) -> list[int]:
        """The k most likely windows not in ``exclude``, most likely first; with ``rng`` each log-probability
        gets Gumbel noise first, which makes the k a sample without replacement."""
        with torch.no_grad():
            keys = self.log_probs().numpy().astype(np.float64)
        if rng is not None:
            keys = keys + rng.gumbel(size=keys.shape)
        if exclude:
            keys[list(exclude)] = -np.inf
        order = np.argsort(-keys, kind="stable")
        return [int(i) for i in order[:k] if np.isfinite(keys[i])]

    def peaks_then_top(self, k: int, exclude: set[int] = frozenset()) -> list[int]:
        """The finest peak windows, strongest peak first, then the most likely other windows: k in all.

        The saliency map's strongest peaks are where small evidence usually is, and a window centred
        on one reads it best, so the first group reads them before any grid window (docs/design.md)."""
        first = [w for w in self.peak_windows if w not in exclude][:k]
        return first + self.top(k - len(first), set(exclude) | set(first))

    def jittered(self, w: int, rng: np.random.Generator) -> Box:
        b = self.windows[w]
        dx, dy = rng.normal(0, self.cfg.jitter, 2) * np.array([b.width, b.height])
        x0 = float(np.clip(b.x0 + dx, 0, self.width - b.width))
        y0 = float(np.clip(b.y0 + dy, 0, self.height - b.height))
        return Box(x0, y0, x0 + b.width, y0 + b.height)

    def update(self, idx: list[int], advantages: np.ndarray) -> None:
        """Clipped policy gradient with a KL pull toward the initial policy.

        ratio_i = pi(a_i) / pi_old(a_i)
        L = -mean_i min(ratio_i * A_i, clip(ratio_i, 1-eps, 1+eps) * A_i) + beta * KL(pi || pi_0)
        pi_0 = softmax(initial logits + the current zoom bonus): the pull is toward the prior, not away
        from the windows inside the best view that ``focus`` favoured since.

        Args:
            idx: the group's window indices (into ``windows``), length G.
            advantages: float array of shape [G], the group-relative advantages (r - mean) / std.
        """
        cfg = self.cfg
        a = torch.tensor(idx)
        adv = torch.tensor(advantages, dtype=torch.float32)
        with torch.no_grad():
            old = self.log_probs()[a]
            logp0 = torch.log_softmax(self.init_logits + self.bias, -1)
        for _ in range(cfg.inner_epochs):
            logp = self.log_probs()
            ratio = (logp[a] - old).exp()
            surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv)
            kl = (logp.exp() * (logp - logp0)).sum()
            loss = -surrogate.mean() + cfg.kl_weight * kl
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()

    def focus(self, best: Box, best_scale: int) -> None:
        """Adaptive zoom: favour finer windows centred inside the best spotlight so far."""
        self.bias.zero_()
        for w, b in enumerate(self.windows):
            cx, cy = b.centre
            if self.scale_idx[w] > best_scale and best.x0 <= cx <= best.x1 and best.y0 <= cy <= best.y1:
                self.bias[w] = self.cfg.zoom_bonus


def coarse_windows(width: int, height: int, side_frac: float) -> list[list[Box]]:
    """The probe's groups, read in turn: the four corner squares of ``side_frac`` x the short side,
    then the centre square alone (a five-crop).

    A whole image that is almost clear usually holds large evidence (a big glyph, a whole
    defect), which the policy's fine windows cut into pieces; one of these 1.5x zooms usually
    holds it whole. They cost 4-5 passes and need no policy, where fine windows can spend tens of
    passes reading a large glyph piece by piece. The centre square is for evidence across the
    corners' seams (a large crack mid-scene), read only when no corner is clear.
    """
    side = side_frac * min(width, height)
    corners = [Box(x, y, x + side, y + side) for y in (0, height - side) for x in (0, width - side)]
    cx, cy = (width - side) / 2, (height - side) / 2
    return [corners, [Box(cx, cy, cx + side, cy + side)]]


def glance_window(image: Image.Image, side_frac: float, sal: np.ndarray) -> Box:
    """The glance: one square of ``side_frac`` x the short side on the saliency centroid, inside the image.

    Large evidence the whole image leaves unsure is usually read at a 1.25x closer look at it, in
    one pass where the probe's corners cost four and the search tens; tiny evidence is not legible
    1.25x closer, so the glance changes no answer there (docs/experiments/).
    """
    w, h = image.size
    cx, cy = saliency_centroid(sal, image.size)
    return Box.square(cx, cy, side_frac * min(w, h)).shifted_inside(w, h)


def answer_window(boxes: list[Box], rewards: list[float], top: int, width: int, height: int) -> Box:
    """Where an open answer is read (source pixels): the square of the median side of the best-rewarded
    window and those of the ``top`` best that overlap it, centred on their reward-weighted mean centre,
    inside the image. Windows whose reward is not above 0 (the whole image's) have no say, nor have
    windows elsewhere: the mean of windows spread over the page would fall where none of them looked.
    A field's neighbours earn rewards within noise of one another, so the single best often cuts the
    field; where it and its overlapping runners-up agree centres on it (docs/experiments/agreed-answers.md).

    Raises:
        ValueError: ``top`` below 1, as many rewards as boxes not given, a reward not finite, or no
            window with a positive reward.
    """
    r = np.asarray(rewards, dtype=float)
    if top < 1 or len(r) != len(boxes) or not np.isfinite(r).all():
        raise ValueError(f"answer_window needs top >= 1 and one finite reward per box; got top={top}, "
                         f"{len(boxes)} boxes, {len(r)} rewards")
    ranked = [int(i) for i in np.argsort(-r, kind="stable")[:top] if r[i] > 0]
    if not ranked:
        raise ValueError("no window has a positive reward: the answer stays the whole image's")
    best = boxes[ranked[0]]
    order = [i for i in ranked if boxes[i].intersection(best) > 0]  # the best itself first
    weights = r[order]
    centres = np.array([boxes[i].centre for i in order])
    cx, cy = (centres * weights[:, None]).sum(0) / weights.sum()  # sum_i r_i c_i / sum_i r_i
    side = float(np.median([max(boxes[i].width, boxes[i].height) for i in order]))
    return Box.square(cx, cy, min(side, width, height)).shifted_inside(width, height)


def answer_windows(box: Box, cfg: PolicyConfig, width: int, height: int, rescaled: bool = False) -> list[Box]:
    """The windows an open answer is read off (source pixels): ``box`` shifted by each of a g x g grid of
    offsets in [-answer_shift, answer_shift] window sides (g = ``answer_grid``, odd), ``box`` itself first,
    then the nearest offsets; each moved back inside the image where it fits, so copies at an edge may
    coincide. With ``rescaled`` (and ``answer_rescale`` > 0) each copy is followed by squares about its
    centre at 1 - and 1 + ``answer_rescale`` of its side (at most the image's short side): 3 g^2 windows.
    A small reader's argmax over a code's characters flips under a shift of a pixel or two, or a tenth
    of the scale; decoding from all copies at once keeps what they agree on
    (docs/experiments/agreed-answers.md)."""
    g, s = cfg.answer_grid, cfg.answer_shift
    steps = np.linspace(-s, s, g) if g > 1 else np.zeros(1)
    offsets = sorted(((dx, dy) for dx in steps for dy in steps), key=lambda o: (abs(o[0]) + abs(o[1]), o))
    cx, cy = box.centre
    shifted = [Box(cx - box.width / 2 + dx * box.width, cy - box.height / 2 + dy * box.height,
                   cx + box.width / 2 + dx * box.width, cy + box.height / 2 + dy * box.height).shifted_inside(width, height)
               for dx, dy in offsets]
    if not (rescaled and cfg.answer_rescale > 0):
        return shifted
    z = cfg.answer_rescale
    return [c for w in shifted for c in
            (w, *(Box.square(*w.centre, min(w.width * f, width, height)).shifted_inside(width, height)
                  for f in (1 - z, 1 + z)))]


CENTRING_TOP = 0.03  # answer_centred: the share of a region's pixels, the most salient, that place the window


def answer_centred(box: Box, sal: np.ndarray, reach: float, width: int, height: int, top: float = CENTRING_TOP) -> Box:
    """``box`` moved, its size kept, so that it centres on the saliency-weighted mean of the ``top`` share
    (3%) of the most salient pixels in a square of ``reach`` times its side about its centre (``saliency.salient_centre``),
    inside the image; ``box`` itself when ``reach`` is 0 or nothing there is salient. The agreed window
    has about the field's side but sits a fifth of it off (median IoU 0.67 with the oracle's
    close-up); the field's outline and glyphs are the most salient pixels near it, and centring on
    them holds the field whole (median IoU about 0.9 on val: docs/experiments/agreed-answers.md#centring).

    Raises:
        ValueError: ``reach`` not 0 or in [1, 4], or ``top`` not in (0, 1].
    """
    if not (reach == 0 or 1 <= reach <= 4):
        raise ValueError(f"reach must be 0 or 1-4 window sides, got {reach}")
    if reach == 0:
        return box
    cx, cy = box.centre
    half = reach * max(box.width, box.height) / 2
    centre = salient_centre(sal, (width, height), (cx - half, cy - half, cx + half, cy + half), top)
    if centre is None:
        return box
    w, h = box.width, box.height
    return Box(centre[0] - w / 2, centre[1] - h / 2, centre[0] + w / 2, centre[1] + h / 2).shifted_inside(width, height)


def answer_neighbours(box: Box, step: float, width: int, height: int) -> list[Box]:
    """``box`` and its neighbours moved by ``step`` of its width right and left and of its height down and
    up (source pixels), each moved back inside the image where it fits; a neighbour that lands on a window
    already listed is dropped, as it would read the same. 1-5 windows, ``box`` first. The agreed window
    centres on the field only roughly (median IoU 0.67 on open val items with the oracle's close-up); one of its
    neighbours often holds the field whole, and the surest of their joint readings reads more codes than
    the agreed window's alone (docs/experiments/agreed-answers.md#which-neighbour).

    Raises:
        ValueError: ``step`` not in [0, 0.5].
    """
    if not 0 <= step <= 0.5:
        raise ValueError(f"step must be in [0, 0.5] window sides, got {step}")
    out = [box]
    for dx, dy in ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step)) if step else ():
        moved = box.moved(dx, dy).shifted_inside(width, height)
        if all(moved.as_list() != b.as_list() for b in out):
            out.append(moved)
    return out


STANDOUT_MIN_VIEWS = 8  # standout: fewer rewards give no estimate of their spread
STANDOUT_CAP = 1e6      # standout: "infinitely far out", kept finite so that a result stays JSON


def standout(rewards: list[float]) -> float:
    """How far the best reward stands out of the rewards of all views that may answer: the robust z-score
    (r_max - median r) / (1.4826 MAD r), MAD the median absolute deviation (1.4826 MAD estimates a normal
    spread), at most ``STANDOUT_CAP``; the cap where the others do not vary (MAD 0) and the best is above
    them, and for fewer than ``STANDOUT_MIN_VIEWS`` rewards (too few to tell noise); 0 where all are equal.

    A search reads some 65 views and keeps the best. Where no view holds more of the evidence than
    the whole image (a field larger than any window), every view's clarity is the whole image's reading
    slightly perturbed, and the best of 65 perturbations is positive by chance alone (robust z
    0.8-30 on SpotBench's large and mixed codes); a view that does hold it reads it clearer than all the rest
    (z in the hundreds to thousands on small codes; docs/experiments/agreed-answers.md#standout)."""
    r = np.asarray(rewards, dtype=float)
    if len(r) < STANDOUT_MIN_VIEWS:
        return STANDOUT_CAP
    med = float(np.median(r))
    mad = 1.4826 * float(np.median(np.abs(r - med)))
    top = float(r.max())
    if mad == 0:
        return STANDOUT_CAP if top > med else 0.0
    return min((top - med) / mad, STANDOUT_CAP)


def answer_confidence(token_logp: list[float]) -> float:
    """An open answer's confidence: the p of its least sure token, exp(min_t log p_t) (0 for an empty
    answer: no token was read). Every character of a code must be right, so the answer is at most as
    sure as its weakest token; it ranks right answers above wrong ones better than their product,
    p(answer) (AUROC for exact match, SpotBench open items: 0.67-0.75 against 0.56-0.69 on val seeds
    0-1 and test seeds 0 and 7, docs/experiments/open-confidence.md; "Max(-log p)" in SelfCheckGPT,
    arXiv 2303.08896). A one-token answer's confidence is its p, as a closed set's."""
    return float(np.exp(min(token_logp))) if len(token_logp) else 0.0


def mean_token_logp(logprobs: list[float]) -> float:
    """How sure a generated answer is per token: mean_t log p(y_t) (nats); -inf for an empty answer, which
    reads nothing and so loses to any reading."""
    return float(np.mean(logprobs)) if len(logprobs) else -math.inf


def surest_reading(logprobs: list[list[float]]) -> int:
    """Index of the reading with the highest ``mean_token_logp`` among readings given as their per-token
    log p (nats); ties go to the earliest (the agreed window's, read first)."""
    return max(range(len(logprobs)), key=lambda i: mean_token_logp(logprobs[i]))


def checked_relevance(relevance) -> np.ndarray | None:
    """An adapter's relevance map as a float array [rows, cols], or None where it gave none.

    Raises:
        ValueError: a map that is not 2-D, holds a NaN, an infinity or a negative value, or sums to 0 (a
            policy built on it would search one corner, or nowhere).
    """
    if relevance is None:
        return None
    if isinstance(relevance, torch.Tensor):  # any dtype or device, grad or not (bfloat16 has no numpy twin)
        relevance = relevance.detach().cpu()
        relevance = (relevance if relevance.is_complex() else relevance.float()).numpy()
    if isinstance(relevance, np.ma.MaskedArray):  # a masked cell holds no relevance
        relevance = relevance.filled(0)
    try:
        rel = np.asarray(relevance)
        real = not np.iscomplexobj(rel)  # a cast to float would drop the imaginary part without a word
        rel = rel.astype(np.float64) if real else rel
    except (TypeError, ValueError) as err:  # a ragged nested list, text
        raise ValueError(f"the adapter's relevance map must be a 2-D array of numbers, got {type(relevance).__name__} "
                         f"numpy cannot read as one ({str(err).splitlines()[0]})") from None
    if not real:
        raise ValueError("the adapter's relevance map must be real numbers, got complex ones")
    why = ("not 2-D" if rel.ndim != 2 else "empty" if rel.size == 0 else "holding NaN or infinity"
           if not np.isfinite(rel).all() else "holding negative values" if (rel < 0).any()
           else "summing to 0" if rel.sum() <= 0 else None)
    if why:
        raise ValueError(f"the adapter's relevance map must be a 2-D array of finite non-negative numbers with a "
                         f"positive sum (or None: no map), got one of shape {rel.shape} {why}")
    return rel


def relevance_to_cells(relevance: np.ndarray, renderer: ViewRenderer, grid: int) -> np.ndarray:
    """Sample a token-grid relevance map (over the letterboxed global view) at the policy's cells."""
    rows, cols = relevance.shape
    w, h = renderer.image.size
    _, s, ox, oy = letterbox_transform(w, h, renderer.size)
    cells = np.zeros((grid, grid))
    for j in range(grid):
        for i in range(grid):
            vx, vy = ((i + 0.5) * w / grid) * s + ox, ((j + 0.5) * h / grid) * s + oy
            r = min(rows - 1, int(vy / renderer.size * rows))
            c = min(cols - 1, int(vx / renderer.size * cols))
            cells[j, i] = relevance[r, c]
    return cells + 1e-6


# ============================================================================ the loop
@dataclass
class SpotResult:
    """What one question about one image came to: the answer, how sure the model is of it, where it was read.

    Boxes are ``[x0, y0, x1, y1]`` in pixels of the original image as a viewer shows it (EXIF orientation
    applied), whole pixels, x0 < x1 and y0 < y1. Entropies are in nats. ``to_dict`` gives the JSON record,
    the fields named in ``RECORD_KEYS``, which ``spote ask --json`` prints.

    Attributes:
        answer: the choice picked (closed set), or the text the model wrote (open ended; ``""`` where it
            ended the answer at once: nothing was read).
        confidence: how sure the model is of ``answer``, 0-1, to 6 significant digits. Closed set: its
            probability among the choices on the view it was read on (the top of ``distribution``). Open
            ended: the least of ``token_confidences`` (``answer_confidence``); 0 only for an empty answer.
        distribution: closed set: ``{choice: probability}`` on the view the answer was read on (6 decimals);
            None for an open answer.
        entropy_trace: the answer's entropy (nats) on the whole image first, then on the best view so far
            after each group of views read (grid, random: the whole image and their best view; zoomeye: the
            whole image, then the best node after each node expanded; ``api``, ``vicrop`` and the oracle: the
            one view they read). Closed set: the entropy of the distribution over the
            choices; open ended: the mean per-token entropy of the whole image's answer, read on each view.
        reward_trace: the best reward (nats: the entropy a view gains over the whole image, weighted, less the anchor
            penalty; ``reward``) after each group read; empty for the peers, which have no reward.
        anchors: closed set: ``[choice]``, the whole image's answer where it is almost sure of it
            (``anchor_min_prob``), else ``[]``; open ended: ``[{"position": t, "token": text}]``, the whole
            image's answer tokens below ``anchor_epsilon`` nats, which a view is penalised for unsettling.
        boxes: every window read, in reading order (the whole image is not listed).
        chosen_boxes: the best-rewarded window of each group read (the peers: ``[evidence_box]``, or ``[]``).
        forward_passes: model passes the answer cost, everything included: one per sequence run through the
            model (an open answer decoded jointly from n copies of a window costs n).
        seconds: wall-clock time of the answer, model load excluded.
        mode: how views were rendered: ``highlight``, ``zoom`` or ``zoom+context`` (the whole image beside
            the zoom).
        policy: the ``PolicyConfig`` the search ran with, as a dict (for ``naive_entropy`` and ``scaffold``
            the configuration they derive from the one given); its ``use_relevance`` says whether the model's
            attention was read (``ran_with``).
        box_steps, box_rewards, box_entropies: for each of ``boxes``: the group that read it, its reward and
            its answer entropy (nats); spote's loop only (empty for the peers).
        method: what answered: ``spote`` or a peer (``spote.baselines.METHODS``).
        evidence_box: the window the answer was read on; for an open answer after a search, where the best
            views agree, centred on the salient thing there. None where the whole image answered (nothing
            searched, no view beat it, or an open search's best did not stand out: ``reward_standout`` below
            ``standout_z``), and for an empty open answer.
        token_confidences: open ended: the probability of each token of ``answer``, in generation order, each
            given the tokens before it, on the view(s) the answer was generated from (decoded jointly from
            several copies: the renormalised mean of log p over them, a geometric mean of p); their least is ``confidence``,
            their product the answer's probability. ``[]`` for an
            empty answer, None for a closed set.
        answer_token_ids: open ended: the answer's token ids in the model's vocabulary, one per
            ``token_confidences``; None for a closed set.
        answer_from_neighbour: open ended, after a search: True where a neighbour of the agreed window
            answered (``answer_step`` > 0), False where the agreed window did; None otherwise (closed set,
            the whole image, a clear window).
        answer_readings: open ended, after a search: each place read for the answer (the centred agreed
            window first, then its neighbours with ``answer_step`` > 0; the clear window alone where the
            search stopped on one) as (window in pixels, unrounded, since the reading changes under a
            sub-pixel shift; text; per-token log p in nats); None otherwise.
        reward_standout: open ended, after a search that beat the whole image: how far its best reward
            stands out of those of the views that may answer, a robust z (``standout``; at most 1e6); None
            otherwise (closed set, which the rule leaves alone; no view beat the whole image; no search).
        answer_cut_off: open ended: True where the model was still writing when the answer reached the
            token cap (``spote.adapters.base.MAX_NEW_TOKENS``, 32 tokens): the answer may be incomplete;
            False where the model ended it; None for a closed set, or where the adapter cannot tell (an
            endpoint whose server gives no ``finish_reason``).
    """

    answer: str
    confidence: float
    distribution: dict | None
    entropy_trace: list[float]
    reward_trace: list[float]
    anchors: list
    boxes: list[list[int]]
    chosen_boxes: list[list[int]]
    forward_passes: int
    seconds: float
    mode: str
    policy: dict
    # kept for pictures and the benchmark, not part of the JSON record
    box_steps: list[int] = field(default_factory=list, repr=False)
    box_rewards: list[float] = field(default_factory=list, repr=False)
    box_entropies: list[float] = field(default_factory=list, repr=False)
    method: str = "spote"
    evidence_box: list[int] | None = None
    token_confidences: list[float] | None = None
    answer_token_ids: list[int] | None = field(default=None, repr=False)
    answer_from_neighbour: bool | None = field(default=None, repr=False)
    answer_readings: list[tuple[list[float], str, list[float]]] | None = field(default=None, repr=False)
    reward_standout: float | None = field(default=None, repr=False)
    answer_cut_off: bool | None = field(default=None, repr=False)

    RECORD_KEYS = ("method", "answer", "confidence", "distribution", "entropy_trace", "reward_trace", "anchors",
                   "boxes", "chosen_boxes", "evidence_box", "forward_passes", "seconds", "mode", "policy",
                   "token_confidences", "answer_cut_off", "reward_standout")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.RECORD_KEYS}


def exit_threshold(cfg: PolicyConfig, n_choices: int | None) -> float:
    """tau in nats. 0.35 nats is half a yes/no's maximum entropy but 0.15 of a digit's (ln 10), so a
    per-ln(K) threshold asks the same certainty of every closed answer set."""
    if n_choices and n_choices > 1 and cfg.exit_entropy_per_ln_k is not None:
        return cfg.exit_entropy_per_ln_k * math.log(n_choices)
    return cfg.exit_entropy


def in_probe_band(cfg: PolicyConfig, entropy: float, tau: float) -> bool:
    """Almost clear: above the exit but within ``probe_below`` x of it, so the coarse probe reads first."""
    return bool(cfg.probe_side) and tau < entropy <= cfg.probe_below * tau


def view_mode(cfg: PolicyConfig, adapter) -> str:
    """The rendering a run uses: ``zoom+context`` needs a model that takes two images, else ``zoom``."""
    return cfg.mode if cfg.mode != "zoom+context" or adapter.max_images >= 2 else "zoom"


def significant(x: float, digits: int = 6) -> float:
    """``x`` to ``digits`` significant digits: a probability of 1e-9 stays 1e-9, where rounding to that many
    decimal places would make it 0, the confidence of an empty answer."""
    return float(f"{x:.{digits}g}")


def ran_with(cfg: PolicyConfig, read_attention: bool) -> dict:
    """The policy a result records: ``cfg``'s fields, ``use_relevance`` whether the search read the model's
    attention (False in black-box mode: an endpoint, ``load_adapter(relevance=False)``, a model without
    eager attention; for a search whose budget left no room for the relevance pass; for a method that
    reads none: grid, random, zoomeye, the oracle)."""
    return {**asdict(cfg), "use_relevance": bool(read_attention)}


def _distribution(choices, logp: torch.Tensor) -> dict:
    return {c: round(float(p), 6) for c, p in zip(choices, logp.exp())}


COARSE_SCALE = -1  # the scale of a view outside the policy's windows (the glance, the probe): any policy window is finer


@dataclass(frozen=True)
class AnswerPlan:
    """How an open answer is read after a search: ``copies`` views decoded jointly per place (shifted, and
    with ``rescaled`` also rescaled, copies of its window), at ``places`` places (the agreed window, then
    its neighbours). ``copies * places`` passes are kept aside before the search starts."""

    copies: int
    places: int
    rescaled: bool


def answer_plan(cfg: PolicyConfig, adapter) -> AnswerPlan:
    """The ``AnswerPlan`` a budget pays for. Joint decoding of g x g shifted copies takes at most a third of
    the budget, so that a small budget still searches (an endpoint decodes each request alone: 1 copy);
    the rescaled copies (x 3) are for the window read alone, where they also fit in a third; the
    neighbours (``answer_step``), read jointly too, as many as half the budget pays for, at most 5."""
    joint = getattr(adapter, "joint_decoding", False) and cfg.answer_grid ** 2 <= cfg.budget // 3
    rescaled = (joint and cfg.answer_grid > 1 and cfg.answer_rescale > 0 and cfg.answer_step == 0
                and 3 * cfg.answer_grid ** 2 <= cfg.budget // 3)
    copies = (3 if rescaled else 1) * cfg.answer_grid ** 2 if joint else 1
    places = min(5, max(1, (cfg.budget // 2) // copies)) if copies > 1 and cfg.answer_step > 0 else 1
    return AnswerPlan(copies, places, bool(rescaled))


def spote(adapter, image: Image.Image, question: str, choices=None, cfg: PolicyConfig = PolicyConfig(),
          method: str = "spote") -> SpotResult:
    """Answer ``question`` about ``image`` with a per-instance GRPO-tuned spotlight. Its draws come from its own
    generator seeded with ``cfg.seed``: torch's global random state is neither used nor changed (a caller's
    draws, another thread's search, go on as they were).

    Args:
        adapter: a loaded model (``spote.loading.load_adapter``); its ``forward_passes`` counts the cost.
        image: any size (pixels), any PIL mode (read as ``spote.images.to_rgb`` makes it 8-bit RGB: 16-bit and
            float pixels stretched, alpha over white, as ``spote.answer`` reads them); views are rendered from it
            at full resolution.
        question: the text asked; ``choices``: the closed answer set (stripped strings), or None (open ended).
        cfg: the policy; ``method``: the name the result records (``naive_entropy``, ``scaffold`` run here too).

    Returns:
        SpotResult: the answer, its confidence, traces (nats), boxes (pixels) and cost.

    Raises:
        ValueError: the model's scores are NaN or infinite on the whole image; a hand-written adapter's
            ``choice_logprobs`` of another shape or not normalised, or its attention map not a finite grid.
        spote.adapters.base.PromptTooLong, spote.adapters.base.UnreadableText: the question as asked.
        spote.adapters.base.ViewBatchTooLarge: one view set does not fit in accelerator memory.
        spote.adapters.endpoint.EndpointError: an endpoint request failed after its retries.
    """
    t0 = time.perf_counter()
    image = to_rgb(image)  # the saliency map and the renderer read 8-bit RGB (a 16-bit scan stretched, not clipped)
    passes0 = adapter.forward_passes
    rng = np.random.default_rng(cfg.seed)
    relevance_read = False  # whether the model's attention was read (the result records it)
    renderer = ViewRenderer(image, adapter.input_size)
    reader = Reader(adapter, question, choices)
    mode = view_mode(cfg, adapter)
    plan = answer_plan(cfg, adapter)  # open ended: the passes the answer's reading keeps aside

    # 1. the whole image: answer, entropy, anchors; clear (H_base <= tau): done
    base, base_answer = reader.baseline([renderer.global_view])
    anchors = find_anchors(base, cfg)
    entropy_trace, reward_trace = [base.entropy], []
    boxes, chosen, box_steps, box_rewards, box_entropies = [], [], [], [], []
    candidates: list[tuple[Box, float]] = []  # every window that may answer, with its reward
    best = {"reward": 0.0, "reading": base, "box": None, "scale": COARSE_SCALE}
    used = lambda: adapter.forward_passes - passes0  # noqa: E731

    def record(group: list[Box], readings: list[Reading], group_no: int, scale_of, keep: bool = True) -> np.ndarray:
        """Score one group against the baseline, log it, keep the best view (unless ``keep`` is off:
        logged and paid for, but no candidate answer and no say in the search); the group's rewards."""
        rewards = np.array([reward(base, r, anchors, cfg) for r in readings])
        for b, r, rd in zip(group, rewards, readings):
            boxes.append(b.as_list())
            box_steps.append(group_no)
            box_rewards.append(round(float(r), 5))
            if keep:
                candidates.append((b, float(r)))
            box_entropies.append(round(rd.entropy, 5))
        k = int(rewards.argmax())
        chosen.append(group[k].as_list())
        if keep and rewards[k] > best["reward"] + 1e-6:
            best.update(reward=float(rewards[k]), reading=readings[k], box=group[k], scale=scale_of(k))
        entropy_trace.append(round(best["reading"].entropy, 5))
        reward_trace.append(round(best["reward"], 5))
        return rewards

    tau = exit_threshold(cfg, None if choices is None else len(choices))
    # a spotlight is clear when confident, and not by breaking an anchor (that scores below the whole image)
    clear = lambda: best["box"] is not None and best["reading"].entropy <= tau  # noqa: E731
    # closed set: the highest p each choice has had on any view read so far (the glance's included)
    best_p = torch.zeros(len(choices)) if choices is not None else None
    base_top = None if choices is None else int(base.logp.argmax())

    def read(group: list[Box]) -> list[Reading]:
        """One batched call over ``group``'s views (a forward pass each); notes what each choice was given."""
        readings = reader.read([renderer.render(b, mode) for b in group])
        if best_p is not None:
            for r in readings:
                torch.maximum(best_p, r.logp.exp(), out=best_p)
        return readings

    def settled() -> bool:
        """Nothing seen argues against the whole image with conviction: after ``settle_after`` passes,
        which read the priors' best places first, no view gave any other answer p >= ``settle_p``
        (closed sets only). Evidence that is there is usually found in those first passes (the first
        group reads the saliency peaks), so a search that has found nothing by then mostly proves an
        absence. The run then answers from its best view so far, which may still lean elsewhere."""
        if best_p is None or not cfg.settle_after or used() < cfg.settle_after:
            return False
        others = torch.cat([best_p[:base_top], best_p[base_top + 1:]])
        return bool(others.numel() == 0 or others.max() < cfg.settle_p)
    sal_map = None
    if base.entropy > tau and cfg.budget > 1:
        cost = reader.cost_per_view()
        reserve = 0 if choices is not None else plan.places * plan.copies  # open ended: the answer's generations, kept aside
        room = lambda: (cfg.budget - used() - reserve) // cost  # noqa: E731 candidates the budget still pays for
        group_no = 0  # every group read, glance and probe included (SpotResult.box_steps)
        sal_map = saliency_map(image, cfg.saliency_size) if cfg.glance_side or cfg.saliency_weight > 0 or cfg.saliency_peaks else None
        # 2. a glance: one closer look at the salient middle settles most large evidence. It counts
        # only if clear: a square of most of the image says nothing about where small evidence is,
        # so an unclear glance must not steer the search (which then runs as it would without it)
        if cfg.glance_side and room() >= 1:
            look = glance_window(image, cfg.glance_side, sal_map)
            glance = read([look])
            record([look], glance, group_no, lambda k: COARSE_SCALE, keep=glance[0].entropy <= tau)
            group_no += 1
        # 3. almost clear: coarse views first, the four corners, then the centre if no corner is clear;
        # large evidence often needs nothing more
        if in_probe_band(cfg, base.entropy, tau):
            for group in coarse_windows(*image.size, cfg.probe_side):
                if clear() or room() < len(group):
                    break
                record(group, read(group), group_no, lambda k: COARSE_SCALE)
                group_no += 1
        # 4. the spotlight policy, its logits from the priors
        if not clear() and not settled():
            relevance_cells = None
            if cfg.use_relevance and adapter.supports_relevance and cfg.budget - used() - reserve >= 2 + 2 * cost:
                rel = checked_relevance(adapter.relevance([renderer.global_view], question, choices))
                if rel is not None:  # None: the adapter read no attention this time (black box)
                    relevance_cells = relevance_to_cells(rel, renderer, cfg.grid)
                    relevance_read = True
            saliency = saliency_cells(image, cfg.grid, sal_map) if cfg.saliency_weight > 0 else None
            peaks = saliency_peaks(sal_map, image.size, cfg.saliency_peaks) if sal_map is not None else []
            policy = SpotlightPolicy(*image.size, adapter.input_size, cfg, relevance_cells, saliency, peaks)
            if best["box"] is not None:  # the probe found a clearer coarse view: look inside it
                policy.focus(best["box"], best["scale"])
            evaluated: set[int] = set()
            stale = 0

            def read_until_clear(group: list[Box]) -> list[Reading]:
                """The group's readings: one batched call, or ``read_chunk`` views at a time, ending at
                the first chunk holding a view that is clear and beats the best so far."""
                chunk = cfg.read_chunk or len(group)
                readings: list[Reading] = []
                for s in range(0, len(group), chunk):
                    part = read(group[s:s + chunk])
                    readings += part
                    if any(r.entropy <= tau and reward(base, r, anchors, cfg) > best["reward"] + 1e-6 for r in part):
                        break
                    if settled():
                        break
                return readings
            # 5. GRPO steps: read a group, reward it, update the policy; stop when clear, settled or stale
            for grpo_step in range(cfg.steps):
                g = min((cfg.first_group or cfg.group_size) if grpo_step == 0 else cfg.group_size, room())
                if g < 2:
                    break
                peaks_first = cfg.peaks_first and grpo_step == 0 and cfg.greedy_steps > 0  # the greedy first group
                if grpo_step < cfg.greedy_steps:
                    idx = policy.peaks_then_top(g, evaluated) if peaks_first else policy.top(g, evaluated)
                else:
                    idx = policy.sample(g, rng, evaluated)
                if len(idx) < 2:
                    break
                evaluated.update(idx)
                unjittered = set(policy.peak_windows) if peaks_first else set()  # a peak window is centred by design
                group = [policy.windows[w] if w in unjittered else policy.jittered(w, rng) for w in idx]
                readings = read_until_clear(group)
                if len(readings) < len(group):
                    idx, group = idx[:len(readings)], group[:len(readings)]
                before = best["reward"]
                rewards = record(group, readings, group_no, lambda k: int(policy.scale_idx[idx[k]]))
                group_no += 1
                advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-6)  # A_i = (r_i - mean) / std
                policy.update(idx, advantages)
                stale = 0 if best["reward"] > before else stale + 1
                if best["box"] is not None:
                    policy.focus(best["box"], best["scale"])
                if clear() or settled() or stale >= cfg.plateau_patience:
                    break

    # 6. answer from the best spotlight (the whole image if none beat it); an open answer is generated anew
    # where the best windows agree, centred on the salient thing there (and at that window's neighbours,
    # with answer_step), each jointly from shifted and rescaled copies of it; the reading surest per token answers
    final = best["reading"]
    evidence = best["box"]
    token_logp = None  # open ended: log p of each token of the answer given
    cut_off = None  # open ended: did the answer's generation stop at the token cap?
    from_neighbour = None  # open ended, after a search: did a neighbour of the agreed window answer?
    answer_ids = None
    all_readings = None  # open ended, after a search: every place's reading
    # open ended: an unclear search whose best view does not stand out of the views that may answer found nothing
    # the whole image lacks (its best is chance among perturbed readings): the whole image answers. An unclear
    # glance is no candidate (it read most of the image), so neither its reward nor its place in the spread counts
    z = standout([r for _, r in candidates]) if choices is None and best["box"] is not None else None
    if z is not None and not clear() and z < cfg.standout_z:
        evidence = None
    if choices is not None:
        answer = choices[int(final.logp.argmax())]
        confidence = float(final.logp.exp().max())
        distribution = _distribution(choices, final.logp)
    elif evidence is None:
        answer_ids = reader.answer_ids  # [] for an empty answer, whose scored span is the end token
        token_logp = base.span_logp.tolist() if answer_ids else []
        answer, confidence, distribution = base_answer, answer_confidence(token_logp), None
        cut_off = reader.cut_off
    else:
        if clear():  # the search stopped on a legible window: it answers there as it is, in one generation
            places, n_views = [evidence], 1
        else:
            agreed = answer_window([b for b, _ in candidates], [r for _, r in candidates], cfg.answer_top, *image.size)
            if cfg.answer_centring:
                sal_map = saliency_map(image, cfg.saliency_size) if sal_map is None else sal_map
                agreed = answer_centred(agreed, sal_map, cfg.answer_centring, *image.size)
            places, n_views = answer_neighbours(agreed, cfg.answer_step, *image.size)[:plan.places], plan.copies
        readings = []
        for place in places:
            views = [renderer.render(w, mode) for w in answer_windows(place, cfg, *image.size, plan.rescaled)[:n_views]]
            readings.append(adapter.generate_agreed(views, question) if len(views) > 1 else adapter.generate(views[0], question))
        k = surest_reading([r.logprobs for r in readings])
        all_readings = [([p.x0, p.y0, p.x1, p.y1], r.text, list(r.logprobs)) for p, r in zip(places, readings)]
        evidence, gen = places[k], readings[k]
        from_neighbour = None if clear() else k > 0
        answer, confidence, distribution = gen.text, answer_confidence(list(gen.logprobs)), None
        token_logp, answer_ids, cut_off = list(gen.logprobs), gen.token_ids, gen.cut_off
        if not answer:  # an empty answer read nothing: no box holds its evidence
            evidence = None
    return SpotResult(
        answer=answer, confidence=significant(confidence), distribution=distribution,
        entropy_trace=[round(float(h), 5) for h in entropy_trace], reward_trace=reward_trace,
        anchors=anchors.describe(choices, [adapter.tokenizer.decode([t]) for t in (reader.span_ids or [])]),
        boxes=boxes, chosen_boxes=chosen, forward_passes=used(), seconds=round(time.perf_counter() - t0, 4),
        mode=mode, policy=ran_with(cfg, relevance_read), box_steps=box_steps, box_rewards=box_rewards, box_entropies=box_entropies,
        method=method, evidence_box=evidence.as_list() if evidence is not None else None,
        token_confidences=None if token_logp is None else [math.exp(lp) for lp in token_logp],
        answer_token_ids=answer_ids, answer_from_neighbour=from_neighbour, answer_readings=all_readings,
        reward_standout=None if z is None else round(z, 3), answer_cut_off=cut_off,
    )


def naive_entropy_config(cfg: PolicyConfig) -> PolicyConfig:
    """The paper's ablation: the same loop with the clarity reward only."""
    return replace(cfg, anchor_weight=0.0)
