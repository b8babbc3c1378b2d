"""Prometheus's configuration for the processes of one machine, the local twin of
``deploy/prometheus.yml`` (which names docker-compose's hosts): every process that serves
``/metrics`` under the job name the Grafana dashboard and the rules use, on 127.0.0.1 at the
port its settings give (a process whose port is 0 serves none and is left out), and the
project's recording and alerting rules (``deploy/prometheus-rules.yml``).

>>> from streamlearn.settings import Settings
>>> config = scrape_config(Settings(), Path("rules.yml"), interval_s=1)
>>> [job["job_name"] for job in config["scrape_configs"]]
['api', 'joiner', 'trainer', 'monitor', 'archiver']
>>> config["global"]
{'scrape_interval': '1000ms', 'evaluation_interval': '1000ms'}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamlearn.settings import Settings

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus-rules.yml"


def scrape_config(settings: Settings, rules: Path, interval_s: float = 5.0) -> dict[str, Any]:
    ports = {
        "api": settings.api.port,
        "joiner": settings.join.metrics_port,
        "trainer": settings.training.metrics_port,
        "monitor": settings.monitor.metrics_port,
        "archiver": settings.archive.metrics_port,
    }
    every = f"{round(interval_s * 1000)}ms"
    return {
        "global": {"scrape_interval": every, "evaluation_interval": every},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in ports.items()
            if port
        ],
    }
