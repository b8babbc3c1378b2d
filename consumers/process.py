"""The skeleton every Kafka consumer process shares: joiner, trainer and monitor.

A :class:`KafkaProcess` builds its consumer (group ``<prefix><name>``, read_committed, manual
commits), reads batches with one handling of consume errors (the end of a partition goes to
:meth:`KafkaProcess.on_end_of_partition`, anything else is logged), stops at SIGTERM or SIGINT
by setting ``stopping`` (its loop finishes the batch, checkpoints or commits, and leaves the
group), and :meth:`KafkaProcess.main` sets up logging and its Prometheus endpoint. What each does
with the records is its own.
"""

from __future__ import annotations

import logging
import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, ClassVar, TypeVar

from confluent_kafka import Consumer, KafkaError, Message
from prometheus_client import start_http_server
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from streamlearn.errors import ConfigError
from streamlearn.settings import Settings, get_settings
from topics import consumer_config

T = TypeVar("T")


def setup_logging() -> None:
    """Every process's log lines: time, level, logger, message; ``LOG_LEVEL`` (INFO)."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


class KafkaProcess(ABC):
    name: ClassVar[str]
    """The process's name: its consumer group (after the prefix) and its logger."""

    def __init__(self, settings: Settings, **consumer: Any) -> None:
        self.settings = settings
        self.log = logging.getLogger(f"streamlearn.{self.name}")
        self.consumer = Consumer(consumer_config(settings, self.group(), **consumer))
        self.stopping = False

    def group(self) -> str:
        """Its consumer group, after the prefix: by default its name."""
        return self.name

    @abstractmethod
    def run(self) -> None:
        """Read and handle until ``stopping``; then make what was done durable."""

    @abstractmethod
    def metrics_port(self) -> int:
        """Where its Prometheus endpoint listens; 0 for none."""

    def register_metrics(self) -> None:
        """Collectors that read the process's own state, registered before the endpoint starts."""
        return None

    def consume(self, n: int, timeout: float) -> Iterator[Message]:
        """Up to ``n`` records, in order; errors are dealt with here, and an end of partition
        when the iteration reaches it, after the caller has handled the records before it (a
        record read after an end says the partition has more)."""
        for msg in self.consumer.consume(n, timeout=timeout):
            error = msg.error()
            if error is None:
                yield msg
            elif error.code() == KafkaError._PARTITION_EOF:
                topic, partition = msg.topic(), msg.partition()
                if topic is not None and partition is not None:
                    self.on_end_of_partition(topic, partition)
            else:
                self.log.warning("consume error: %s", error)

    def patiently(
        self, call: Callable[[], T], *, away: Callable[[BaseException], bool], what: str
    ) -> T:
        """``call``, again with a capped backoff while it fails with an error ``away`` says
        will pass (a broker, Redis or the object store restarting), until the process is asked
        to stop; any other error, or the last one when stopping, is raised. The caller holds
        its offsets meanwhile: what is not done is read again."""

        def waiting(state: RetryCallState) -> None:
            wait = state.next_action.sleep if state.next_action else 0.0
            error = state.outcome.exception() if state.outcome else None
            self.log.warning("%s failed (%s): trying again in %.1f s", what, error, wait)

        again = Retrying(
            retry=retry_if_exception(away),
            wait=wait_exponential(multiplier=0.5, max=10),
            stop=lambda _: self.stopping,
            before_sleep=waiting,
            reraise=True,
        )
        return again(call)

    def on_end_of_partition(self, topic: str, partition: int) -> None:
        """The consumer has read everything there is in the partition, for now (only with
        ``enable.partition.eof``)."""
        return None

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.log.info("signal %d: finishing the batch and stopping", signum)
        self.stopping = True

    @classmethod
    def main(cls) -> None:
        setup_logging()
        settings = get_settings()
        try:
            settings.check_safe()
            process = cls(settings)
        except ConfigError as exc:
            raise SystemExit(f"streamlearn {cls.name}: {exc}") from None
        signal.signal(signal.SIGTERM, process.stop)
        signal.signal(signal.SIGINT, process.stop)
        if port := process.metrics_port():
            process.register_metrics()
            start_http_server(port, addr=process.settings.metrics_host)
        process.run()
