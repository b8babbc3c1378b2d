"""Prometheus exposition of the join's health, read from the joiner at scrape time.

A collector rather than counters updated on the hot path: the join keeps plain integers, and a
scrape turns them into metric families, so the join pays nothing per record for being observed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from streamlearn.events import JoinReport, PartitionHealth
from streamlearn.joining import Joiner, JoinStats
from streamlearn.partitioning import Router


def report(joiner: Joiner, worker: str, partitions: Iterable[int], router: Router) -> JoinReport:
    return JoinReport(
        worker=worker,
        at=joiner.clock.now(),
        counters=joiner.stats.as_dict(),
        coverage=joiner.stats.coverage,
        partitions={
            p: PartitionHealth(
                pending_impressions=joiner.pending_impressions(p),
                watermark=joiner.watermark(p),
                watermark_lag_s=joiner.watermark_lag(p),
                unlabeled=joiner.unlabeled_impressions(p),
            )
            for p in sorted(partitions)
        },
        forwarded=router.counts(),
    )


class JoinCollector:
    def __init__(
        self, joiner: Joiner, partitions: Callable[[], Iterable[int]], router: Router
    ) -> None:
        self._joiner = joiner
        self._partitions = partitions
        self._router = router

    def collect(self) -> Iterator[Any]:
        r = report(self._joiner, "", self._partitions(), self._router)
        help_text = JoinStats.help()
        for name, value in r.counters.items():
            family = CounterMetricFamily(f"streamlearn_join_{name}", help_text[name])
            family.add_metric([], value)
            yield family
        coverage = GaugeMetricFamily(
            "streamlearn_join_coverage", "Share of eventual positives that landed in the window"
        )
        if r.coverage is not None:
            coverage.add_metric([], r.coverage)
        yield coverage
        pending = GaugeMetricFamily(
            "streamlearn_join_pending_impressions", "Open impressions", labels=["partition"]
        )
        lag = GaugeMetricFamily(
            "streamlearn_join_watermark_lag_seconds",
            "Wall time minus the partition's watermark",
            labels=["partition"],
        )
        for p, health in r.partitions.items():
            pending.add_metric([str(p)], health.pending_impressions)
            if health.watermark_lag_s is not None:
                lag.add_metric([str(p)], health.watermark_lag_s)
        yield pending
        yield lag
        forwarded = CounterMetricFamily(
            "streamlearn_join_forwarded",
            "Input records found off their user's partition and forwarded through a "
            "repartition topic, by a guess at the producer's partitioner",
            labels=["input", "guess"],
        )
        for input, guesses in r.forwarded.items():
            for guessed, n in guesses.items():
                forwarded.add_metric([input, guessed], n)
        yield forwarded
