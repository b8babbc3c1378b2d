"""The figures streamlearn judges models by, in one place: log loss, ROC AUC (by ranks, and River's
thresholded one for a running total), rolling windows of served scores, and the population
stability index.

>>> round(log_loss(0.8, True), 4), round(log_loss(0.8, False), 4)
(0.2231, 1.6094)
>>> round(psi({"a": 50, "b": 50}, {"a": 50, "b": 50}), 6)
0.0
>>> round(psi({"a": 90, "b": 10}, {"a": 50, "b": 50}), 3)
0.879
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

EPS = 1e-15  # scores are clipped to [EPS, 1 - EPS] for a log loss, as River clips them
PSI_FLOOR = 1e-4  # a bin's share is floored here, so an empty bin does not make PSI infinite


def log_loss(p: float, y: bool) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return -math.log(p if y else 1 - p)


def log_losses(p: Any, y: Any) -> Any:
    """:func:`log_loss` of numpy columns (scores, labels), each example's."""
    clipped = np.clip(p, EPS, 1 - EPS)
    return -np.log(np.where(y, clipped, 1 - clipped))


def columns(scored: Sequence[tuple[float, bool]]) -> tuple[Any, Any]:
    """(score, label) pairs as the numpy columns :func:`auc` and :func:`log_losses` take."""
    p = np.fromiter((s for s, _ in scored), "f8", len(scored))
    return p, np.fromiter((y for _, y in scored), "?", len(scored))


class MeanLogLoss:
    """River's ``metrics.LogLoss``, the same figure (clipped alike), a third of the cost: the
    trainer updates two per example.

    >>> from river import metrics
    >>> ours, rivers = MeanLogLoss(), metrics.LogLoss()
    >>> for y, p in [(True, 0.9), (False, 0.4), (True, 0.0), (False, 0.1)]:
    ...     ours.update(y, p); rivers.update(y, {True: p, False: 1 - p})
    >>> bool(abs(ours.get() - rivers.get()) < 1e-12)
    True
    """

    def __init__(self, total: float = 0.0, n: int = 0) -> None:
        self.total, self.n = total, n

    @classmethod
    def of(cls, river_metric: Any) -> MeanLogLoss:
        """The same running mean as a River ``LogLoss`` (one pickled in an older snapshot)."""
        n = int(river_metric._mean.n)
        return cls(river_metric.get() * n, n)

    def update(self, y: bool, p: float) -> None:
        self.total += log_loss(p, y)
        self.n += 1

    def get(self) -> float:
        return self.total / self.n if self.n else 0.0


class ThresholdAUC:
    """River's ``metrics.ROCAUC`` (10 thresholds), the same figure for the same inputs, at a
    fraction of the cost: one histogram bin per update instead of ten confusion matrices.

    >>> from river import metrics
    >>> ours, rivers = ThresholdAUC(), metrics.ROCAUC()
    >>> for y, p in [(True, 0.9), (False, 0.4), (True, 0.35), (False, 0.1), (False, 0.8)]:
    ...     ours.update(y, p); rivers.update(y, {True: p, False: 1 - p})
    >>> bool(abs(ours.get() - rivers.get()) < 1e-12), round(ours.get(), 4)
    (True, 0.75)
    """

    def __init__(self, n_thresholds: int = 10) -> None:
        self.thresholds = [i / (n_thresholds - 1) for i in range(n_thresholds)]
        self.thresholds[0] -= 1e-7
        self.thresholds[-1] += 1e-7
        # bins[k]: weight of examples whose score is above exactly the k lowest thresholds.
        self.positives = [0.0] * (n_thresholds + 1)
        self.negatives = [0.0] * (n_thresholds + 1)

    def update(self, y: bool, p: float, w: float = 1.0) -> None:
        (self.positives if y else self.negatives)[bisect.bisect_left(self.thresholds, p)] += w

    def get(self) -> float:
        total_pos, total_neg = sum(self.positives), sum(self.negatives)
        tprs, fprs = [], []
        for i in range(len(self.thresholds)):
            # Predicted positive at threshold i: the bins above it.
            tp, fp = sum(self.positives[i + 1 :]), sum(self.negatives[i + 1 :])
            tprs.append(tp / total_pos if total_pos else 0.0)
            fprs.append(fp / total_neg if total_neg else 0.0)
        area = sum(
            (fprs[i + 1] - fprs[i]) * (tprs[i + 1] + tprs[i]) / 2 for i in range(len(fprs) - 1)
        )
        return -area


# How a final positive came, for the label figures of a window.
IN_TIME, DELAYED, LATE = 0, 1, 2


ROW = np.dtype([("t", "f8"), ("p", "f8"), ("y", "?"), ("came", "i1")])


