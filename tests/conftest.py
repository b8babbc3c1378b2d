"""Shared fixtures: the real broker and Redis, and a fresh namespace for every test.

Infrastructure comes from testcontainers when a Docker engine answers, otherwise from the
project's own ``infra/infra.sh up`` (Kafka from Maven Central JARs, Debian's redis-server).
Each test gets its own topic prefix, and so its own topics, consumer groups and Redis keys.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from confluent_kafka import KafkaException, Producer
from pydantic import BaseModel
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from streamlearn.errors import InfraError
from streamlearn.events import DeadLetter, LabeledExample, Outcome, Recommendation
from streamlearn.outbox import Courier, Outbox
from streamlearn.processes import home
from streamlearn.settings import Settings, TopicRole
from streamlearn.webhooks import Webhook
from tests.factories import SECRET, Receiver
from topics import delete_namespace, ensure_topics, producer_config

ROOT = Path(__file__).resolve().parent.parent
# Tests are development: their processes sign with the development key (a test that checks the
# refusal outside development mode says so itself).
os.environ.setdefault("STREAMLEARN_DEV_MODE", "true")
E = TypeVar("E", bound=BaseModel)


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    redis_url: str
    how: str


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    if os.environ.get("STREAMLEARN_TEST_INFRA", "auto") != "local" and _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        with KafkaContainer().with_kraft() as kafka, RedisContainer() as redis:
            host, port = redis.get_container_host_ip(), redis.get_exposed_port(6379)
            yield Infra(kafka.get_bootstrap_server(), f"redis://{host}:{port}/0", "testcontainers")
        return
    subprocess.run(["bash", str(ROOT / "infra" / "infra.sh"), "up"], check=True)
    yield Infra(
        f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}",
        f"redis://127.0.0.1:{os.environ.get('REDIS_PORT', '6379')}/0",
        "local script",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(infra: Infra, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for streamlearn processes in this test: real infra, fresh namespace.

    The namespace's topics are deleted afterwards: a broker that keeps every test's partitions
    grows by thousands per run and then takes minutes to recover after an unclean stop.
    """
    prefix = f"t{uuid.uuid4().hex[:10]}."
    yield {
        "STREAMLEARN_ARCHIVE_URL": f"file://{tmp_path}/archive",
        "STREAMLEARN_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "STREAMLEARN_REDIS_URL": infra.redis_url,
        "STREAMLEARN_TOPIC_PREFIX": prefix,
        "STREAMLEARN_API_PORT": str(free_port()),
        "STREAMLEARN_JOINER_METRICS_PORT": str(free_port()),
        "STREAMLEARN_TRAINER_METRICS_PORT": str(free_port()),
        "STREAMLEARN_MONITOR_METRICS_PORT": str(free_port()),
        "STREAMLEARN_ARCHIVER_METRICS_PORT": str(free_port()),
    }
    try:
        delete_namespace(Settings(kafka_bootstrap=infra.kafka_bootstrap, topic_prefix=prefix))
    except InfraError as exc:  # a leftover topic costs only disk; the test's verdict stands
        print(f"could not delete the test's topics: {exc}", file=sys.stderr)


@dataclass
class Processes:
    """Starts streamlearn processes with the test's environment; stops them all at the end."""

    env: dict[str, str]
    logs: Path
    running: dict[str, subprocess.Popen[bytes]]

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """Start ``python *args`` as ``name``, with the test's environment and ``env``."""
        full_env = {**os.environ, **self.env, **env, "PYTHONUNBUFFERED": "1"}
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, *args], env=full_env, cwd=ROOT, stdout=log, stderr=log
        )
        self.running[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.running.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def processes(env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(env, tmp_path, {})
    yield procs
    procs.stop_all()
    # Shown by pytest only when the test failed: what each process said last, without
    # librdkafka's own lines (``%3|...``), which a broker stopped at teardown repeats many times
    # a second and which would hide everything else.
    for name in procs.running:
        lines = [ln for ln in procs.log(name).splitlines() if not ln.startswith("%")]
        tail = lines[-LOG_TAIL_LINES:]
        print(f"---- the last {len(tail)} lines of {name}'s log ----", *tail, sep="\n")


LOG_TAIL_LINES = 40


def wait_until(
    condition: Callable[[], bool], what: str, timeout: float = 240.0, every: float = 0.5
) -> None:
    """Wait for a condition. The bound only keeps a broken run from hanging CI for ever: it is
    generous on purpose and no test asserts on speed."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except KafkaException as exc:  # a topic just created may have no leader yet
            last_error = exc
        time.sleep(every)
    raise AssertionError(f"gave up waiting for: {what} (last broker error: {last_error})")


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[tuple[int, int, bytes]]:
    """Every committed record of ``topic`` now, as (partition, offset, value)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        parts = c.list_topics(topic, timeout=timeout).topics[topic].partitions
        ends = {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout) for p in parts
        }
        todo = {p for p, (lo, hi) in ends.items() if hi > lo}
        c.assign([TopicPartition(topic, p, ends[p][0]) for p in parts])
        out: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=1.0):
                if m.error():
                    continue
                out.append((m.partition(), m.offset(), m.value()))
                # A transaction's commit marker takes the last offset: stop one short of it too.
                if m.offset() >= ends[m.partition()][1] - 2:
                    todo.discard(m.partition())
            for p in list(todo):
                if c.position([TopicPartition(topic, p)])[0].offset >= ends[p][1]:
                    todo.discard(p)
        return out
    finally:
        c.close()


