"""Drift: has the world moved away from what the served model knows?

* **Concept drift**, on the served model's per-example log loss, with River's detectors (ADWIN,
  or Page-Hinkley watching for increases). Only a rise of the loss counts: the fall that follows
  as the model relearns is recovery, not drift. The alarm value is 1 from a detection until
  ``recovery_examples`` have passed without another.
* **Data drift**, per feature and on the prediction, as the population stability index of the
  current window against a reference window (the one taken when the version was promoted).
  Numbers are binned at the reference's deciles, categories are the reference's most common ones
  plus "other". PSI = sum over bins of (current - reference) x ln(current / reference), with
  shares floored at ``1e-4``; the usual reading is < 0.1 stable, 0.1-0.25 moderate, > 0.25 a
  shift (:func:`streamlearn.metrics.psi`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from river import drift

from streamlearn.metrics import psi_of_shares, shares

OTHER = "(other)"


@dataclass
class FeatureProfile:
    """How one feature was distributed in the reference window, and the bins to compare in."""

    kind: Literal["number", "category"]
    edges: list[float] = field(default_factory=list)  # numbers: upper edges of all but the last
    categories: list[str] = field(default_factory=list)
    reference: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, values: list[Any], bins: int = 10, top: int = 20) -> FeatureProfile:
        numbers = [float(v) for v in values if isinstance(v, int | float)]
        if numbers and len(numbers) >= len(values) / 2:
            ordered = sorted(numbers)
            cuts = (
                {ordered[int(len(ordered) * q / bins)] for q in range(1, bins)}
                if ordered
                else set()
            )
            profile = cls("number", edges=sorted(cuts))
        else:
            common = Counter(_category(v) for v in values if v is not None).most_common(top)
            profile = cls("category", categories=[c for c, _ in common])
        counts = np.bincount(profile.codes(values), minlength=len(profile.labels()))
        profile.reference = {b: int(c) for b, c in zip(profile.labels(), counts, strict=True) if c}
        return profile

    def bin(self, value: Any) -> str:
        """The label of a value's bin (an absent value, None, counts as "other")."""
        return self.labels()[int(self.codes([value])[0])]

    def psi(self, values: Iterable[Any]) -> float:
        return self.psi_of_codes(self.codes(list(values)))

    def labels(self) -> list[str]:
        """The bins by code, as :meth:`codes` numbers them (the last is "other")."""
        if self.kind == "number":
            return [f"b{i}" for i in range(len(self.edges) + 1)] + [OTHER]
        return [*self.categories, OTHER]

    def codes(self, values: Sequence[Any]) -> Any:
        """:meth:`bin` of many values at once, as codes into :meth:`labels`; -1 for a value
        that is absent (None)."""
        if self.kind == "category":
            memo = self.__dict__.get("_memo")
            if memo is None:
                memo = self.__dict__["_memo"] = _CategoryCodes(self.categories)
            return np.fromiter(map(memo.__getitem__, values), "i8", len(values))
        edges = np.asarray(self.edges, "f8")
        column = np.asarray(values)
        if column.dtype.kind in "bfi":  # all numbers: the usual case, in numpy alone
            return np.searchsorted(edges, column.astype("f8"), side="left")
        numbers = np.fromiter(
            (v if isinstance(v, int | float) else math.nan for v in values), "f8", len(values)
        )
        out = np.searchsorted(edges, numbers, side="left")
        out[np.isnan(numbers)] = len(self.edges) + 1
        out[np.fromiter((v is None for v in values), "?", len(values))] = -1
        return out

    def __getstate__(self) -> dict[str, Any]:
        # What codes and psi_of_codes keep is made again on use.
        return {k: v for k, v in self.__dict__.items() if k not in ("_memo", "_shares")}

    def psi_of_codes(self, codes: Any) -> float:
        """:meth:`psi` of values given by their :meth:`codes`."""
        reference = self.__dict__.get("_shares")
        if reference is None:
            counts = np.array([self.reference.get(b, 0.0) for b in self.labels()], "f8")
            reference = self.__dict__["_shares"] = shares(counts)
        return psi_of_shares(
            reference, shares(np.bincount(codes[codes >= 0], minlength=len(reference)))
        )


def _category(value: Any) -> str:
    """A category's name. Numbers by their float (True, 1 and 1.0 are one dict key, so one
    category) so that one value always has one name."""
    return str(float(value)) if isinstance(value, int | float) else str(value)


class _CategoryCodes(dict[Any, int]):
    """A category profile's codes by value, each worked out the first time it is seen (a
    feature's values repeat: that is what makes it a category); -1 for None, absent."""

    LIMIT = 100_000  # values remembered, at most: an identifier-like feature has no end of them

    def __init__(self, categories: list[str]) -> None:
        super().__init__()
        self.index = {c: i for i, c in enumerate(categories)}

    def __missing__(self, value: Any) -> int:
        if value is None:
            return -1
        code = self.index.get(_category(value), len(self.index))
        if len(self) < self.LIMIT:
            self[value] = code
        return code


