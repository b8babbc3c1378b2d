"""The processes streamlearn runs, in one table: ``streamlearn run NAME`` starts one, and the
loop (``python -m consumers.loop``) starts every one marked ``in_loop``. Processes are modules
run as ``python -m``; they never import each other, so this table names them."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


def home() -> Path:
    """Where the local processes keep their files (logs, Prometheus's data, the Kafka JARs):
    ``$STREAMLEARN_HOME``, by default ``~/.cache/streamlearn`` as ``infra/infra.sh`` has it."""
    return Path(os.environ.get("STREAMLEARN_HOME", Path.home() / ".cache/streamlearn"))


@dataclass(frozen=True)
class Process:
    module: str
    about: str
    in_loop: bool = True
    loop_args: tuple[str, ...] = ()

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", self.module, *args]


PROCESSES = {
    "joiner": Process("consumers.joiner", "recommendations x outcomes -> examples, exactly once"),
    "trainer": Process("consumers.trainer", "examples -> models -> snapshots, then offsets"),
    "monitor": Process("consumers.monitor", "rolling metrics, drift, alarms, webhooks"),
    "archiver": Process(
        "consumers.archiver", "the event topics -> Hive-partitioned Parquet in the object store"
    ),
    "reporter": Process(
        "consumers.reporter", "the daily drift job: a report a day, retraining when it says so"
    ),
    "api": Process("api", "rank, score, outcomes, model admin, dashboard"),
    # In the loop a storefront that asks /v1/rank for its slates, so the served scores reach
    # the monitor.
    "simulator": Process(
        "consumers.simulator", "a storefront with a hidden ground truth", loop_args=("--via-api",)
    ),
    "loop": Process("consumers.loop", "all of the above, with a line of progress", in_loop=False),
}