def configure(processes: Processes, monkeypatch: pytest.MonkeyPatch, **extra: str) -> Settings:
    """Settings for this test (and the processes it starts), with its topics created."""
    processes.env.update(extra)
    for key, value in processes.env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    ensure_topics(settings)
    return settings


def produce(settings: Settings, records: list[tuple[str, bytes, bytes]]) -> list[tuple[int, int]]:
    """Produce in order and return where each record landed, as (partition, offset)."""
    producer = Producer(producer_config(settings))
    landed: dict[int, tuple[int, int]] = {}

    def delivered(n: int) -> Callable[[Any, Any], None]:
        return lambda err, msg: landed.__setitem__(n, (msg.partition(), msg.offset()))

    for n, (topic, key, value) in enumerate(records):
        producer.produce(topic, key=key, value=value, on_delivery=delivered(n))
    producer.flush(30)
    return [landed[n] for n in range(len(records))]


def produce_examples(settings: Settings, examples: list[LabeledExample]) -> None:
    """Labeled examples on the examples topic, keyed by user as the joiner keys them."""
    topic = settings.topic("examples")
    produce(settings, [(topic, e.user_id.encode(), e.model_dump_json().encode()) for e in examples])


def served_version(base: str) -> int | None:
    """The version the API at ``base`` serves; None while it does not answer or serves none."""
    served = served_model(base)
    return served[1] if served is not None else None


def served_model(base: str) -> tuple[str, int | None] | None:
    """The model and version the API at ``base`` serves; None while it does not answer."""
    try:
        health = httpx.get(f"{base}/healthz", timeout=2).json()
        version = health["model_version"]
        return str(health["model"]), int(version) if version is not None else None
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def letters(settings: Settings) -> list[DeadLetter]:
    return records(settings, "dead_letters", DeadLetter)


def records(settings: Settings, name: TopicRole, model: type[E]) -> list[E]:
    """Every committed record of one of streamlearn's topics, parsed."""
    raw = read_topic(settings.kafka_bootstrap, settings.topic(name))
    return [model.model_validate_json(v) for _, _, v in raw]


def examples(settings: Settings) -> list[LabeledExample]:
    return records(settings, "examples", LabeledExample)


def traffic(settings: Settings) -> tuple[list[Recommendation], list[Outcome], set[str]]:
    """The recommendations and outcomes on the topics, and the impressions' example ids."""
    recs = records(settings, "recommendations", Recommendation)
    outs = records(settings, "outcomes", Outcome)
    ids = {LabeledExample.id_for(r.recommendation_id, i.item_id) for r in recs for i in r.items}
    return recs, outs, ids


def converted(recs: list[Recommendation], outs: list[Outcome], window_s: float) -> set[str]:
    """Impressions with an outcome inside their window: what should be positive."""
    end = {r.recommendation_id: r.event_time + window_s for r in recs}
    return {
        LabeledExample.id_for(o.recommendation_id, o.item_id)
        for o in outs
        if o.recommendation_id in end and o.event_time <= end[o.recommendation_id]
    }


