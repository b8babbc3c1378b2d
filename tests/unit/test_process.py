"""The consumer processes' shared skeleton: records and ends of partitions in the order Kafka
gave them (a stand-in for the consumer: this is the skeleton's logic, not Kafka's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError

from consumers.process import KafkaProcess
from streamlearn.settings import Settings


@dataclass
class Record:
    topic_: str
    partition_: int
    code: int | None = None  # an error's code; None for a record

    def error(self) -> KafkaError | None:
        return None if self.code is None else KafkaError(self.code)

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_


class Batches:
    def __init__(self, batch: list[Record]) -> None:
        self.batch = batch

    def consume(self, n: int, timeout: float) -> list[Record]:
        return self.batch


class Recorder(KafkaProcess):
    name = "recorder"

    def __init__(self, batch: list[Record]) -> None:
        super().__init__(Settings())
        self.consumer.close()  # never used: it has never joined a group
        self.consumer = Batches(batch)  # type: ignore[assignment]
        self.seen: list[Any] = []

    def run(self) -> None:
        for msg in self.consume(10, 0.0):
            self.seen.append(("record", msg.topic(), msg.partition()))

    def metrics_port(self) -> int:
        return 0

    def on_end_of_partition(self, topic: str, partition: int) -> None:
        self.seen.append(("end", topic, partition))


def test_an_end_of_partition_comes_after_the_records_before_it() -> None:
    """The joiner counts an input idle from its end on, until its next record: handled before
    the records that precede it, the end would be undone by them and the input never idle."""
    eof = KafkaError._PARTITION_EOF
    process = Recorder(
        [
            Record("recs", 0),
            Record("recs", 0, eof),
            Record("outs", 1),
            Record("outs", 1, KafkaError._TRANSPORT),  # logged, not handled
            Record("outs", 1, eof),
        ]
    )
    process.run()
    assert process.seen == [
        ("record", "recs", 0),
        ("end", "recs", 0),
        ("record", "outs", 1),
        ("end", "outs", 1),
    ]


class Flaky:
    """A call that fails with ``error`` its first ``times`` calls, then answers."""

    def __init__(self, error: BaseException, times: int, on_call: Any = None) -> None:
        self.error, self.times, self.calls, self.on_call = error, times, 0, on_call

    def __call__(self) -> str:
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        if self.calls <= self.times:
            raise self.error
        return "answer"


def test_a_call_is_made_again_while_its_failure_will_pass() -> None:
    process = Recorder([])
    call = Flaky(OSError("store away"), times=2)
    answer = process.patiently(call, away=lambda e: isinstance(e, OSError), what="a put")
    assert (answer, call.calls) == ("answer", 3)


def test_a_failure_that_will_not_pass_is_raised_at_once() -> None:
    process = Recorder([])
    call = Flaky(ValueError("a bad path"), times=1)
    with pytest.raises(ValueError, match="a bad path"):
        process.patiently(call, away=lambda e: isinstance(e, OSError), what="a put")
    assert call.calls == 1


def test_a_process_asked_to_stop_gives_up_waiting() -> None:
    """SIGTERM while the store is away: the process stops (what it had not made durable is
    read again by the next), instead of waiting forever."""
    process = Recorder([])

    def sigterm() -> None:
        process.stopping = True

    call = Flaky(OSError("store away"), times=100, on_call=sigterm)
    with pytest.raises(OSError, match="store away"):
        process.patiently(call, away=lambda e: isinstance(e, OSError), what="a put")
    assert call.calls == 1


def test_the_joiner_reads_again_after_a_timeout_of_a_restarting_broker() -> None:
    """CI: a broker restarted under the loop; the joiner's read of its committed offsets timed
    out (a local timeout, which librdkafka does not flag retriable) and the joiner exited."""
    from confluent_kafka import KafkaException

    from consumers.joiner import _retriable

    process = Recorder([])
    timed_out = KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed to get committed offsets"))
    call = Flaky(timed_out, times=2)
    assert process.patiently(call, away=_retriable, what="reading committed offsets") == "answer"
    # The admin client's per-partition error while a transaction holds the group's offsets (the
    # joiner died of it in a run of the broker-restart test).
    unstable = KafkaException(KafkaError(KafkaError.UNSTABLE_OFFSET_COMMIT))
    assert process.patiently(Flaky(unstable, times=2), away=_retriable, what="offsets") == "answer"
    fenced = KafkaException(KafkaError(KafkaError._FENCED, "fenced"))
    assert not _retriable(fenced) and not _retriable(ValueError("no"))
