from __future__ import annotations

from streamlearn.clock import ManualClock
from streamlearn.joining import Joiner, JoinPolicy, JoinStats
from streamlearn.partitioning import Router, join_partition
from streamlearn.telemetry import JoinCollector


def test_every_counter_is_exposed_with_its_help() -> None:
    joiner = Joiner(JoinPolicy(window_s=10.0), {}, ManualClock(0.0))
    joiner.stats.negatives = 3
    router = Router(2)
    for user in ("u1", "u2", "u3", "u4"):
        elsewhere = 1 - join_partition(user, 2)
        router.home("outcomes", user, None, elsewhere)  # no key: forwarded
    families = {f.name: f for f in JoinCollector(joiner, lambda: [0], router).collect()}
    for name, help_text in JoinStats.help().items():
        assert families[f"streamlearn_join_{name}"].documentation == help_text
    assert families["streamlearn_join_negatives"].samples[0].value == 3
    forwarded = families["streamlearn_join_forwarded"].samples
    assert [(s.labels, s.value) for s in forwarded] == [
        ({"input": "outcomes", "guess": "no_key"}, 4.0)
    ]
