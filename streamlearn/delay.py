"""Corrections for delayed conversions: what the trainer does with the joiner's label modes.

With ``label_mode`` ``fnw`` the joiner emits every impression at once as a negative and a
duplicate positive when it converts; with ``observe`` it waits ``observe_s``, then emits a
negative that a later conversion follows with a positive. Either way the stream the model
learns from is biased: it holds more negatives than the world does. A model spec chooses how to
undo that (``delay_correction``):

* ``fnw``, fake-negative weighting (Ktena et al., RecSys 2019): importance weights with the
  model's own current prediction ``p`` held constant (computed before the update, no gradient
  through it): ``1 + p`` for a positive, ``(1 - p)(1 + p)`` for a negative. In expectation this
  is the loss on the true distribution.
* ``fnc``, fake-negative calibration (the same paper): learn the biased rate ``b`` unweighted,
  and serve ``p = b / (1 - b)``, clipped below 1.
* ``esdfm`` (Yang et al., AAAI 2021), for ``observe``: positives weighted ``1 + f_dp(x)``,
  observed negatives ``(1 + f_dp(x)) f_rn(x)``, where ``f_dp`` is the probability that an
  impression is a delayed positive and ``f_rn`` that an observed negative is a real one. Both are
  estimated online by two logistic models on the same features, each taught by the join's final
  labels when the impression's window closes (:class:`EsdfmWeights`): every impression's final
  kind teaches ``f_dp`` (a delayed positive: 1; an immediate positive or a real negative: 0),
  and every observed negative's fate teaches ``f_rn`` (it stayed negative: 1; a delayed
  positive followed: 0).

Progressive validation stays honest in every mode: a provisional negative's score is kept until
its impression's final label comes (the delayed positive, or the window's end) and counted then,
once, against that label; a positive or a final negative counts at once. So a fake negative that
turns positive is scored as the positive it was.
"""

from __future__ import annotations

import heapq
from typing import Any, Literal

from river import linear_model, optim

DelayCorrection = Literal["none", "fnw", "fnc", "esdfm"]

MAX_SERVED = 1.0 - 1e-6


def fnw_weight(p: float, label: bool) -> float:
    """Ktena et al.'s importance weight of an example under fake-negative weighting."""
    return 1.0 + p if label else (1.0 - p) * (1.0 + p)


def fnc_served(biased: float) -> float:
    """The served rate from one learned under fake negatives: b / (1 - b), clipped."""
    return min(biased / (1.0 - biased), MAX_SERVED) if biased < 1.0 else MAX_SERVED


class EsdfmWeights:
    """ES-DFM's two auxiliary models, learned online from the join's final labels.

    Each impression's fate is learned when its attribution window closes, whatever its kind: a
    positive's (immediate or delayed) is held until then, a real negative comes then. Learned
    as they come, the fates would reach the models in a biased order, positives a window
    before negatives, and teach them the very delay bias they are there to undo (in the first
    window they would see only positives, and weigh the observed negatives down to nothing).
    The window is the join's: the time a real negative was emitted after its impression. Until
    the first window has closed the models know nothing, and weigh every example 1."""

    MAX_HELD = 500_000  # bounds memory at high rates; past it, the oldest fate is learned early

    def __init__(self) -> None:
        self.delayed: Any = linear_model.LogisticRegression(optimizer=optim.AdaGrad(0.1))
        self.real_negative: Any = linear_model.LogisticRegression(optimizer=optim.AdaGrad(0.1))
        self.window_s: float | None = None
        # Positives' fates until their window closes: (recommendation time, seq, features,
        # delayed, observed negative); seq keeps the heap off the features.
        self.held: list[tuple[float, int, dict[str, Any], bool, bool]] = []
        self._seq = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Pickled before fates were held: the models had learned every fate at once.
        self.__dict__.update({"window_s": None, "held": [], "_seq": 0, **state})

    def weight(self, x: dict[str, Any], label: bool) -> float:
        if self.window_s is None:
            return 1.0
        f_dp = float(self.delayed.predict_proba_one(x).get(True, 0.0))
        if label:
            return 1.0 + f_dp
        f_rn = float(self.real_negative.predict_proba_one(x).get(True, 1.0))
        return (1.0 + f_dp) * f_rn

    def final(
        self,
        x: dict[str, Any],
        kind: str | None,
        observed_negative: bool,
        recommendation_time: float,
        elapsed_s: float | None,
    ) -> None:
        """An impression's final label: ``kind`` delayed_positive, immediate or real_negative,
        emitted ``elapsed_s`` after the impression; ``observed_negative`` when it had been
        emitted as a negative before."""
        now = recommendation_time + (elapsed_s or 0.0)
        if kind == "real_negative":
            if elapsed_s:
                self.window_s = elapsed_s
            self._release(now)
            self._learn(x, False, observed_negative)
            return
        heapq.heappush(
            self.held,
            (recommendation_time, self._seq, x, kind == "delayed_positive", observed_negative),
        )
        self._seq += 1
        self._release(now)

    def _release(self, now: float) -> None:
        while self.held and (
            len(self.held) > self.MAX_HELD
            or (self.window_s is not None and self.held[0][0] + self.window_s <= now)
        ):
            _, _, x, delayed, observed_negative = heapq.heappop(self.held)
            self._learn(x, delayed, observed_negative)

    def _learn(self, x: dict[str, Any], delayed: bool, observed_negative: bool) -> None:
        self.delayed.learn_one(x, delayed)
        if observed_negative:
            self.real_negative.learn_one(x, not delayed)
