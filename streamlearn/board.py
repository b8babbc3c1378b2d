"""The monitor's board in Redis: what the monitor writes and the dashboard reads, in one place.

Keys (under the configured prefix):

* ``monitor``          the latest :meth:`~streamlearn.monitoring.Monitor.snapshot` (JSON)
* ``monitor-history``  a stream of :func:`~streamlearn.monitoring.history_point` entries, one per
                       evaluation (field ``point``), capped near ``HISTORY_POINTS``
* ``alerts-recent``    the newest ``RECENT_ALERTS`` alerts (JSON), newest first
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streamlearn.alerting import Alert

HISTORY_POINTS = 20_000  # a day and more at one point per evaluation
RECENT_ALERTS = 50


@dataclass(frozen=True)
class Board:
    client: Any  # a redis.Redis, or what quacks like one in a test
    prefix: str

    @property
    def current_key(self) -> str:
        return f"{self.prefix}monitor"

    @property
    def history_key(self) -> str:
        return f"{self.prefix}monitor-history"

    @property
    def alerts_key(self) -> str:
        return f"{self.prefix}alerts-recent"

    # ---- the monitor writes ---------------------------------------------------------------------

    def publish(self, snapshot: Mapping[str, Any], point: Mapping[str, Any]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.current_key, orjson.dumps(snapshot))
        pipe.xadd(
            self.history_key,
            {"point": orjson.dumps(point)},
            maxlen=HISTORY_POINTS,
            approximate=True,
        )
        pipe.execute()

    def record_alerts(self, alerts: Sequence[Alert]) -> None:
        if not alerts:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(self.alerts_key, *[a.model_dump_json() for a in alerts])
        pipe.ltrim(self.alerts_key, 0, RECENT_ALERTS - 1)
        pipe.execute()

    # ---- the dashboard reads --------------------------------------------------------------------

    def read(
        self, since_s: float, points: int
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
        """The latest figures (None until the monitor has published), the history since
        ``since_s`` (epoch seconds) evenly thinned to at most ``points``, and the recent alerts,
        newest first. Raises RedisError."""
        current = self.client.get(self.current_key)
        entries = self.client.xrange(self.history_key, f"{int(since_s * 1000)}-0", "+")
        recent = self.client.lrange(self.alerts_key, 0, -1)
        stride = max(1, -(-len(entries) // points))
        return (
            None if current is None else orjson.loads(current),
            [orjson.loads(fields[b"point"]) for _, fields in entries[::stride]],
            [orjson.loads(a) for a in recent],
        )
