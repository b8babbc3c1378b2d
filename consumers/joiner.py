"""The joiner process: Kafka transactions around streamlearn.joining, which does the join.

Exactly once, in the way Kafka Streams does it (``exactly_once_v2``): one transactional producer
per process, and every batch of input records commits in one Kafka transaction together with
everything the records caused: the examples and dead letters emitted, the join state's changes
(written to a compacted changelog topic), and the input offsets, sent with the consumer group's
metadata so that a worker that has lost its partitions cannot commit for them. A crash aborts
the open transaction; the next owner of a partition rebuilds its state from the changelog
(``read_committed``) and resumes from the committed offsets, so each impression is labeled once.

Co-partitioning is enforced, not assumed, as Kafka Streams does it. A user's state lives on
the partition the join's own partitioner gives the ``user_id`` in the record's value (murmur2,
the Java client's default; :mod:`streamlearn.partitioning`). A record read elsewhere (its
producer hashed with CRC32 or FNV-1a, keyed by session, or sent no key) is forwarded to that
partition of a repartition topic, inside the transaction that commits its input offset, and
joined from there; records already in place take no detour. The inputs, their repartition
topics and the changelog have one partition count, and the ``range`` assignor gives a worker the
same partition numbers of each, so a user's state stays with one worker, and partition ``p``'s
state lives in changelog partition ``p``.

Why not faust-streaming, which this joiner first ran on: its ``exactly_once`` mode lost labels
in our rebalance and SIGKILL tests (faust 0.15.3 over aiokafka). It commits input offsets in the
source partition's transaction but sends outputs in the destination's; table changelogs bypass
the transactions; a graceful stop commits offsets of records never processed; and on a
rebalance a worker kept its transactions open across generations and committed offsets past
records its agent never received (4 of 4 runs), after which a new worker crashed in recovery.

Run: ``python -m consumers.joiner``.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import IO, TypeVar

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY

from consumers.process import KafkaProcess
from streamlearn.clock import SystemClock
from streamlearn.errors import ConfigError, InvalidEventError
from streamlearn.events import DeadLetter, LabeledExample, Outcome, Recommendation, parse
from streamlearn.faults import fails
from streamlearn.joining import Input, Joiner, JoinState
from streamlearn.partitioning import Router
from streamlearn.settings import Settings
from streamlearn.telemetry import JoinCollector, report
from topics import client_config, consumer_config, producer_config

log = logging.getLogger("streamlearn.joiner")

STALL_S = 2.0
"""A pause of the joiner's own loop longer than this is a stall, not the inputs' silence."""
FAILPOINT_STALL_S = 25.0
"""The stall of failpoint ``joiner.stall``: longer than a forwarded input's idle timeout."""
HUNG_AFTER_S = 5.0
"""How long past its own timeout a transactional call may take before it is given up as hung."""

T = TypeVar("T")


# Errors librdkafka does not flag retriable, that a broker restarting causes and its return
# ends: a request that timed out waiting for it (reading committed offsets, say), a connection it
# dropped, every broker down for a moment; and a group's offsets still held by a transaction the
# broker is completing (the admin client's per-partition error, flagged nothing).
_PASSING = frozenset(
    {
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.UNSTABLE_OFFSET_COMMIT,
    }
)


class _Rewound(Exception):
    """The open transaction was aborted and the join rewound to the last commit: what the loop
    was doing when it happened is void (its records are read again)."""


def _retriable(exc: BaseException) -> bool:
    """A failure of a read or of starting transactions that trying again can mend."""
    if not isinstance(exc, KafkaException):
        return False
    error: KafkaError = exc.args[0]
    return bool(error.retriable()) or error.code() in _PASSING


def _transactional_id(prefix: str) -> str:
    """This host's first free joiner slot, held (by a lock file) for the life of the process.

    A joiner restarted on the same host takes the slot its crashed predecessor held, and so its
    transactional id: initializing it fences the old producer and aborts its open transaction
    at once (as Kafka Streams reuses the process id kept in its state directory). Under a new
    id, that transaction would live until the broker times it out (10 s, checked every 10 s),
    and hold back, meanwhile, what every read_committed reader sees of the topics it wrote: the
    repartition topics among them, whose forwarded records would arrive that much later.
    """
    locks = Path(tempfile.gettempdir()) / "streamlearn-joiner-slots"
    locks.mkdir(exist_ok=True)
    for slot in itertools.count():
        lock = open(locks / f"{prefix or '-'}{slot}.lock", "a")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _held_slots.append(lock)
        return f"{prefix}joiner-{socket.gethostname()}-{slot}"
    raise AssertionError("unreachable")


