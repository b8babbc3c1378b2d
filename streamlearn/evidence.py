"""Off-policy evidence: what a model's ranking would have earned on the slates another served.

The API fills a slate position by position, epsilon-greedy (:mod:`streamlearn.ranking`), and
logs the probability of each choice given the items above it. That makes every position a
logged contextual-bandit decision: the context is the request, the actions are the candidates
not yet placed, and the logged action's propensity is known. A target policy (a model ranking
greedily by its own scores) is evaluated on the same decisions: at each position, the candidate
it would have placed there among those the logged slate had left. The estimand of a slate is
the mean, over its positions, of the conversion that choice would have earned at that position,
given the logged items above it (as Li et al. 2011 replay a bandit's log); over slates, the
target's **conversion rate per shown slot**.

Per logged slate and target (:func:`slate_terms`), with ``r`` the conversion, ``p`` the logged
propensity, ``m`` whether the target's pick is the logged action and ``q`` the target's own
score of an item (the direct model):

* IPS: ``m r / p``; SNIPS: the same summed, over the sum of ``m / p`` (Swaminathan & Joachims
  2015: biased by O(1/n), far less variable);
* DR (Dudík et al. 2011): ``q(pick) + m (r - q(logged)) / p``, unbiased whatever ``q`` is, and
  less variable the better ``q`` predicts.

Each figure is a running mean of one bounded term per slate, and its bounds are a **confidence
sequence**: with probability ``1 - alpha`` they hold at every slate at once, so they may be
watched continuously and acted on whenever they say so (a fixed-n confidence interval looked at
after every slate would be crossed by chance sooner or later). :class:`Evidence` uses by default
Waudby-Smith et al.'s asymptotic sequence (2021), as tight as the terms' spread allows, and
:class:`ConfidenceSequence`, Waudby-Smith and Ramdas's predictable plug-in empirical Bernstein
sequence (2020, their Theorem 2), where a finite-sample guarantee is wanted and until a model's
spread means something. The latter needs the terms' range: IPS terms lie in ``[0, 1/p_min]`` and
DR terms in ``[-1/p_min, 1 + 1/p_min]``, with ``p_min = epsilon / candidates``; SNIPS's bounds
are then the ratio of its numerator's and denominator's sequences, each at ``alpha / 2`` (both
hold together with probability ``1 - alpha``). While a model keeps learning, its policy changes
from slate to slate; the asymptotic sequence then covers the average of the slates' true values
(the finite-sample one, that average weighted by its bets, :attr:`ConfidenceSequence.bet`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from streamlearn.clock import Clock
from streamlearn.policy import Policy

Estimator = Literal["ips", "snips", "dr"]
ESTIMATORS: tuple[Estimator, ...] = ("ips", "snips", "dr")


@dataclass(frozen=True)
class LoggedSlate:
    """One served slate as logged: every candidate of the request (in the request's order), the
    items shown in slot order with the propensity of each choice, and what each earned."""

    candidates: tuple[str, ...]
    shown: tuple[str, ...]
    propensities: tuple[float, ...]
    rewards: tuple[float, ...]


@dataclass(frozen=True)
class SlateTerms:
    ips: float
    weight: float  # SNIPS's denominator term: the mean of m / p
    dr: float


def greedy_pick(remaining: Sequence[str], scores: Mapping[str, float]) -> str:
    """The candidate a greedy ranking places next: the best score, the earlier on a tie (as
    :func:`streamlearn.ranking.choose_slate`'s stable sort)."""
    best = remaining[0]
    for item in remaining[1:]:
        if scores[item] > scores[best]:
            best = item
    return best


def slate_terms(slate: LoggedSlate, scores: Mapping[str, float]) -> SlateTerms:
    """The estimators' terms of one logged slate for a target ranking by ``scores`` (one per
    candidate, the target's predicted conversion).

    >>> logged = LoggedSlate(("a", "b", "c"), ("b", "a"), (0.1, 0.9), (1.0, 0.0))
    >>> t = slate_terms(logged, {"a": 0.2, "b": 0.5, "c": 0.1})
    >>> t.ips, t.weight, round(t.dr, 4)   # picks b (logged, p 0.1), then a (logged, p 0.9)
    (5.0, 5.555555555555555, 2.7389)
    """
    remaining = list(slate.candidates)
    ips = weight = dr = 0.0
    for logged, p, r in zip(slate.shown, slate.propensities, slate.rewards, strict=True):
        pick = greedy_pick(remaining, scores)
        if pick == logged:
            ips += r / p
            weight += 1.0 / p
            dr += scores[pick] + (r - scores[logged]) / p
        else:
            dr += scores[pick]
        remaining.remove(logged)
    k = len(slate.shown)
    return SlateTerms(ips / k, weight / k, dr / k)


@dataclass
class ConfidenceSequence:
    """Anytime-valid bounds on the mean of terms in ``[lo, hi]`` (see the module's docstring).

    >>> cs = ConfidenceSequence(0.0, 1.0)
    >>> for x in [0.0, 1.0] * 500:
    ...     cs.update(x)
    >>> cs.mean, [round(b, 3) for b in cs.bounds()]
    (0.5, [0.437, 0.561])
    """

    lo: float
    hi: float
    alpha: float = 0.05
    max_bet: float = 0.5  # WSR's c: the largest bet, 1/2 or 3/4 in their experiments
    n: int = 0
    total: float = 0.0
    bet: float = 0.0  # the last term's bet, lambda_t
    _mean_hat: float = 0.5  # WSR's regularized running mean and variance, on [0, 1]
    _var_hat: float = 0.25
    _sum_sq: float = 0.0
    _bets: float = 0.0
    _bet_x: float = 0.0
    _log_term: float = 0.0
    _penalty: float = 0.0

    def update(self, x: float) -> None:
        if not self.lo <= x <= self.hi:
            raise ValueError(f"term {x} outside [{self.lo}, {self.hi}]")
        y = (x - self.lo) / (self.hi - self.lo)
        t = self.n + 1
        log_term = math.log(2.0 / self.alpha)
        bet = min(math.sqrt(2 * log_term / (self._var_hat * t * math.log(1 + t))), self.max_bet)
        self.bet = bet
        self._penalty += 4 * (y - self._mean_hat) ** 2 * (-math.log(1 - bet) - bet) / 4
        self._bets += bet
        self._bet_x += bet * y
        self.n, self.total = t, self.total + x
        self._sum_sq += (y - self._mean_hat) ** 2
        self._mean_hat = (0.5 + (self.total - self.lo * t) / (self.hi - self.lo)) / (t + 1)
        self._var_hat = (0.25 + self._sum_sq) / (t + 1)
        self._log_term = log_term

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    def bounds(self) -> tuple[float, float]:
        """No running intersection: a learning model's value moves, and the bounds must follow
        it (an intersection is only valid for a fixed mean)."""
        if not self.n:
            return self.lo, self.hi
        centre = self._bet_x / self._bets
        half = (self._log_term + self._penalty) / self._bets
        scale = self.hi - self.lo
        return (
            self.lo + scale * max(centre - half, 0.0),
            self.lo + scale * min(centre + half, 1.0),
        )


def asymptotic_radius(n: int, alpha: float, target_n: int) -> float:
    """The half-width, per unit of standard deviation, of Waudby-Smith et al.'s Gaussian-mixture
    asymptotic confidence sequence (2021, Theorem 2.2), tuned to be tightest at ``target_n``.

    >>> round(asymptotic_radius(10_000, 0.05, 10_000) * 100, 3)   # vs 1.96 at a fixed n
    3.035
    """
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / target_n
    return math.sqrt(
        2 * (n * rho2 + 1) / (n * n * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha)
    )


@dataclass
class Evidence:
    """The running IPS, SNIPS and DR estimates of one target policy and their bounds, over
    slates whose propensities are at least ``min_propensity``.

    ``bounds``: ``asymptotic`` (Waudby-Smith et al. 2021: the estimate plus or minus its running
    standard deviation times :func:`asymptotic_radius`; SNIPS's by the delta method) is valid
    under continuous monitoring as the slates grow, and as tight as the terms' spread allows;
    until ``min_informative`` slates have earned an IPS term (a conversion the model would have
    placed where it was logged) the spread says nothing (a model that rarely agrees with the
    log has seen none of its rare, large terms yet), and the bounds are the finite-sample ones;
    ``empirical_bernstein`` (:class:`ConfidenceSequence`) holds at every sample size, but its
    width has a term in ``1 / min_propensity`` over the slates, which at 5% exploration over
    tens of candidates takes ten times more slates to separate two models."""

    min_propensity: float
    alpha: float = 0.05
    bounds: Literal["asymptotic", "empirical_bernstein"] = "asymptotic"
    target_slates: int = 10_000
    min_informative: int = 30
    n: int = 0
    informative: int = 0  # slates with an IPS term above 0
    # Sums of the terms, their squares and IPS x weight (SNIPS's delta method).
    sums: dict[str, float] = field(default_factory=lambda: _sums())
    sequences: dict[str, ConfidenceSequence] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sequences:
            top = 1.0 / self.min_propensity
            self.sequences = {
                "ips": ConfidenceSequence(0.0, top, self.alpha),
                "snips_numerator": ConfidenceSequence(0.0, top, self.alpha / 2),
                "weight": ConfidenceSequence(0.0, top, self.alpha / 2),
                "dr": ConfidenceSequence(-top, 1.0 + top, self.alpha),
            }

    def update(self, terms: SlateTerms) -> None:
        self.n += 1
        _add(self.sums, terms)
        self.informative += terms.ips > 0
        if self.bounds == "asymptotic" and self.informative > self.min_informative:
            return  # the finite-sample bounds are not read again: not worth their cost per slate
        self.sequences["ips"].update(terms.ips)
        self.sequences["snips_numerator"].update(terms.ips)
        self.sequences["weight"].update(terms.weight)
        self.sequences["dr"].update(terms.dr)

    def estimate(self, estimator: Estimator) -> tuple[float, float, float]:
        """(point estimate, lower bound, upper bound) of the conversion rate per shown slot."""
        n, s = self.n, self.sums
        if n < 2:
            return math.nan, 0.0, 1.0
        point = _point(s, n, estimator)
        if self.bounds == "empirical_bernstein" or self.informative < self.min_informative:
            return (point, *self._sequence_bounds(estimator))
        if not math.isfinite(point):  # SNIPS before any slate agreed with the log
            return point, 0.0, 1.0
        sd = _spread(s, n, estimator, point)
        half = sd * asymptotic_radius(n, self.alpha, self.target_slates)
        return point, max(point - half, 0.0), min(point + half, 1.0)

    def _sequence_bounds(self, estimator: Estimator) -> tuple[float, float]:
        if estimator != "snips":
            lower, upper = self.sequences[estimator].bounds()
            return max(lower, 0.0), min(upper, 1.0)
        num_lo, num_hi = self.sequences["snips_numerator"].bounds()
        w_lo, w_hi = self.sequences["weight"].bounds()
        lower = max(num_lo / w_hi, 0.0) if w_hi > 0 else 0.0
        upper = min(num_hi / w_lo, 1.0) if w_lo > 0 else 1.0
        return lower, upper

    def figures(self) -> dict[str, float]:
        """Slates, and each estimate with its bounds once it has one (JSON has no NaN)."""
        out: dict[str, float] = {"slates": float(self.n)}
        for name in ESTIMATORS:
            point, lower, upper = self.estimate(name)
            if math.isfinite(point):
                out |= {name: point, f"{name}_lower": lower, f"{name}_upper": upper}
        return out


def _point(s: Mapping[str, float], n: int, estimator: Estimator) -> float:
    if estimator == "snips":
        return s["ips"] / s["w"] if s["w"] else math.nan
    return s[estimator] / n


def _spread(s: Mapping[str, float], n: int, estimator: Estimator, point: float) -> float:
    """The standard deviation of one slate's term (SNIPS's by the delta method), from sums."""
    if estimator == "snips":
        # Delta method: the spread of ips - point * w, over the mean weight.
        var = (s["ips2"] - 2 * point * s["ipsw"] + point * point * s["w2"]) / n
        return math.sqrt(max(var, 0.0) * n / (n - 1)) / (s["w"] / n)
    mean = s[estimator] / n
    return math.sqrt(max(s[f"{estimator}2"] / n - mean * mean, 0.0) * n / (n - 1))


def _sums() -> dict[str, float]:
    return dict.fromkeys(("ips", "w", "dr", "ips2", "w2", "dr2", "ipsw"), 0.0)


def _add(s: dict[str, float], terms: SlateTerms, sign: float = 1.0) -> None:
    s["ips"] += sign * terms.ips
    s["w"] += sign * terms.weight
    s["dr"] += sign * terms.dr
    s["ips2"] += sign * terms.ips * terms.ips
    s["w2"] += sign * terms.weight * terms.weight
    s["dr2"] += sign * terms.dr * terms.dr
    s["ipsw"] += sign * terms.ips * terms.weight


@dataclass
class WindowEvidence:
    """The IPS, SNIPS and DR estimates of one model over the slates of the last ``span``
    seconds of event time (at most ``max_slates``, the newest), with **fixed-sample** 95%
    intervals: for reading a window's figure, not for acting on it when watched (the gate acts
    on :class:`Evidence`'s anytime bounds, over every slate since the served model last
    moved)."""

    span: float
    max_slates: int = 50_000
    z: float = 1.959964
    items: deque[tuple[float, SlateTerms]] = field(default_factory=deque)
    sums: dict[str, float] = field(default_factory=_sums)
    newest: float = 0.0

    def add(self, at: float, terms: SlateTerms) -> None:
        self.items.append((at, terms))
        _add(self.sums, terms)
        self.newest = max(self.newest, at)
        while self.items and (
            self.items[0][0] < self.newest - self.span or len(self.items) > self.max_slates
        ):
            _add(self.sums, self.items.popleft()[1], -1.0)
        if not self.items:
            self.sums = _sums()  # what subtraction leaves of rounding, gone

    def figures(self) -> dict[str, float]:
        n = len(self.items)
        out: dict[str, float] = {"slates": float(n)}
        if n < 2:
            return out
        for name in ESTIMATORS:
            point = _point(self.sums, n, name)
            if math.isfinite(point):
                half = self.z * _spread(self.sums, n, name, point) / math.sqrt(n)
                out |= {
                    name: point,
                    f"{name}_lower": max(point - half, 0.0),
                    f"{name}_upper": min(point + half, 1.0),
                }
        return out


class PromotionRule(Policy):
    """When a challenger replaces the champion on off-policy evidence (off by default)."""

    enabled: bool = Field(False, description="Promote automatically (the gate only judges).")
    estimator: Estimator = Field("dr", description="Whose bounds are compared.")
    min_slates: int = Field(
        1000, ge=2, description="Slates a model's estimate needs before it counts."
    )
    hold_s: float = Field(
        300.0,
        ge=0,
        description="How long the challenger's lower bound must stay above the "
        "champion's upper bound.",
    )
    cooldown_s: float = Field(
        3600.0, ge=0, description="The least time between two promotions of a model."
    )


@dataclass(frozen=True)
class Decision:
    action: Literal["promote", "rollback"]
    model: str  # the model promoted, or the champion rolled back
    champion: str  # the champion before
    # The evidence: each model's (estimate, lower, upper) by the rule's estimator.
    figures: dict[str, tuple[float, float, float]]
    bound: float  # promote: the champion's upper bound beaten; rollback: the bound fallen below
    estimator: Estimator = "dr"

    def summary(self) -> str:
        model, (point, lower, upper) = self.model, self.figures[self.model]
        evidence = "; ".join(
            f"{name} {p:.4f} [{lo:.4f}, {hi:.4f}]" for name, (p, lo, hi) in self.figures.items()
        )
        if self.action == "promote":
            head = (
                f"{model} promoted over {self.champion}: its conversion per slot {point:.4f} "
                f"[{lower:.4f}, {upper:.4f}] beat the champion's upper bound {self.bound:.4f}"
            )
        else:
            head = (
                f"{model} fell below the bound it was promoted on ({self.bound:.4f}): "
                f"{point:.4f} [{lower:.4f}, {upper:.4f}]"
            )
        return f"{head}. Evidence ({self.estimator}, anytime bounds): {evidence}"


@dataclass
class Gate:
    """Judges the models' evidence against a :class:`PromotionRule`: a challenger is promoted
    once its lower bound has stayed above the champion's upper bound for ``hold_s`` (each model
    with ``min_slates``), never within ``cooldown_s`` of the last promotion; a champion it
    promoted is rolled back once its upper bound falls below the bound it beat."""

    rule: PromotionRule
    clock: Clock
    ahead_since: dict[str, float] = field(default_factory=dict)
    last_promotion: float | None = None
    promoted: tuple[str, float] | None = None  # (model, the bound it was promoted on)
    decisions: int = 0

    def judge(self, champion: str, evidence: Mapping[str, Evidence]) -> Decision | None:
        now = self.clock.now()
        figures = {
            name: e.estimate(self.rule.estimator)
            for name, e in evidence.items()
            if e.n >= self.rule.min_slates
        }
        if champion not in figures:
            return None
        promoted = self.promoted
        # Its upper bound under the champion's it beat: proven worse than what it replaced.
        if promoted is not None and promoted[0] == champion and figures[champion][2] < promoted[1]:
            self.promoted = None
            self.decisions += 1
            return Decision(
                "rollback", champion, champion, figures, promoted[1], self.rule.estimator
            )
        upper = figures[champion][2]
        ahead = {name for name, (_, lower, _) in figures.items() if lower > upper}
        ahead.discard(champion)
        for name in list(self.ahead_since):
            if name not in ahead:
                del self.ahead_since[name]
        for name in ahead:
            self.ahead_since.setdefault(name, now)
        cooled = self.last_promotion is None or now - self.last_promotion >= self.rule.cooldown_s
        held = [n for n in ahead if now - self.ahead_since[n] >= self.rule.hold_s]
        if not held or not cooled:
            return None
        best = max(held, key=lambda n: figures[n][1])
        self.last_promotion, self.promoted = now, (best, upper)
        self.ahead_since.clear()
        self.decisions += 1
        return Decision("promote", best, champion, figures, upper, self.rule.estimator)
