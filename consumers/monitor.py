"""The monitor process: labeled examples and joiner reports in; figures, alarms and pages out.

Wiring around :class:`streamlearn.monitoring.Monitor`:

* reads the examples and joiner-stats topics (group ``<prefix>monitor``);
* every ``MONITOR_EVALUATE_S`` evaluates the rolling metrics, writes every figure to Redis
  (the board, :mod:`streamlearn.board`: the API and the dashboard read it) and to Prometheus;
* whenever alerts are made, and at each evaluation, saves its whole state (the monitor, the
  alarms, the input offsets; pickled and HMAC-signed) and queues the alerts for every webhook in
  one Redis transaction, then publishes them to the alerts topic; couriers (one thread per
  webhook) deliver the queues;
* on start, restores that state and seeks to its offsets: a restart neither repeats a page nor
  forgets an open alarm, and every example counts once in the figures.

Run: ``python -m consumers.monitor``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import Gauge

from consumers.process import KafkaProcess
from streamlearn import signing
from streamlearn.actions import Action, GateStep, Rollback, carry_out
from streamlearn.alerting import Alert
from streamlearn.board import Board
from streamlearn.clock import SystemClock
from streamlearn.errors import InvalidEventError, LeaseLost, SnapshotNotFound, StreamlearnError
from streamlearn.events import JoinReport, MonitoredExample, Slate, parse, parse_monitored
from streamlearn.faults import failpoint
from streamlearn.lease import Lease
from streamlearn.monitoring import JOIN, Monitor, history_point
from streamlearn.outbox import Courier, Outbox
from streamlearn.registry import CHAMPION, Registry, ServedRef
from streamlearn.settings import Settings
from streamlearn.snapshots import open_store
from topics import producer_config

log = logging.getLogger("streamlearn.monitor")

MODEL_FIGURE = Gauge(
    "streamlearn_monitor_model_metric",
    "Rolling metrics of each model's served stream and window, and its drift signals.",
    ["model", "window", "metric"],
)
FIGURE = Gauge(
    "streamlearn_monitor_metric",
    "Rolling metrics of each recently served version and window, of its settled impressions.",
    ["model_version", "window", "metric"],
)
JOIN_FIGURE = Gauge(
    "streamlearn_monitor_join", "Join health from the joiner's reports.", ["metric"]
)
STATE_FORMAT = 12  # raise it when Monitor's pickled attributes change: an older state is dropped
FIRING = Gauge("streamlearn_monitor_alarms_firing", "Alarms in the firing state.")
EVIDENCE = Gauge(
    "streamlearn_monitor_evidence",
    "Off-policy estimates of each model's conversion rate per slot on the logged slates, with "
    "their anytime bounds (figure: ips, ips_lower, ips_upper, snips..., dr..., slates).",
    ["model", "figure"],
)
EVIDENCE_WINDOW = Gauge(
    "streamlearn_monitor_evidence_window",
    "Off-policy estimates of each model over each window's slates, with fixed-sample 95% "
    "intervals (figure as in streamlearn_monitor_evidence).",
    ["model", "window", "figure"],
)
RANKING = Gauge(
    "streamlearn_monitor_ranking",
    "Each serving version's ranking against observed conversions per window.",
    ["model_version", "window", "metric"],
)
MATURITY = Gauge(
    "streamlearn_monitor_label_maturity",
    "Share of the impressions with their final label, by age in label-maturity buckets of "
    "recommendation time (0: the newest bucket).",
    ["age"],
)


class MonitorProcess(KafkaProcess):
    name = "monitor"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.examples = settings.topic("examples")
        self.stats = settings.topic("joiner_stats")
        self.slates = settings.topic("slates")
        self.alerts_topic = settings.topic("alerts")
        self.key = settings.snapshot_hmac_key.get_secret_value().encode()
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        self.registry = Registry(open_store(settings))
        self._exported: set[tuple[str, str, str]] = set()
        self.outbox = Outbox(self.redis, settings.topic_prefix)
        self.board = Board(self.redis, settings.topic_prefix)
        self.offsets: dict[tuple[str, int], int] = {}
        # Automatic actions decided and saved, not yet known to be done.
        self.pending: list[Action] = []
        # One monitor acts at a time: the others stand by until its lease expires, and take over
        # from the state it saved (streamlearn.lease).
        self.lease = Lease(
            self.redis, f"{settings.topic_prefix}monitor-lease", settings.monitor.lease_s
        )
        self.renewed_at = 0.0
        self.monitor = Monitor(settings.monitor, SystemClock(), settings.join)
        self.producer = Producer(producer_config(settings))

    # ---- state -----------------------------------------------------------------------------

    def _restore(self) -> Monitor | None:
        blob = self.outbox.state()
        if blob is None:
            return None
        # Unsigned in today's framing: saved by a streamlearn from before signing.py.
        signed = signing.is_signed(blob)
        state = signing.loads(blob, self.key, signing.MONITOR_STATE) if signed else {}
        if state.get("format") != STATE_FORMAT:  # saved by another streamlearn's Monitor
            log.warning("the saved state has another format: starting afresh")
            return None
        monitor: Monitor = state["monitor"]
        self.offsets = state["offsets"]
        self.pending = state["pending"]
        log.info(
            "restored: %d alarms firing, offsets %s", len(monitor.alarms.firing()), self.offsets
        )
        return monitor

    def _save(self, alerts: list[Alert]) -> None:
        """Save the state with ``alerts`` queued, then publish them. With Redis away the
        monitor holds here (reading nothing further) and tries again with a capped backoff:
        the alerts and the offsets are saved together or not at all, never lost."""
        self.patiently(
            lambda: self._record(alerts),
            away=lambda e: isinstance(e, redis.RedisError),
            what="saving the state (Redis is away)",
        )
        try:
            self.board.record_alerts(alerts)  # the dashboard's list: paged or not, they are queued
        except redis.RedisError as exc:
            log.warning("recent alerts not listed: %s", exc)
        for a in alerts:
            self.producer.produce(
                self.alerts_topic, a.model_dump_json().encode(), a.dedup_key.encode()
            )
            log.warning("alert %s %s: %s", a.status, a.dedup_key, a.summary)
        self.producer.poll(0)

    def _take_over(self) -> bool:
        """Wait for the lease (standing by while another monitor holds it), then restore the
        state saved last. False when asked to stop first."""
        told = False
        while not self.stopping:
            try:
                if self.lease.acquire():
                    break
            except redis.RedisError as exc:
                log.warning("lease not taken (Redis is away): %s", exc)
            if not told:
                log.info("standing by: another monitor holds %s", self.lease.key)
                told = True
            time.sleep(self.settings.monitor.lease_s / 3)
        else:
            return False
        self.renewed_at = time.monotonic()
        log.info("holding %s: this monitor acts", self.lease.key)
        restored = self._restore()
        if restored is not None:
            self.monitor = restored
        # Rules and bounds come from today's configuration, whatever a restored state had.
        self.monitor.configure(self.settings.monitor, self.settings.join)
        return True

    def _keep_lease(self) -> None:
        """Renew the lease every third of its time to live; LeaseLost once it is another's."""
        if time.monotonic() - self.renewed_at < self.settings.monitor.lease_s / 3:
            return
        try:
            if not self.lease.renew():
                raise LeaseLost(f"{self.lease.key} expired and was taken: another monitor acts")
        except redis.RedisError as exc:  # the save says whether it is still ours
            log.warning("lease not renewed (Redis is away): %s", exc)
            return
        self.renewed_at = time.monotonic()

    def _record(self, alerts: list[Alert]) -> None:
        state = {
            "format": STATE_FORMAT,
            "monitor": self.monitor,
            "offsets": dict(self.offsets),
            "pending": list(self.pending),
        }
        blob = signing.dumps(state, self.key, signing.MONITOR_STATE)
        self.outbox.record(
            blob, alerts, [w.name for w in self.settings.monitor.webhooks], self.lease
        )

    # ---- the loop ---------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            tp.offset = self.offsets.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        consumer.assign(assigned)

    def run(self) -> None:
        s = self.settings
        if not self._take_over():
            self.consumer.close()
            return
        stop = threading.Event()
        couriers = []
        lost = False

        def link(alert: Alert) -> str:
            return s.monitor.alert_link.format(model=alert.model, version=alert.model_version or "")

        for hook in s.monitor.webhooks:
            courier = Courier(self.outbox, hook, link)
            thread = threading.Thread(target=courier.run, args=(stop,), name=f"courier-{hook.name}")
            thread.start()
            couriers.append(thread)
        self.consumer.subscribe([self.examples, self.stats, self.slates], on_assign=self._on_assign)
        if self.pending:  # decided before a crash, maybe done: done now, once
            self._save(self._act())
        last_eval = time.monotonic()
        try:
            while not self.stopping:
                self._keep_lease()
                alerts: list[Alert] = []
                alerts += self._handle(self.consume(500, timeout=0.5))
                evaluate = time.monotonic() - last_eval >= s.monitor.evaluate_s
                if evaluate:
                    last_eval = time.monotonic()
                    self._follow_champions()
                    alerts += self.monitor.evaluate()
                    decision = self.monitor.judge()
                    if decision is not None:
                        self.pending.append(
                            GateStep(decision, s.model.name, self.monitor.gate.decisions)
                        )
                if alerts or evaluate:
                    # What the alerts call for is saved with them, before it is done.
                    self.pending += self._actions_for(alerts)
                    self._save(alerts)
                if self.pending:
                    done = self._act()
                    failpoint("monitor.acted")
                    self._save(done)
                if evaluate:
                    self._publish()
                    self._commit()
        except LeaseLost as exc:
            # Another monitor acts from the state saved last: this one saves nothing more.
            log.error("stopping: %s", exc)
            lost = True
        finally:
            if not lost:
                self._save([])
                self.lease.release()
            stop.set()
            for thread in couriers:
                thread.join()
            self.consumer.close()
            self.producer.flush(10)

    def _commit(self) -> None:
        """The saved offsets, committed too, for lag monitoring only (kafka-consumer-groups,
        the soak bench): the monitor resumes from those saved with its state."""
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.offsets.items()]
        if offsets:
            self.consumer.commit(offsets=offsets, asynchronous=True)

    def _handle(self, msgs: Iterable[Message]) -> list[Alert]:
        """Every record of a batch in order, the examples between two other records at once."""
        alerts: list[Alert] = []
        examples: list[MonitoredExample] = []
        examples_topic, offsets = self.examples, self.offsets
        for msg in msgs:
            topic, p, offset = msg.topic(), msg.partition(), msg.offset()
            assert topic is not None and p is not None and offset is not None
            offsets[(topic, p)] = offset + 1
            try:
                if topic == examples_topic:
                    examples.append(parse_monitored(msg.value()))
                    continue
                alerts += self.monitor.on_examples(examples)
                examples = []
                if topic == self.slates:
                    self.monitor.on_slate(parse(Slate, msg.value()))
                else:
                    alerts += self.monitor.on_join_report(parse(JoinReport, msg.value()))
            except InvalidEventError as exc:  # the joiner wrote it: log it, not ours to fix
                log.error("unreadable record %s[%d]@%d: %s", topic, p, offset, exc)
        return alerts + self.monitor.on_examples(examples)

    def _actions_for(self, alerts: list[Alert]) -> list[Action]:
        """The automatic rollbacks the alerts call for, each with what is served now."""
        policy = self.settings.monitor
        if policy.auto_action != "rollback":
            return []
        chosen = [
            a
            for a in alerts
            if a.status == "firing" and a.rule in policy.auto_action_rules and a.model != JOIN
        ]
        actions: list[Action] = []
        for a in chosen:
            # A challenger served under the champion's name is stepped back from there.
            name = self.settings.model.name if a.model == self.monitor.serving else a.model
            actions.append(Rollback(a, name, self._served(name)))
        return actions

    def _served(self, name: str) -> ServedRef | None:
        try:
            return self.registry.serving(name)
        except StreamlearnError as exc:  # the action will say it could not be done
            log.warning("could not read what %s serves: %s", name, exc)
            return None

    def _act(self) -> list[Alert]:
        """Do the pending actions; the alerts that say what was done."""
        out = []
        for action in self.pending:
            out += carry_out(action, self.registry, SystemClock())
        self.pending = []
        return out

    def _publish(self) -> None:
        snapshot = self.monitor.snapshot()
        snapshot["at"] = time.time()
        try:
            self.board.publish(snapshot, history_point(snapshot))
        except redis.RedisError as exc:  # the next evaluation publishes afresh
            log.warning("figures not published: %s", exc)
        for model, m in snapshot["models"].items():
            for window, metrics in m["windows"].items():
                for name, value in metrics.items():
                    MODEL_FIGURE.labels(model, window, name).set(value)
            MODEL_FIGURE.labels(model, "stream", "concept_drift").set(m["concept_drift"])
            for feature, value in m["psi"].items():
                MODEL_FIGURE.labels(model, "stream", f"psi:{feature}").set(value)
        exported = set()
        for tag, v in snapshot["versions"].items():
            for window, metrics in v["windows"].items():
                for name, value in metrics.items():
                    FIGURE.labels(tag, window, name).set(value)
                    exported.add((tag, window, name))
        for labels in self._exported - exported:  # versions no longer kept
            FIGURE.remove(*labels)
        self._exported = exported
        for name, value in snapshot["join"].items():
            JOIN_FIGURE.labels(name).set(value)
        FIRING.set(len(snapshot["firing"]))
        EVIDENCE.clear()
        for model, figures in snapshot["evidence"].items():
            for name, value in figures.items():
                EVIDENCE.labels(model, name).set(value)
        EVIDENCE_WINDOW.clear()
        for model, windows in snapshot["evidence_windows"].items():
            for window, figures in windows.items():
                for name, value in figures.items():
                    EVIDENCE_WINDOW.labels(model, window, name).set(value)
        RANKING.clear()
        for tag, windows in snapshot["ranking"].items():
            for window, metrics in windows.items():
                for name, value in metrics.items():
                    RANKING.labels(tag, window, name).set(value)
        MATURITY.clear()
        newest = snapshot["maturity"][-1]["start"] if snapshot["maturity"] else 0.0
        step = self.settings.join.window_s / self.settings.join.maturity_buckets
        for bucket in snapshot["maturity"]:
            MATURITY.labels(str(round((newest - bucket["start"]) / step))).set(bucket["share"])

    def _follow_champions(self) -> None:
        """Tell the monitor which model the API serves and where each model's champion points:
        a move restarts drift (and, of the served model, the evidence)."""
        served = self._served(self.settings.model.name)
        if served is not None:
            self.monitor.on_serving(served[0])
        for model in list(self.monitor.streams):
            try:
                champion = self.registry.resolve(model, CHAMPION)
            except SnapshotNotFound:
                champion = None  # no alias: the API serves the newest version
            except StreamlearnError as exc:
                log.warning("could not read %s's champion: %s", model, exc)
                continue
            self.monitor.on_champion(model, champion)

    def metrics_port(self) -> int:
        return self.settings.monitor.metrics_port


if __name__ == "__main__":
    MonitorProcess.main()