_held_slots: list[IO[str]] = []


def _watched(call: Callable[[], T], timeout_s: float, what: str) -> T:
    """``call`` (a transactional call given ``timeout_s``), or a retriable timeout when it has
    not returned ``HUNG_AFTER_S`` after that. librdkafka's transactional calls can block past
    their timeout for good after a broker restart (``send_offsets_to_transaction`` waiting for a
    group coordinator it no longer looks for: confluentinc/librdkafka#5511); the loop must not
    block with them. The hung call is left in its thread, its producer never used again."""
    result: Future[T] = Future()

    def run() -> None:
        try:
            result.set_result(call())
        except BaseException as exc:  # handed to the caller's thread as it is
            result.set_exception(exc)

    threading.Thread(target=run, name=what, daemon=True).start()
    try:
        return result.result(timeout_s + HUNG_AFTER_S)
    except FutureTimeout:
        reason = f"{what} had not returned {timeout_s + HUNG_AFTER_S:.0f} s later"
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, reason, retriable=True)) from None


def _hang() -> None:
    """A call that never returns: failpoint ``joiner.commit-hangs``'s commit."""
    threading.Event().wait()


def _log_purge_failure(done: Future[object]) -> None:
    # Nothing is lost: the records are deleted at the next purge, or by retention.
    if (exc := done.exception()) is not None:
        log.warning("could not purge a repartition topic: %s", exc)


