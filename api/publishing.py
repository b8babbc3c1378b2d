"""Events the API publishes (recommendations it served, outcomes posted to it), never blocking a
request and never losing an event silently.

While Kafka is unreachable confluent-kafka keeps the events in its queue and retries them, up to
``api_buffer_max`` events and ``api_delivery_timeout_s`` each. Past the first bound an event is
dropped at once, past the second it fails: either way it is counted in
``streamlearn_api_events_lost_total{reason}`` and logged with its topic and key, so a loss is
never silent, and it costs the request nothing (the response says ``logged: false``).
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import Counter, Gauge

from streamlearn.settings import Settings
from topics import producer_config

log = logging.getLogger("streamlearn.publishing")

PUBLISHED = Counter(
    "streamlearn_api_events_published_total", "Events Kafka acknowledged.", ["topic"]
)
LOSSES = ("buffer_full", "refused", "not_delivered")
LOST = Counter(
    "streamlearn_api_events_lost_total",
    "Events that never reached Kafka: buffer full, or not delivered in time.",
    ["topic", "reason"],
)
# multiprocess_mode: how API_WORKERS' values add up (ignored with one worker).
BUFFERED = Gauge(
    "streamlearn_api_events_buffered", "Events waiting for Kafka.", multiprocess_mode="livesum"
)
KAFKA_UP = Gauge(
    "streamlearn_api_kafka_connected",
    "1 when the last metadata probe answered (the least of the workers').",
    multiprocess_mode="livemin",
)


class EventPublisher:
    """A producer with a background thread that serves its callbacks and probes the broker."""

    def __init__(self, settings: Settings, probe_every_s: float = 2.0) -> None:
        self.producer = Producer(
            producer_config(
                settings,
                **{
                    "queue.buffering.max.messages": settings.api.buffer_max,
                    "message.timeout.ms": int(settings.api.delivery_timeout_s * 1000),
                    "client.id": "streamlearn-api",
                },
            )
        )
        self.probe_every_s = probe_every_s
        # Every series from the start, at 0: no event lost reads as 0 rather than as no data.
        for topic in (settings.topic("recommendations"), settings.topic("outcomes")):
            PUBLISHED.labels(topic)
            for reason in LOSSES:
                LOST.labels(topic, reason)
        self.connected = False
        # Queued and not yet acknowledged or failed (len(producer) counts protocol requests too).
        self._outstanding = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join()
        left = self.producer.flush(timeout_s)
        if left:
            log.error("%d events still unpublished at shutdown", left)

    def publish(self, topic: str, key: str, value: bytes) -> bool:
        """Queue one event. False when the buffer is full and the event is dropped."""
        try:
            self.producer.produce(topic, value, key.encode(), on_delivery=self._delivered)
        except BufferError:
            LOST.labels(topic, "buffer_full").inc()
            log.error("event buffer full (Kafka unreachable?): dropped %s key=%s", topic, key)
            return False
        except KafkaException as exc:  # unknown topic and the like: the producer cannot take it
            LOST.labels(topic, "refused").inc()
            log.error("event refused by the producer: %s key=%s: %s", topic, key, exc)
            return False
        with self._lock:
            self._outstanding += 1
        return True

    def pending(self) -> int:
        return self._outstanding

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        topic = msg.topic() or "?"
        with self._lock:
            self._outstanding -= 1
        if err is None:
            PUBLISHED.labels(topic).inc()
            return
        LOST.labels(topic, "not_delivered").inc()
        log.error("event not delivered: %s key=%r: %s", topic, msg.key(), err)

    def _serve(self) -> None:
        next_probe = 0.0
        while not self._stop.is_set():
            self.producer.poll(0.1)
            BUFFERED.set(self._outstanding)
            now = time.monotonic()
            if now >= next_probe:
                next_probe = now + self.probe_every_s
                try:
                    self.producer.list_topics(timeout=1.0)
                    self.connected = True
                except KafkaException:
                    self.connected = False
                KAFKA_UP.set(int(self.connected))
