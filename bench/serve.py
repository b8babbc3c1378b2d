"""/v1/rank under load: latency and throughput of one API worker, and zero errors across swaps.

The API runs as its own process (``python -m api``: one uvicorn worker, access log off) against
the real Kafka and Redis, serving a logistic regression trained on simulated traffic. Each
request ranks 100 candidates (k = 10) and publishes its recommendation event. An open-loop
client in this process sends requests at fixed rates (each on its own schedule, so a slow
response does not hold back the next request), then at the top rate again while a new version
is promoted every two seconds. Latency is measured by the client from send to full response, on
the same 2-core machine as the server, the broker and Redis. Raw: the server's own time for every
request of the one-worker runs, from its request-latency histogram.

Then the knee: rates 25% apart from 50/s, 6 s each, up to the last at which every request is
answered, p99 stays under 10 ms (and, for a knee this shared machine can show, 25 ms) and the
server keeps up, narrowed to about 6% by two halvings of the step above it; on one worker,
then on two (``API_WORKERS=2``: two processes on the port, each following the registry). And,
first on the fresh server, the goal itself: 1,500/s on one worker for 10 s.

The baseline: the same knee of uvicorn serving a bare ASGI app that reads each request and
answers a fixed body (no FastAPI, no scoring, no Kafka), with the same client on the same
cores: the most any one-worker Python API can show here.

Run: ``python bench/serve.py`` after ``make infra-up``. The last line is one JSON object.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import uvloop
from common import api_env

from streamlearn.clock import ManualClock, SystemClock
from streamlearn.learning import ModelSpec
from streamlearn.registry import Registry
from streamlearn.settings import Settings
from streamlearn.simulation import Deployed, Storefront
from streamlearn.snapshots import SnapshotStore, open_store
from streamlearn.training import Training, TrainingPolicy
from topics import delete_namespace, ensure_topics

os.environ.setdefault("STREAMLEARN_DEV_MODE", "true")  # a bench is development

ROOT = Path(__file__).resolve().parent.parent
RATES = (100, 250, 500)
SECONDS = 10.0
SWAP_EVERY_S = 2.0
CANDIDATES = 100
CONNECTIONS = 32
KNEE_SECONDS = 6.0
KNEE_P99_MS = (10.0, 25.0)  # the bound, and one this shared machine can show a knee at
GOAL_RPS = 1500  # issue 16's goal for one worker, at p99 under 10 ms


def train_versions(store: SnapshotStore, versions: int = 2, n: int = 20_000) -> None:
    """Versions of the champion, trained on simulated examples (each on a different slice)."""
    world = Deployed(ManualClock(0.0), traffic_seed=3)
    training = Training(
        ModelSpec(), SystemClock(), TrainingPolicy(checkpoint_every_n=10**9, checkpoint_every_s=1e9)
    )
    offset = 0
    for version in range(1, versions + 1):
        for example in world.examples(n):
            training.learn(example, 0, offset)
            offset += 1
        store.put(training.snapshot(version))


def requests(count: int) -> list[bytes]:
    shop = Storefront(world_seed=7, traffic_seed=11)
    out = []
    for _ in range(count):
        user = shop.rng.choice(shop.users)
        items = shop.rng.sample(shop.items, CANDIDATES)
        body = {
            "user_id": user.user_id,
            "context": shop.context(user),
            "items": [
                {"item_id": it.item_id, "features": shop.item_features(it, 0)} for it in items
            ],
            "k": 10,
        }
        out.append(json.dumps(body).encode())
    return out


class Connection:
    """One keep-alive HTTP/1.1 connection: a bare request writer and response reader, far
    lighter than a general client, so that the load generator is not what gets measured."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def post(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        self.writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        if not status_line:
            raise ConnectionError("closed by the server")
        return int(status_line.split()[1]), await self.reader.readexactly(length)


async def drive(
    host: str, port: int, rate: float, seconds: float, bodies: list[bytes]
) -> dict[str, Any]:
    """Open loop: request i is due at ``i / rate`` whether or not earlier ones have answered,
    and its latency runs from when it was due (no coordinated omission)."""
    head = (
        b"POST /v1/rank HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: "
    )
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        pool.put_nowait(await Connection.open(host, port))
    latencies: list[float] = []
    errors: list[str] = []

    async def one(due: float, body: bytes) -> None:
        conn = await pool.get()
        try:
            status, payload = await conn.post(head, body)
            if status != 200:
                errors.append(f"{status} {payload[:200]!r}")
            elif b'"model_version"' not in payload:  # a response always names its version
                errors.append(f"no version: {payload[:200]!r}")
            else:
                latencies.append(time.perf_counter() - due)
            pool.put_nowait(conn)
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            errors.append(repr(exc))
            pool.put_nowait(await Connection.open(host, port))

    n = int(rate * seconds)
    start = time.perf_counter()
    tasks = []
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due, bodies[i % len(bodies)])))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().writer.close()
    ms = sorted(x * 1000 for x in latencies)
    return {
        "target_rps": rate,
        "rps": round(len(latencies) / elapsed, 1),
        "answered": len(latencies),
        "p50_ms": round(statistics.median(ms), 2) if ms else None,
        "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 2) if ms else None,
        "max_ms": round(ms[-1], 2) if ms else None,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def server_p99_ms(url: str) -> float | None:
    """The server's own p99 for /v1/rank (answered 200), from its histogram: the upper bound
    of the bucket it falls in."""
    text = httpx.get(f"{url}/metrics").text
    buckets = []
    for line in text.splitlines():
        if (
            line.startswith('streamlearn_api_request_seconds_bucket{le="')
            and 'route="/v1/rank",status="200"' in line
        ):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float(le), float(line.split()[-1])))
    if not buckets:
        return None
    total = buckets[-1][1]
    return next(le * 1000 for le, count in buckets if count >= 0.99 * total)


