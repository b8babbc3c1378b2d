"""The provisioned Grafana dashboard charts only metrics that streamlearn's processes export."""

from __future__ import annotations

import json
import re

from prometheus_client import REGISTRY

import api.app
import api.publishing  # noqa: F401
import consumers.monitor  # noqa: F401
from tests.conftest import ROOT


def test_every_metric_in_the_dashboard_is_exported() -> None:
    exported = set()
    for family in REGISTRY.collect():
        exported.add(family.name)
        exported.update(f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_count"))
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/streamlearn.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(streamlearn_[a-z_]+)", target["expr"])
    }
    assert used and used <= exported, used - exported
