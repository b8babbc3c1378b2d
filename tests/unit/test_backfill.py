"""Backfill over an archive written by the archiver's own code, into a local object store."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from streamlearn.archive_query import connect
from streamlearn.backfill import backfill
from streamlearn.clock import ManualClock
from streamlearn.errors import ArchiveError
from streamlearn.features import example_features
from streamlearn.learning import ModelSpec
from streamlearn.simulation import Storefront
from streamlearn.snapshots.objects import ObjectSnapshotStore
from streamlearn.training import Training, TrainingPolicy
from tests.factories import DAY, T0, archive_of_examples

KEY = b"k" * 32


def test_a_backfill_learns_the_period_up_to_each_partitions_cut(tmp_path: Path) -> None:
    written = archive_of_examples(tmp_path / "events-root")
    con = connect(f"file://{tmp_path / 'events-root'}")
    store = ObjectSnapshotStore(f"file://{tmp_path / 'snapshots'}", KEY, notices_poll_s=None)
    spec = ModelSpec(name="ctr-bf")
    first_day = dt.date(2025, 11, 29)
    seen: list[tuple[int, int]] = []
    result = backfill(
        con,
        spec,
        store,
        TrainingPolicy(),
        ManualClock(T0 + 2 * DAY),
        first_day,
        first_day,
        progress=lambda done, total: seen.append((done, total)),
        every=100,
    )
    # Partition 0's last example of the first day is at offset 139: offset 100, of the next
    # day, is learned too (below the cut); 140 and after are the live trainer's.
    assert result.offsets == {0: 140, 1: 140}
    assert result.examples == 280
    assert result.versions == [1, 2, 3]  # every 100, and the end
    assert seen[-1] == (280, 280)
    snapshot = store.get("ctr-bf")
    assert (snapshot.offsets, snapshot.samples_seen, snapshot.parent_version) == (
        {0: 140, 1: 140},
        280,
        2,
    )

    # The same model as the trainer's code fed the same examples in the topic's order.
    direct = Training(spec, ManualClock(0.0))
    # Each partition by offset, interleaved by the partition's newest time so far.
    order, newest = [], {0: 0.0, 1: 0.0}
    for p, o, at in sorted(written, key=lambda w: (w[0], w[1])):
        newest[p] = max(newest[p], at)
        if o < 140:
            order.append((int(newest[p] * 1000), p, o))
    order.sort()
    made = Storefront(traffic_seed=3).labeled_examples(300)
    rows = {(p, o): made[o * 2 + p] for p in (0, 1) for o in range(150)}
    for _, p, o in order:
        direct.learn(rows[(p, o)], p, o)
    probe = rows[(1, 3)]
    x = example_features(spec, probe)
    assert snapshot.model.predict_proba_one(x) == direct.learner.predict_proba_one(x)

    with pytest.raises(ArchiveError, match="new lineage"):
        backfill(con, spec, store, TrainingPolicy(), ManualClock(0.0), first_day, first_day)


def test_a_period_with_nothing_archived_is_an_error(tmp_path: Path) -> None:
    archive_of_examples(tmp_path / "root")
    con = connect(f"file://{tmp_path / 'root'}")
    store = ObjectSnapshotStore(f"file://{tmp_path / 's'}", KEY, notices_poll_s=None)
    with pytest.raises(ArchiveError, match="no archived example"):
        day = dt.date(2024, 1, 1)
        backfill(con, ModelSpec(name="m"), store, TrainingPolicy(), ManualClock(0.0), day, day)
