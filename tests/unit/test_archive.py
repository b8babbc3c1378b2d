"""The archive's layout and files, without a broker: what a roll writes, and that it writes the
same bytes again."""

from __future__ import annotations

import io

import pyarrow.parquet as pq

from streamlearn.archive import SPECS, ArchivePolicy, Roll, marker, parse_marker
from streamlearn.events import Outcome, Recommendation

HOUR = 3600.0
T0 = 1_764_424_800.0  # 2025-11-29 14:00:00 UTC


def outcome(i: int, at: float) -> Outcome:
    return Outcome(user_id=f"u{i}", item_id="i1", kind="click", event_time=at)


def roll_of(events: list[tuple[int, Outcome]]) -> Roll:
    roll = Roll("outcomes", 2, events[0][0], opened_at=0.0)
    for offset, event in events:
        roll.add(SPECS["outcomes"].row(event, 2, offset, 1_764_424_800_000), offset, 100)
    return roll


def test_a_roll_writes_one_file_per_hour_named_after_the_roll() -> None:
    roll = roll_of(
        [(10, outcome(1, T0 + 5)), (11, outcome(2, T0 + HOUR + 5)), (12, outcome(3, T0))]
    )
    roll.add(None, 13, 7)  # a record that is no event: counted in the offsets only
    written = dict(roll.files())
    name = "part-2-00000000000000000010-00000000000000000013.parquet"
    assert sorted(written) == [
        f"events/outcomes/dt=2025-11-29/hour=14/{name}",
        f"events/outcomes/dt=2025-11-29/hour=15/{name}",
    ]
    rows = pq.read_table(io.BytesIO(written[f"events/outcomes/dt=2025-11-29/hour=14/{name}"]))
    assert rows.column("kafka_offset").to_pylist() == [10, 12]
    assert rows.column("user_id").to_pylist() == ["u1", "u3"]
    assert rows.column("event_time").to_pylist() == [T0 + 5, T0]  # exact seconds


def test_the_same_rows_make_the_same_bytes() -> None:
    events = [(n, outcome(n, T0 + n)) for n in range(50)]
    assert dict(roll_of(events).files()) == dict(roll_of(events).files())


def test_nested_values_are_json_text_and_scalars_typed() -> None:
    rec = Recommendation.model_validate(
        {
            "recommendation_id": "r1",
            "user_id": "u1",
            "event_time": T0,
            "context": {"segment": "s", "mobile": True},
            "items": [{"item_id": "i1", "position": 0, "features": {"price": 9.5}}],
        }
    )
    spec = SPECS["recommendations"]
    row = spec.row(rec, 0, 7, None)
    # In the record's order, which a replay needs (the model sums features in that order).
    assert row["context"] == '{"segment":"s","mobile":true}'
    assert '"features":{"price":9.5}' in row["items"]
    assert str(spec.schema.field("event_time").type) == "double"
    assert str(spec.schema.field("event_at").type) == "timestamp[us, tz=UTC]"


def test_a_roll_is_full_by_rows_bytes_or_age() -> None:
    policy = ArchivePolicy(roll_rows=3, roll_bytes=1000, roll_s=10)
    roll = roll_of([(0, outcome(0, T0)), (1, outcome(1, T0))])
    assert not roll.full(policy, now=5.0)
    assert roll.full(policy, now=10.0)
    roll.add(None, 2, 900)
    assert roll.full(policy, now=0.0)  # 1,100 bytes of values


def test_markers_name_the_roll() -> None:
    path = marker("examples", 4, 100, 250)
    assert path == "events/_rolls/examples/4/00000000000000000100-00000000000000000250"
    assert parse_marker(path) == (100, 250)
