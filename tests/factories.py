"""What tests share: examples, a trained snapshot, a rank request, a webhook receiver.

Test modules import these from here, never from one another."""

from __future__ import annotations

import json
import pickle
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from streamlearn.archive import SPECS, Roll
from streamlearn.clock import ManualClock
from streamlearn.events import LabeledExample
from streamlearn.fingerprint import fingerprint
from streamlearn.learning import ModelSpec
from streamlearn.simulation import Deployed, Storefront
from streamlearn.snapshots import Snapshot, SnapshotStore
from streamlearn.training import Training, TrainingPolicy
from streamlearn.webhooks import verify

DAY = 86_400.0
T0 = 1_764_374_400.0  # 2025-11-29 00:00 UTC


def example(label: bool, segment: str = "a") -> LabeledExample:
    return LabeledExample(
        example_id="r:i",
        recommendation_id="r",
        user_id="u",
        item_id="i",
        position=0,
        propensity=1.0,
        served_score=None,
        model_version=None,
        context={"segment": segment},
        item_features={"category": "b"},
        label=label,
        recommendation_time=0.0,
    )


def trained(version: int, n: int = 50, spec: ModelSpec | None = None) -> Snapshot:
    t = Training(
        spec or ModelSpec(),
        ManualClock(0.0),
        TrainingPolicy(checkpoint_every_n=1000, checkpoint_every_s=60.0),
    )
    for i in range(n):
        t.learn(example(True, "likes"), 0, 2 * i)
        t.learn(example(False, "dislikes"), 0, 2 * i + 1)
    return t.snapshot(version)


def item_example(rng: random.Random, items: int) -> LabeledExample:
    item = rng.randrange(items)
    return LabeledExample(
        example_id=f"r{rng.random()}:{item}",
        recommendation_id="r",
        user_id="u",
        item_id=f"item{item}",
        position=0,
        propensity=1.0,
        served_score=None,
        model_version=None,
        context={"segment": rng.choice("abcd")},
        item_features={"category": f"c{item % 7}", "price": item / items},
        label=rng.random() < 0.3,
        recommendation_time=0.0,
    )


def delta_training(spec: ModelSpec, full_every: int = 5, max_changed: float = 0.5) -> Training:
    policy = TrainingPolicy(
        checkpoint_every_n=10**6, full_every=full_every, delta_max_changed=max_changed
    )
    return Training(spec, ManualClock(0.0), policy)


def checkpoint_rounds(
    t: Training, store: SnapshotStore, rounds: int, per_round: int, items: int = 4000
) -> list[tuple[Snapshot, str]]:
    """Learn ``rounds`` times, checkpointing after each; each snapshot and what loading its
    model whole gives (pickled again)."""
    rng = random.Random(len(t.offsets) and t.offsets[0])
    offset = t.offsets.get(0, 0)
    made = []
    for _ in range(rounds):
        for _ in range(per_round):
            t.learn(item_example(rng, items), 0, offset)
            offset += 1
        version = store.next_version(t.spec.name)
        snapshot = t.snapshot(version)
        store.put(snapshot)
        t.checkpointed(version)
        made.append((snapshot, fingerprint(pickle.loads(pickle.dumps(t.learner, protocol=5)))))
    return made


RANK = {
    "user_id": "u1",
    "context": {"segment": "likes"},
    "items": [
        {"item_id": "a", "features": {"category": "b", "price": 0.5}},
        {"item_id": "b", "features": {"category": "b", "price": 0.1}},
        {"item_id": "c", "features": {"category": "b", "price": 0.9}},
    ],
    "k": 2,
}


SECRET = "receiver-secret"


@dataclass
class Receiver:
    """A webhook endpoint: answers from ``script`` (then 200), keeps what it accepted."""

    port: int
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    accepted: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    bad_signatures: int = 0
    server: ThreadingHTTPServer | None = None
    # Called with the count accepted so far, after each acceptance and before the answer.
    on_accept: Callable[[int], None] | None = None

    def webhook(self, name: str = "oncall") -> dict[str, str]:
        """Its configuration, as ``STREAMLEARN_WEBHOOKS`` lists it."""
        return {"name": name, "url": f"http://127.0.0.1:{self.port}/hook", "secret": SECRET}

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if not verify(SECRET.encode(), dict(self.headers.items()), raw, time.time()):
                    receiver.bad_signatures += 1
                status, extra = receiver.script.pop(0) if receiver.script else (200, {})
                receiver.answered.append(status)
                if status == 200:
                    receiver.accepted.append(
                        (self.headers["X-Streamlearn-Delivery"], json.loads(raw))
                    )
                    if receiver.on_accept is not None:
                        receiver.on_accept(len(receiver.accepted))
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def archive_of_examples(root: Path) -> list[tuple[int, int, float]]:
    """Two partitions of examples over two days, written as the archiver writes them; one
    example of the second day sits below the first day's last offset in partition 0. Returns
    (partition, offset, time) of each."""
    shop = Storefront(traffic_seed=3)
    made = shop.labeled_examples(300, start=T0 + 3600)
    written = []
    for p in (0, 1):
        roll = Roll("examples", p, 0, opened_at=0.0)
        for offset in range(150):
            e = made[offset * 2 + p]  # the partitions' times interleave
            at = e.recommendation_time + (DAY if offset == 100 and p == 0 else 0.0)
            if offset >= 140:
                at += DAY  # the tail: the next day
            e = e.model_copy(update={"recommendation_time": at})
            roll.add(SPECS["examples"].row(e, p, offset, int(at * 1000)), offset, 100)
            written.append((p, offset, at))
        for path, data in roll.files():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
    return written


def brute_auc(scored: list[tuple[float, bool]]) -> float:
    """ROC AUC by its definition, every positive against every negative, ties half: the
    slow and obvious way, to check the fast one."""
    pos = [p for p, y in scored if y]
    neg = [p for p, y in scored if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def storefront_days(
    days: int, per_day: int, flip_on: int | None, start: float
) -> list[list[LabeledExample]]:
    """``days`` days of a served storefront from ``start`` (a UTC midnight): ``per_day``
    examples each from 01:00, served by a model learning as it goes (served scores logged);
    the customers' tastes turn over at the start of day ``flip_on``."""
    clock = ManualClock(start)
    shop = Deployed(clock, traffic_seed=3)
    out = []
    for d in range(days):
        clock._t = start + d * DAY + 3600
        if d == flip_on:
            shop.shop.flip()
        out.append(shop.examples(per_day))
    return out


def archive_examples(root: Path, examples: list[LabeledExample]) -> None:
    """Examples archived as the archiver writes them: one partition, offsets from 0."""
    roll = Roll("examples", 0, 0, opened_at=0.0)
    for offset, e in enumerate(examples):
        at = int(e.recommendation_time * 1000)
        roll.add(SPECS["examples"].row(e, 0, offset, at), offset, 100)
    for path, data in roll.files():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)


class RecordingPublisher:
    """Kafka's place in these HTTP tests (the integration tests use the broker)."""

    def __init__(self) -> None:
        self.connected = True
        self.accepting = True
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.raw: list[bytes] = []  # the events as published

    def start(self) -> None:
        pass

    def close(self, timeout_s: float = 10.0) -> None:
        pass

    def publish(self, topic: str, key: str, value: bytes) -> bool:
        if self.accepting:
            self.events.append((topic, key, json.loads(value)))
            self.raw.append(value)
        return self.accepting

    def pending(self) -> int:
        return 0