@dataclass
class DataDrift:
    """Reference profiles of every feature (and the prediction), and the PSI of a window."""

    profiles: dict[str, FeatureProfile]

    @classmethod
    def reference(cls, rows: Sequence[Mapping[str, Any]]) -> DataDrift:
        """Profiles of each feature seen in ``rows`` (feature name -> value dicts)."""
        names = {name for row in rows for name in row}
        return cls.of({n: [r[n] for r in rows if n in r] for n in names})

    @classmethod
    def of(cls, columns: Mapping[str, list[Any]]) -> DataDrift:
        """Profiles of each feature from its values."""
        return cls({n: FeatureProfile.of(columns[n]) for n in sorted(columns)})

    def psi_by_feature(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return {
            name: profile.psi(r[name] for r in rows if name in r)
            for name, profile in self.profiles.items()
        }


class ConceptDrift:
    """A drift detector on the served model's loss; ``value`` is 1 while the alarm should be on.

    The alarm is on from a detected rise until the loss is back: no new rise for
    ``recovery_examples`` examples and a recent mean of the loss (an exponential average over
    about ``recovery_examples``) no higher than the level before the rise, plus ``tolerance``.
    A detector alone would clear too early: it detects the change, not the level that stays
    high while the model relearns, and it re-detects the same rise as it drops the old data from
    its window. A concept that leaves the loss higher for good clears after ``5 *
    recovery_examples`` quiet examples: the new normal. The first ``warmup`` examples only fill
    the detector: a model that has just started serving changes what it shows as it learns, and
    its loss moves for that reason alone.
    """

    def __init__(
        self,
        detector: Literal["adwin", "page_hinkley"] = "adwin",
        recovery_examples: int = 2000,
        adwin_delta: float = 0.002,
        ph_delta: float = 0.05,
        ph_threshold: float = 50.0,
        tolerance: float = 0.1,
        warmup: int = 0,
    ) -> None:
        # ADWIN's delta is a confidence; Page-Hinkley's is the rise of the loss (in nats) that
        # is tolerated, and its threshold the evidence needed: River's defaults (0.005, 50) are
        # for unit-scale signals and false-alarm on a stable log loss.
        self.detector: Any = (
            drift.ADWIN(delta=adwin_delta)
            if detector == "adwin"
            else drift.PageHinkley(delta=ph_delta, threshold=ph_threshold, mode="up")
        )
        self.recovery_examples = recovery_examples
        self.tolerance = tolerance
        self.warmup = warmup
        self.seen = 0
        self.detections = 0
        self._quiet = recovery_examples  # examples since the last detection
        self._recent: float | None = None  # exponential average of the loss
        self._baseline: float | None = None  # the level before the rise, while the alarm is on
        # ADWIN's mean, kept here, as asking it costs a third of an update: the losses in its
        # window since River last emptied it (it keeps them all until it detects a change),
        # or, once it has detected one or been replaced, the mean it had then, until the next
        # update empties its window.
        self._adwin = isinstance(self.detector, drift.ADWIN)
        self._total, self._count = 0.0, 0
        self._mean_then: float | None = None

    def _mean(self) -> float:
        if self._mean_then is not None:
            return self._mean_then
        return self._total / self._count if self._count else 0.0

    def update(self, loss: float) -> bool:
        """Feed one example's loss; True when this one completes a detection of a rise."""
        before = self._mean()
        self.detector.update(loss)
        if self._mean_then is not None:  # River emptied the window before adding this one
            self._total, self._count, self._mean_then = 0.0, 0, None
        self._total += loss
        self._count += 1
        self._quiet += 1
        self.seen += 1
        alpha = 2 / (self.recovery_examples + 1)
        self._recent = (
            loss if self._recent is None else self._recent + alpha * (loss - self._recent)
        )
        detected, rose = self.detector.drift_detected, True  # Page-Hinkley watches rises only
        if detected and self._adwin:
            self._mean_then = float(self.detector.estimation)  # of the window it kept
            rose = self._mean_then > before  # ADWIN also flags falls
        if detected and rose and self.seen > self.warmup:
            self.detections += 1
            self._quiet = 0
            if self._baseline is None:
                self._baseline = before if self._adwin else self._recent
            return True
        if self._baseline is not None and self._quiet >= self.recovery_examples:
            back = self._recent <= self._baseline + self.tolerance
            if back or self._quiet >= 5 * self.recovery_examples:
                # A fresh detector for the new normal: the old one still holds the rise and
                # the relearning in its window, and dropping them re-detects the same incident.
                self._mean_then = self._mean()
                self._baseline, self.detector = None, self.detector.clone()
        return False

    def update_many(self, losses: Iterable[float]) -> list[tuple[int, float]]:
        """:meth:`update` with each loss in turn; (index, new value) where :attr:`value`
        changed."""
        changes, value = [], self.value
        for i, loss in enumerate(losses):
            self.update(loss)
            if self.value != value:
                value = self.value
                changes.append((i, value))
        return changes

    @property
    def value(self) -> float:
        return 1.0 if self._baseline is not None else 0.0