def auc(p: Any, y: Any) -> float:
    """ROC AUC of numpy columns (scores, labels) by ranks (Mann-Whitney U), ties counted half;
    0 while one class is missing, as River's ROCAUC reports.

    >>> p = np.array([0.9, 0.3, 0.8, 0.3, 0.1, 0.3])
    >>> y = np.array([True, True, False, False, False, True])
    >>> auc(p, y)  # of 9 (positive, negative) pairs, 5 ranked right and 2 tied
    0.6666666666666666
    """
    positives = int(y.sum())
    negatives = len(y) - positives
    if not positives or not negatives:
        return 0.0
    order = np.argsort(p, kind="stable")
    ordered = p[order]
    first = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # of each run of ties
    counts = np.diff(np.r_[first, len(ordered)])
    ranks = np.repeat(first + (counts + 1) / 2, counts)  # ties share their mean rank
    rank_sum = float(ranks[y[order]].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


class Rolling:
    """The newest ``max_examples`` (event time, score, label, how a positive came) of a
    stream, in numpy columns; a window's figures are over those within its span of the newest
    event time. One buffer serves every window: a window of the newest examples in its span,
    at most ``max_examples``, is always a suffix of those the longest window keeps, so the
    figures are those of a buffer per window at a third of the memory, and adding a batch costs
    one copy. ``late_positives``: the join emits corrections for positives after the window
    (its ``late_policy`` is ``correct``), so the window's coverage can be told."""

    def __init__(self, max_examples: int, late_positives: bool = False) -> None:
        self.max_examples = max_examples
        self.late_positives = late_positives
        self.newest = -math.inf
        self._buf = np.empty(2 * max_examples, ROW)
        self._start = self._end = 0

    def __getstate__(self) -> dict[str, Any]:
        return {
            "max_examples": self.max_examples,
            "late_positives": self.late_positives,
            "newest": self.newest,
            "live": self.live().copy(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_examples"], state["late_positives"])  # type: ignore[misc]
        self.newest = state["newest"]
        live = state["live"]
        self._buf[: len(live)] = live
        self._end = len(live)

    def __len__(self) -> int:
        return self._end - self._start

    def live(self) -> Any:
        return self._buf[self._start : self._end]

    def extend(self, new: Any) -> None:
        """Add rows of :data:`ROW`, oldest first."""
        if not len(new):
            return
        self.newest = max(self.newest, float(new["t"].max()))
        new = new[-self.max_examples :]
        if self._end + len(new) > len(self._buf):  # the kept rows to the front, in one copy
            kept = self._buf[max(self._start, self._end + len(new) - self.max_examples) : self._end]
            self._buf[: len(kept)] = kept.copy()
            self._start, self._end = 0, len(kept)
        self._buf[self._end : self._end + len(new)] = new
        self._end += len(new)
        self._start = max(self._start, self._end - self.max_examples)

    def metrics(self, span: float, settled_by: float = math.inf) -> dict[str, float]:
        """Figures of the examples recommended in the last ``span`` seconds (of recommendation
        time, up to the newest); with ``settled_by``, only of those recommended by then: the
        impressions whose labels are all final, negatives included."""
        live = self.live()
        t = live["t"]
        w = live[(t >= self.newest - span) & (t <= settled_by)]
        n = len(w)
        if not n:
            return {"count": 0.0}
        p, y = w["p"], w["y"]
        positives = int(y.sum())
        mean_p = float(p.mean())
        rate = positives / n
        out = {
            "count": float(n),
            "roc_auc": auc(p, y),
            "log_loss": float(log_losses(p, y).mean()),
            "conversion_rate": rate,
            "prediction_mean": mean_p,
            "calibration": mean_p / rate if rate else 0.0,
        }
        if positives:
            came = w["came"][y]
            out["delayed_positive_share"] = int((came == DELAYED).sum()) / positives
            if self.late_positives:
                out["coverage"] = 1.0 - int((came == LATE).sum()) / positives
        return out


def psi(reference: Mapping[str, float], current: Mapping[str, float]) -> float:
    """Population stability index of two histograms by bin (counts or shares)."""
    bins = sorted(set(reference) | set(current))
    r = shares(np.array([reference.get(b, 0.0) for b in bins], "f8"))
    return psi_of_shares(r, shares(np.array([current.get(b, 0.0) for b in bins], "f8")))


def shares(counts: Any) -> Any:
    """A histogram's shares (numpy), each floored at :data:`PSI_FLOOR`."""
    return np.maximum(counts / (counts.sum() or 1.0), PSI_FLOOR)


def psi_of_shares(reference: Any, current: Any) -> float:
    """:func:`psi` of two histograms' :func:`shares`, bin for bin (a bin empty on both sides
    adds nothing)."""
    return float(((current - reference) * np.log(current / reference)).sum())