class TransactionalJoin(KafkaProcess):
    """Consume, join, produce and commit, one transaction per batch."""

    name = "joiner"

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            settings,
            **{
                # The same partition numbers of both inputs to one worker (co-partitioning).
                "partition.assignment.strategy": "range",
                "session.timeout.ms": 10_000,
                # Reaching an input's end is what lets its silence count as idleness.
                "enable.partition.eof": True,
            },
        )
        self.recs = settings.topic("recommendations")
        self.outcomes = settings.topic("outcomes")
        # Each topic read: which input it carries, and whether its records were forwarded.
        self.inputs: dict[str, tuple[Input, bool]] = {
            self.recs: ("recommendations", False),
            self.outcomes: ("outcomes", False),
            settings.topic("recommendations_repartition"): ("recommendations", True),
            settings.topic("outcomes_repartition"): ("outcomes", True),
        }
        self.repartition = {
            self.recs: settings.topic("recommendations_repartition"),
            self.outcomes: settings.topic("outcomes_repartition"),
        }
        self.examples = settings.topic("examples")
        self.slates = settings.topic("slates")
        self.letters = settings.topic("dead_letters")
        self.stats_topic = settings.topic("joiner_stats")
        self.changelog = settings.topic("joiner_state")
        self.worker = f"{socket.gethostname()}-{os.getpid()}"
        self.transactional_id = _transactional_id(settings.topic_prefix)
        self.state = JoinState()
        self.joiner = Joiner(settings.join, self.state, SystemClock())
        self.router = Router(self._partition_count())
        self.admin = AdminClient(client_config(settings))
        # Up to where each repartition partition has been joined and committed: deletable.
        self.joined: dict[tuple[str, int], int] = {}
        self.producer = self._transactional_producer()
        self.partitions: set[int] = set()
        self.next_offsets: dict[tuple[str, int], int] = {}
        self.in_transaction = False

        # ---- the loop -------------------------------------------------------------------------
        self._checked_at = time.monotonic()  # when the loop last looked for a stall

    def _transactional_producer(self) -> Producer:
        """A producer under this worker's transactional id, its transactions initialized (which
        fences an earlier producer of the id and aborts its open transaction)."""
        producer = Producer(
            producer_config(
                self.settings,
                **{
                    "transactional.id": self.transactional_id,
                    # A crashed worker's open transaction holds back the read_committed end of
                    # the topics it wrote until it times out: keep that short.
                    "transaction.timeout.ms": 10_000,
                },
            )
        )
        self.patiently(
            lambda: producer.init_transactions(30), away=_retriable, what="starting transactions"
        )
        return producer

    def _partition_count(self) -> int:
        """The one partition count of every topic the join reads or keeps state in."""
        names = [*self.inputs, self.changelog]
        metadata = self.patiently(
            lambda: self.consumer.list_topics(timeout=30), away=_retriable, what="reading metadata"
        ).topics
        counts = {n: len(metadata[n].partitions) for n in names if n in metadata}
        if len(counts) < len(names) or len(set(counts.values())) != 1:
            raise ConfigError(
                f"the join needs topics {names} with one partition count, found {counts}: "
                "create them with `python -m topics` (or give them equal counts)"
            )
        return counts[self.recs]

    def run(self) -> None:
        self.consumer.subscribe(
            list(self.inputs),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        policy = self.settings.join
        last_commit = last_tick = last_stats = last_purge = time.monotonic()
        try:
            while not self.stopping:
                try:
                    self._check_stall()
                    for msg in self.consume(1000, timeout=0.05):
                        self._handle(msg)
                    self._check_stall()
                    now = time.monotonic()
                    if now - last_tick >= policy.tick_s:
                        last_tick = now
                        for p in sorted(self.partitions):
                            self._emit(self.joiner.on_tick(p), p)
                    if now - last_stats >= policy.stats_s:
                        last_stats = now
                        self._publish_stats()
                    if now - last_commit >= policy.commit_s:
                        last_commit = now
                        self.commit()
                except _Rewound:
                    continue  # the rest of the batch is read again, from the last commit
                if now - last_purge >= policy.purge_s:
                    last_purge = now
                    self._purge()
            self.commit()
        finally:
            # Leaves the group at once (no session timeout to wait out); the revoke callback
            # commits whatever the last batch did.
            self.consumer.close()
            self.producer.flush(10)

    def _check_stall(self) -> None:
        """Tell the join when this loop itself stopped for longer than a stall: what it had
        read to the end may have grown meanwhile (see Joiner.on_stalled)."""
        now = time.monotonic()
        if now - self._checked_at > STALL_S:
            log.warning(
                "the loop stalled for %.1f s: idleness counts from now", now - self._checked_at
            )
            self.joiner.on_stalled()
        self._checked_at = now

    def metrics_port(self) -> int:
        return self.settings.join.metrics_port

    def register_metrics(self) -> None:
        REGISTRY.register(JoinCollector(self.joiner, lambda: set(self.partitions), self.router))

    def on_end_of_partition(self, topic: str, partition: int) -> None:
        self.joiner.on_caught_up(partition, *self.inputs[topic])

    def _handle(self, msg: Message) -> None:
        topic, p, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and p is not None and offset is not None
        value = msg.value()
        input, forwarded = self.inputs[topic]
        model: type[Recommendation | Outcome] = (
            Recommendation if input == "recommendations" else Outcome
        )
        try:
            event = parse(model, value, self.settings.max_record_bytes)
        except InvalidEventError as exc:
            letter = DeadLetter.of(str(exc), topic, p, offset, msg.key(), value, time.time())
            self._produce(self.letters, topic.encode(), letter.model_dump_json().encode(), 0)
        else:
            home = p if forwarded else self.router.home(input, event.user_id, msg.key(), p)
            if home != p:
                # To the worker that owns the user's partition, in this transaction: committed
                # with this input offset, or not at all.
                origin = f"{topic}/{p}/{offset}".encode()
                self._produce(
                    self.repartition[topic],
                    event.user_id.encode(),
                    value,
                    home,
                    [("streamlearn-origin", origin)],
                )
            elif isinstance(event, Recommendation):
                self._emit(self.joiner.on_recommendation(event, p, forwarded), p)
            else:
                self._emit(self.joiner.on_outcome(event, p, forwarded), p)
        self.next_offsets[(topic, p)] = offset + 1

    def _emit(self, examples: list[LabeledExample], partition: int) -> None:
        # Examples stay on the partition of the user they are about, as the inputs are.
        for e in examples:
            self._produce(
                self.examples, e.user_id.encode(), e.model_dump_json().encode(), partition
            )
        for slate in self.joiner.take_slates():
            self._produce(
                self.slates, slate.user_id.encode(), slate.model_dump_json().encode(), partition
            )

    def _produce(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        partition: int,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """Produce in the open transaction (beginning one if none is). Raises :class:`_Rewound`
        when the transaction could not go on and was aborted."""
        try:
            if not self.in_transaction:
                self.producer.begin_transaction()
                self.in_transaction = True
            while True:
                try:
                    if fails("joiner.produce-refused"):
                        raise KafkaException(KafkaError(KafkaError._STATE))
                    self.producer.produce(topic, value, key, partition=partition, headers=headers)
                    return
                except BufferError:  # the local queue is full: let it drain
                    self.producer.poll(0.05)
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal():
                raise  # fenced by a newer instance, say: the process must end
            # After a broker restart, messages of the open transaction that failed leave the
            # producer in an error state, and the next produce is refused ("Erroneous state",
            # flagged neither retriable nor abortable): abort, as a failed commit does.
            self._abort(error.str())
            raise _Rewound from exc

    def _publish_stats(self) -> None:
        stats = report(self.joiner, self.worker, self.partitions, self.router)
        self._produce(self.stats_topic, self.worker.encode(), stats.model_dump_json().encode(), 0)
        log.info(
            "join stats %s coverage=%s forwarded=%s",
            stats.counters,
            stats.coverage,
            stats.forwarded,
        )

    # ---- transactions -----------------------------------------------------------------------

    def commit(self) -> None:
        """Commit the state changes, outputs and input offsets of everything handled so far."""
        try:
            for p, key, value in self.state.drain():
                raw = None if value is None else orjson.dumps(value)
                self._produce(self.changelog, key.encode(), raw, p)
        except _Rewound:
            return  # aborted, as a failed commit is
        if not self.in_transaction and not self.next_offsets:
            return
        if not self.in_transaction:
            self.producer.begin_transaction()
            self.in_transaction = True
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.next_offsets.items()]
        producer, timeout = self.producer, self.settings.join.call_timeout_s
        try:
            if offsets:
                group = self.consumer.consumer_group_metadata()
                _watched(
                    lambda: producer.send_offsets_to_transaction(offsets, group, timeout),
                    timeout,
                    "sending offsets",
                )
            if fails("joiner.commit"):
                self._abort("failpoint joiner.commit")
                return
            if fails("joiner.commit-retriable"):
                raise KafkaException(KafkaError(KafkaError._TRANSPORT, retriable=True))
            hangs = fails("joiner.commit-hangs")
            _watched(
                _hang if hangs else lambda: producer.commit_transaction(timeout),
                timeout,
                "committing",
            )
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.retriable() or error.txn_requires_abort()):
                raise  # fatal (fenced by a newer instance, say): the process must end
            self._abort(error.str())
            return
        self.in_transaction = False
        if fails("joiner.stall"):  # the tests' stall, between transactions, past every idle timeout
            time.sleep(FAILPOINT_STALL_S)
        for (topic, p), offset in self.next_offsets.items():
            if self.inputs[topic][1]:
                self.joined[(topic, p)] = offset
        self.next_offsets.clear()

    def _purge(self) -> None:
        """Delete the forwarded records already joined, as Kafka Streams purges its
        repartition topics: their offsets are committed, so nobody reads them again."""
        if not self.joined:
            return
        upto = [TopicPartition(t, p, o) for (t, p), o in self.joined.items()]
        self.joined.clear()
        for future in self.admin.delete_records(upto, request_timeout=30).values():
            future.add_done_callback(_log_purge_failure)

    def _abort(self, why: str) -> None:
        """Abort the open transaction and go back to the last commit. The producer that met
        the failure is not used again: after a broker restart its next transactional call can
        hang for good, whatever its timeout (seen here with librdkafka 2.x; see
        confluentinc/librdkafka#5511). A new producer under the same transactional id aborts
        the open transaction as it initializes, and fences the old one."""
        log.warning("transaction aborted (%s): a new producer, rewinding to the last commit", why)
        self._renew_producer()
        self.next_offsets.clear()
        self._rewind()

    def _renew_producer(self) -> None:
        self.producer = self._transactional_producer()
        self.in_transaction = False

    def _rewind(self) -> None:
        """Back to the last committed transaction: state from the changelog, inputs from the
        committed offsets."""
        owned = sorted(self.partitions)
        self.state.drop_partitions(owned)
        self._recover(owned)
        # What the joiner scheduled from the aborted state is gone with it: windows closed in
        # the aborted transaction are open again and must be scheduled to close again.
        self.joiner.forget_partitions()
        assigned = self.consumer.assignment()
        committed = self.patiently(
            lambda: self._committed(assigned), away=_retriable, what="reading committed offsets"
        )
        for tp in committed:
            start = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, start))

    def _committed(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The group's committed offsets of ``partitions``, stable ones only (no transaction
        pending), asked by the admin client. Not the consumer's own ``committed``: after a broker
        restart that call waits behind the group's rebalance, which only the consumer loop it
        blocks can serve, and timed out for minutes on end here (the broker-restart test)."""
        if not partitions:
            return []
        group = f"{self.settings.topic_prefix}{self.group()}"
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        )
        futures = self.admin.list_consumer_group_offsets(
            [request], require_stable=True, request_timeout=30
        )
        found: list[TopicPartition] = futures[group].result().topic_partitions
        for tp in found:
            if tp.error is not None:
                raise KafkaException(tp.error)
        return found

    # ---- rebalances -------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        new = {tp.partition for tp in assigned if tp.topic == self.recs} - self.partitions
        self._recover(sorted(new))
        self.partitions |= new
        self.joiner.forget_partitions()
        log.info("assigned partitions %s (state of %s restored)", sorted(self.partitions), new)

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        # Still a member of the old generation here, so this commit is accepted.
        self.commit()
        self._forget({tp.partition for tp in revoked if tp.topic == self.recs})

    def _on_lost(self, consumer: Consumer, lost: list[TopicPartition]) -> None:
        # No longer a member: a commit would be refused, and another worker owns them now.
        # (Lost, not revoked: the broker may have been away, so not this producer again.)
        if self.in_transaction:
            self._renew_producer()
        self.next_offsets.clear()
        self.state.drain()
        self._forget({tp.partition for tp in lost if tp.topic == self.recs})

    def _forget(self, gone: set[int]) -> None:
        self.state.drop_partitions(gone)
        self.partitions -= gone
        self.next_offsets = {k: o for k, o in self.next_offsets.items() if k[1] not in gone}
        self.joiner.forget_partitions()
        log.info("released partitions %s", sorted(gone))

    def _recover(self, partitions: list[int]) -> None:
        """Read each partition's changelog, committed records only, up to its end."""
        if not partitions:
            return
        # Never commits: the group id is only a name here.
        reader = Consumer(
            consumer_config(self.settings, "joiner-restore", **{"enable.partition.eof": True})
        )
        try:
            todo: dict[int, int] = {}
            for p in partitions:
                # With read_committed this end is the last stable offset: nothing after it is
                # committed yet.
                low, end = reader.get_watermark_offsets(
                    TopicPartition(self.changelog, p), timeout=30, cached=False
                )
                if end > low:
                    todo[p] = end
            reader.assign([TopicPartition(self.changelog, p, OFFSET_BEGINNING) for p in todo])
            restored = 0
            while todo:
                for msg in reader.consume(1000, timeout=0.2):
                    error = msg.error()
                    if error is None:
                        raw = msg.value()
                        self.state.restore(
                            (msg.key() or b"").decode(), None if raw is None else orjson.loads(raw)
                        )
                        restored += 1
                    elif error.code() == KafkaError._PARTITION_EOF:
                        # The end of what is committed; the position may stop short of ``end``
                        # when transaction markers are last.
                        todo = {p: end for p, end in todo.items() if p != msg.partition()}
                    else:
                        raise KafkaException(error)
                positions = reader.position([TopicPartition(self.changelog, p) for p in todo])
                for tp in positions:
                    if tp.offset >= todo[tp.partition]:
                        del todo[tp.partition]
            windows = sum(1 for k, v in self.state.items() if k[0] == "r" and v["p"] in partitions)
            log.info(
                "restored %d changelog records of partitions %s: %d open windows",
                restored,
                partitions,
                windows,
            )
        finally:
            reader.close()


if __name__ == "__main__":
    TransactionalJoin.main()
