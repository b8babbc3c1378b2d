"""The main job: the whole loop with a simulated storefront, and a live line of progress.

Creates the topics, starts the joiner, trainer, monitor, API and simulator as separate processes
(their logs go to ``$STREAMLEARN_HOME/logs``), and prints what flows, read from the topics and the
snapshot store alone: recommendations, outcomes, joined examples, dead letters, the model version
and its rolling AUC. Ctrl-C stops everything.

Run: ``python -m consumers.loop [--duration S]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import httpx
from confluent_kafka import Consumer, KafkaException
from redis.exceptions import RedisError
from rich.console import Console
from rich.live import Live
from rich.text import Text

from streamlearn.errors import SnapshotNotFound
from streamlearn.processes import PROCESSES, home
from streamlearn.settings import Settings, TopicRole, get_settings
from streamlearn.snapshots import SnapshotStore, open_store
from topics import client_config, end_offsets, ensure_topics

DEMO_CHALLENGER = {"name": "ctr-fm", "learner": {"kind": "fm"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    parser.add_argument(
        "--flip-at",
        type=float,
        default=None,
        help="S seconds in, the simulated customers' preferences flip: watch the drift alarm",
    )
    parser.add_argument(
        "--flip-after",
        type=int,
        default=None,
        help="the same once the API has ranked N impressions",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stopped by a supervisor: stop children too
    s = get_settings()
    console = Console()
    created = ensure_topics(s)
    console.print(f"topics: {len(created)} created, prefix {s.topic_prefix!r}")
    logs = home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    # A challenger learns beside the champion, so the dashboard has one to compare: a factorization
    # machine, which learns the user-item interactions the logistic regression only crosses.
    os.environ.setdefault("STREAMLEARN_CHALLENGERS", json.dumps([DEMO_CHALLENGER]))
    # A simulated storefront is development: its processes may sign with the development key.
    os.environ.setdefault("STREAMLEARN_DEV_MODE", "true")
    for name, process in PROCESSES.items():
        if not process.in_loop:
            continue
        extra = process.loop_args
        if name == "simulator" and args.flip_at is not None:
            extra = (*extra, "--flip-at", str(args.flip_at))
        if name == "simulator" and args.flip_after is not None:
            extra = (*extra, "--flip-after", str(args.flip_after))
        with open(logs / f"{name}.log", "ab") as out:
            procs[name] = subprocess.Popen(process.command(*extra), stdout=out, stderr=out)
    api = f"http://{s.api.host}:{s.api.port}"
    console.print(f"logs in {logs}; dashboard at {api}/dashboard, API docs at {api}/docs")
    store = open_store(s)
    probe = Consumer(client_config(s, **{"group.id": "streamlearn-probe"}))
    line = Text("starting")
    start = time.time()
    code = 0
    try:
        with Live(console=console, refresh_per_second=2) as live:
            while args.duration is None or time.time() - start < args.duration:
                dead = [n for n, p in procs.items() if p.poll() not in (None, 0)]
                if dead:
                    console.print(f"[red]stopped unexpectedly: {', '.join(dead)}; see {logs}")
                    code = 1
                    break
                # A broker electing leaders or Redis restarting: keep showing the last line.
                with contextlib.suppress(KafkaException, RedisError):
                    line = _progress(s, probe, store, time.time() - start)
                live.update(line)
                time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        probe.close()
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    return code


def _auc(value: float) -> str:
    # River reports 0 while the window holds one class only, as at the start, when positives
    # arrive at once and negatives only as windows close.
    return f"{value:.3f}" if value > 0 else "n/a yet"


def _interrupt(*_: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the cleanup finish
    raise KeyboardInterrupt


def _progress(s: Settings, probe: Consumer, store: SnapshotStore, elapsed: float) -> Text:
    roles: tuple[TopicRole, ...] = ("recommendations", "outcomes", "examples", "dead_letters")
    count = {role: sum(end_offsets(probe, s.topic(role)).values()) for role in roles}
    try:
        meta = store.meta(s.model.name)
        model = (
            f"model {meta['model_name']} v{meta['version']} "
            f"seen {meta['samples_seen']} rolling AUC {_auc(meta['metrics']['rolling_roc_auc'])}"
        )
    except SnapshotNotFound:
        model = "model: no snapshot yet"
    try:
        served = httpx.get(f"http://{s.api.host}:{s.api.port}/healthz", timeout=0.5).json()
        api = f"API serves v{served['model_version']}"
    except httpx.HTTPError:
        api = "API starting"
    return Text(
        f"{elapsed:6.0f}s  recommendations {count['recommendations']}  "
        f"outcomes {count['outcomes']}  examples {count['examples']}  "
        f"dead letters {count['dead_letters']}  |  {model}  |  {api}"
    )


if __name__ == "__main__":
    sys.exit(main())