BARE_BODY = b'{"model_version": 0, "items": []}'


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The baseline's ASGI app: reads the request, answers :data:`BARE_BODY`."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BARE_BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BARE_BODY})


def start_bare(port: int) -> subprocess.Popen[bytes]:
    """uvicorn with :func:`bare_app`, one worker, as ``python -m api`` runs (access log off)."""
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "serve:bare_app"),
            *("--port", str(port), "--no-access-log", "--log-level", "warning"),
        ],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/")
            return server
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                server.terminate()
                raise SystemExit("the bare uvicorn did not start") from None
            time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) of process ``pid`` and every process it started, from /proc:
    what a server spent, its uvicorn workers and its Kafka client's threads included."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # ended meanwhile
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        used[child] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(used.get(p, 0.0) for p in tree)


def run(coroutine: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    return uvloop.run(coroutine)


def start_api(url: str, workers: int = 1) -> subprocess.Popen[bytes]:
    """``python -m api`` with ``workers`` worker processes, once ready (and every worker with
    the model: /healthz names the worker that answered)."""
    log = Path(tempfile.mkdtemp()) / "api.log"
    out = log.open("wb")
    env = {**os.environ, "STREAMLEARN_API_WORKERS": str(workers)}
    server = subprocess.Popen(
        [sys.executable, "-m", "api"], cwd=ROOT, stdout=out, stderr=out, env=env
    )
    ready: set[int] = set()
    deadline = time.monotonic() + 60
    while len(ready) < workers:
        if time.monotonic() > deadline:
            server.terminate()
            raise SystemExit(f"the API did not become ready; see {log}")
        try:
            with httpx.Client() as fresh:
                if fresh.get(f"{url}/readyz").status_code == 200:
                    ready.add(fresh.get(f"{url}/healthz").json()["worker"])
        except httpx.HTTPError:
            time.sleep(0.2)
    return server


def knee(port: int, bodies: list[bytes]) -> dict[float, int]:
    """For each p99 bound of KNEE_P99_MS, the highest rate at which /v1/rank answers every
    request within it and keeps up (95% of the rate): steps 25% apart, then two halvings
    (geometric) of the step above the last one passed, to about 6%. Run on a fresh server
    (after a warm-up), before any run that saturates it leaves a backlog."""
    run(drive("127.0.0.1", port, 50, 2, bodies))

    def p99_ms(rate: float) -> float:
        """The p99 at ``rate``, infinite when a request failed or the server fell behind."""
        result = run(drive("127.0.0.1", port, rate, KNEE_SECONDS, bodies))
        print(f"  knee search {rate:6.0f} rps: p99 {result['p99_ms']} ms, {result['rps']} rps")
        kept_up = result["errors"] == 0 and result["rps"] >= 0.95 * rate
        return result["p99_ms"] if kept_up and result["p99_ms"] is not None else math.inf

    best = dict.fromkeys(KNEE_P99_MS, 0.0)
    above = dict.fromkeys(KNEE_P99_MS, 0.0)  # the lowest failed rate above the best
    rate, failed = 50.0, dict.fromkeys(KNEE_P99_MS, 0)
    # A shared machine's p99 is noisy: a bound's search ends at its second failure in a row.
    while min(failed.values()) < 2:
        p99 = p99_ms(rate)
        for bound in KNEE_P99_MS:
            if failed[bound] >= 2:
                continue
            if p99 < bound:
                best[bound], failed[bound] = rate, 0
            else:
                failed[bound] += 1
                if failed[bound] == 1:
                    above[bound] = rate
        rate *= 1.25
    for bound in KNEE_P99_MS:
        for _ in range(2):
            if best[bound] and above[bound]:
                middle = (best[bound] * above[bound]) ** 0.5
                if p99_ms(middle) < bound:
                    best[bound] = middle
                else:
                    above[bound] = middle
    return {bound: int(rate) for bound, rate in best.items()}


def main() -> None:
    port = 18000 + random.randrange(1000)
    os.environ.update(api_env(port))
    settings = Settings()
    ensure_topics(settings)
    atexit.register(delete_namespace, settings)  # a bench's topics are throwaway
    store = open_store(settings)
    train_versions(store)
    url = f"http://127.0.0.1:{port}"
    server = start_api(url)
    try:
        bodies = requests(200)
        gc.freeze()  # the client's own full collections would be measured as latency
        run(drive("127.0.0.1", port, 50, 2, bodies))  # warm-up: connections, caches
        # The goal first, on the fresh server: the knee's search ends by saturating it.
        server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
        goal = run(drive("127.0.0.1", port, GOAL_RPS, SECONDS, bodies))
        answered = max(goal["answered"], 1)
        server_ms = round((cpu_seconds(server.pid) - server_cpu) / answered * 1000, 3)
        client_ms = round((time.process_time() - client_cpu) / answered * 1000, 3)
        print(
            f"{GOAL_RPS} rps (the goal): {goal['rps']} rps  p50 {goal['p50_ms']} ms  "
            f"p99 {goal['p99_ms']} ms  errors {goal['errors']}  CPU per request: server "
            f"{server_ms} ms, client {client_ms} ms"
        )
        knee_1 = knee(port, bodies)
        steady = []
        for rate in RATES:
            result = run(drive("127.0.0.1", port, rate, SECONDS, bodies))
            steady.append(result)
            print(
                f"{rate:4d} rps target: {result['rps']:7.1f} rps  p50 {result['p50_ms']} ms  "
                f"p99 {result['p99_ms']} ms  max {result['max_ms']} ms  errors {result['errors']}"
            )

        registry = Registry(store)
        stop = threading.Event()
        swaps = 0

        def promote() -> None:
            nonlocal swaps
            version = 1
            while not stop.wait(SWAP_EVERY_S):
                registry.promote("ctr", version)
                swaps += 1
                version = 3 - version

        swapper = threading.Thread(target=promote)
        swapper.start()
        try:
            during = run(drive("127.0.0.1", port, RATES[-1], 2 * SECONDS, bodies))
        finally:
            stop.set()
            swapper.join()
        print(
            f"{RATES[-1]:4d} rps with {swaps} promotions: {during['rps']} rps  "
            f"p50 {during['p50_ms']} ms  p99 {during['p99_ms']} ms  errors {during['errors']}"
        )
        server_p99 = server_p99_ms(url)
    finally:
        server.terminate()
        server.wait(30)
    server = start_api(url, workers=2)
    try:
        knee_2 = knee(port, bodies)
    finally:
        server.terminate()
        server.wait(30)
    server = start_bare(port)
    try:
        knee_bare = knee(port, bodies)
    finally:
        server.terminate()
        server.wait(30)
    top = steady[-1]
    figures = {
        "candidates": CANDIDATES,
        "rps": top["rps"],
        "target_rps": top["target_rps"],
        "rank_p50_ms": top["p50_ms"],
        "rank_p99_ms": top["p99_ms"],
        "errors": sum(r["errors"] for r in steady),
        "by_rate": {
            str(r["target_rps"]): {k: r[k] for k in ("rps", "p50_ms", "p99_ms")} for r in steady
        },
        "swaps": swaps,
        "rps_during_swaps": during["rps"],
        "rank_p99_ms_during_swaps": during["p99_ms"],
        "errors_during_swaps": during["errors"],
        "server_p99_ms_bucket": server_p99,
        "knee_rps_1_worker": knee_1[10.0],
        "knee_rps_2_workers": knee_2[10.0],
        "knee_rps_1_worker_p99_25ms": knee_1[25.0],
        "knee_rps_2_workers_p99_25ms": knee_2[25.0],
        "knee_ratio_2_to_1": round(knee_2[10.0] / knee_1[10.0], 2) if knee_1[10.0] else None,
        "knee_ratio_2_to_1_p99_25ms": (
            round(knee_2[25.0] / knee_1[25.0], 2) if knee_1[25.0] else None
        ),
        "knee_rps_bare_uvicorn": knee_bare[10.0],
        "knee_rps_bare_uvicorn_p99_25ms": knee_bare[25.0],
        "knee_ratio_1_worker_to_bare_p99_25ms": (
            round(knee_1[25.0] / knee_bare[25.0], 3) if knee_bare[25.0] else None
        ),
        "goal_rps": GOAL_RPS,
        "rps_at_goal_1_worker": goal["rps"],
        "rank_p99_ms_at_goal_1_worker": goal["p99_ms"],
        "errors_at_goal_1_worker": goal["errors"],
        "server_cpu_ms_per_request_at_goal": server_ms,
        "client_cpu_ms_per_request_at_goal": client_ms,
        "goal_p99_ms": 10.0,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