def trainer_committed(settings: Settings, group: str = "trainer") -> dict[int, int]:
    """The offsets a trainer's consumer group has committed on the examples topic."""
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic("examples")
    group = f"{settings.topic_prefix}{group}"
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        return {tp.partition: tp.offset for tp in c.committed(parts, timeout=10) if tp.offset >= 0}
    finally:
        c.close()


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, which it may stop and start again."""

    port: int
    dir: Path
    server: subprocess.Popen[bytes] | None = None
    persist: bool = False  # an append-only file, so a restart keeps the data
    password: str | None = None  # AUTH required (requirepass)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--save", "", "--dir", str(self.dir)]
        if self.persist:
            cmd += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        wait_until(self.answers, "the test's Redis to answer")

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if not shutil.which("redis-server"):
        pytest.skip("needs Debian's redis-server binary (make infra-up installs it)")
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@dataclass
class PrivateKafka:
    """A Kafka broker of the test's own (KRaft, from the JARs ``infra/infra.sh`` fetched), which
    it may stop and start again on the same log directory."""

    port: int
    controller_port: int
    dir: Path
    server: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def libs() -> Path:
        pom = (ROOT / "infra" / "kafka-pom.xml").read_text()
        version = pom.split("<kafka.version>")[1].split("</kafka.version>")[0]
        return home() / f"kafka-{version}" / "libs"

    def _java(self, *args: str) -> list[str]:
        return [
            "java",
            "-Xms128m",
            "-Xmx512m",
            f"-Dlog4j2.configurationFile={ROOT / 'infra' / 'log4j2.properties'}",
            "-cp",
            f"{self.libs()}/*",
            *args,
        ]

    def format(self) -> None:
        props = self.dir / "server.properties"
        host = "127.0.0.1"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers={host}:{self.controller_port}",
                    f"listeners=PLAINTEXT://{host}:{self.port},"
                    f"CONTROLLER://{host}:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{host}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.dir / 'logs'}",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                ]
            )
            + "\n"
        )
        cluster = subprocess.run(
            self._java("kafka.tools.StorageTool", "random-uuid"),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        subprocess.run(
            self._java(
                "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster, "-c", str(props)
            ),
            check=True,
            capture_output=True,
        )

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def start(self) -> None:
        with open(self.dir / "server.log", "ab") as out:
            self.server = subprocess.Popen(
                self._java("kafka.Kafka", str(self.dir / "server.properties")),
                stdout=out,
                stderr=out,
            )
        wait_until(self.answers, "the test's Kafka broker to answer")

    def stop(self) -> None:
        """A clean stop (SIGTERM), as an operator's restart or a rolling upgrade does."""
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(60)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()


@pytest.fixture
def private_kafka(infra: Infra, tmp_path: Path) -> Iterator[PrivateKafka]:
    if not (shutil.which("java") and PrivateKafka.libs().is_dir()):
        pytest.skip("needs the broker JARs and a JDK (make infra-up fetches them)")
    broker = PrivateKafka(free_port(), free_port(), tmp_path / "kafka")
    broker.dir.mkdir()
    broker.format()
    broker.start()
    yield broker
    broker.stop()


ARTIFACTS = ROOT / "test-artifacts"
"""Screenshots the browser tests keep (CI uploads the directory)."""

NEEDS_BROWSER = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian's chromium and chromium-driver (make browser installs them)",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium through its ChromeDriver (Debian's)."""
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1400",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on a free port, not yet listening (``receiver.start()``)."""
    r = Receiver(free_port())
    yield r
    r.stop()


def courier(outbox: Outbox, port: int) -> tuple[Courier, threading.Event, threading.Thread]:
    """The monitor's courier for the webhook ``oncall`` at ``port``, delivering in a thread
    until the event is set."""
    hook = Webhook(name="oncall", url=f"http://127.0.0.1:{port}/hook", secret=SECRET)
    c = Courier(outbox, hook, lambda a: f"http://dash/{a.model}", base_s=0.05, cap_s=0.5)
    stop = threading.Event()
    thread = threading.Thread(target=c.run, args=(stop,))
    thread.start()
    return c, stop, thread


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, Any]]:
    """moto's S3 server on loopback with a bucket ``snapshots``; obstore's options for it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds).create_bucket(
        Bucket="snapshots"
    )
    yield {
        "endpoint": endpoint,
        "access_key_id": "test",
        "secret_access_key": "test",
        "region": "us-east-1",
        "client_options": {"allow_http": True},
    }
    server.stop()
