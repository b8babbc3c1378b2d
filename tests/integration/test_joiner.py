"""The joiner on the real broker: known answers, a SIGKILL mid-stream, a rebalance mid-stream."""

from __future__ import annotations

import collections
import re
import signal
import time

import httpx
import orjson
import pytest

from streamlearn.events import JoinReport
from streamlearn.settings import Settings
from tests.conftest import (
    Processes,
    configure,
    converted,
    examples,
    free_port,
    produce,
    read_topic,
    traffic,
    wait_until,
)

pytestmark = pytest.mark.integration


def reports(s: Settings) -> list[JoinReport]:
    raw = read_topic(s.kafka_bootstrap, s.topic("joiner_stats"))
    return [JoinReport.model_validate_json(v) for _, _, v in raw]


def test_scripted_stream_gives_exactly_the_expected_examples(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics_port = free_port()
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_ATTRIBUTION_WINDOW_S="4",
        STREAMLEARN_ALLOWED_LATENESS_S="0.5",
        STREAMLEARN_IDLE_TIMEOUT_S="2",
        STREAMLEARN_EARLY_OUTCOME_GRACE_S="3",
        STREAMLEARN_LATE_POLICY="correct",
        STREAMLEARN_JOINER_STATS_S="1",
        STREAMLEARN_JOINER_METRICS_PORT=str(metrics_port),
    )
    recs, outs = s.topic("recommendations"), s.topic("outcomes")
    processes.start("joiner", "-m", "consumers.joiner")
    wait_until(lambda: bool(reports(s)), "the joiner to publish its first stats")
    t = time.time()

    def rec(rid: str, user: str, at: float, items: list[str]) -> tuple[str, bytes, bytes]:
        body = {
            "recommendation_id": rid,
            "user_id": user,
            "event_time": at,
            "items": [
                {
                    "item_id": i,
                    "position": n,
                    "score": 0.2,
                    "propensity": 0.5,
                    "features": {"price": 1.0 + n},
                }
                for n, i in enumerate(items)
            ],
            "model_version": "v7",
        }
        return recs, user.encode(), orjson.dumps(body)

    def out(
        oid: str, rid: str | None, user: str, item: str, at: float, kind: str = "click"
    ) -> tuple[str, bytes, bytes]:
        body = {
            "outcome_id": oid,
            "recommendation_id": rid,
            "user_id": user,
            "item_id": item,
            "kind": kind,
            "value": 1.5,
            "event_time": at,
        }
        return outs, user.encode(), orjson.dumps(body)

    produce(
        s,
        [
            rec("A", "uA", t, ["a1", "a2", "a3"]),
            out("o1", "A", "uA", "a1", t + 1),  # in the window: positive
            out("o1", "A", "uA", "a1", t + 1),  # producer retry: duplicate
            out("o2", "A", "uA", "a1", t + 2, "add_to_cart"),  # second outcome: no 2nd label
            out("o3", "B", "uB", "b1", t + 1.5),  # before its recommendation
            out("o4", "ghost", "uG", "g1", t + 1),  # never a recommendation
            out("o5", "A", "uA", "zz", t + 1),  # an item A did not show
            out("o6", None, "uA", "a2", t + 1),  # no id, matching is off
            out("o7", "A", "uA", "a3", t + 6),  # after A's window: late
        ],
    )
    time.sleep(2)
    produce(s, [rec("B", "uB", t + 0.5, ["b1", "b2"])])  # out of order, within grace

    def ids() -> list[tuple[str, bool, bool]]:
        return sorted((e.example_id, e.label, e.correction) for e in examples(s))

    wait_until(lambda: ("A:a2", False, False) in ids(), "A's window to close")
    produce(s, [out("o8", "A", "uA", "a2", t + 3)])  # in-window time, after close
    expected = sorted(
        [
            ("A:a1", True, False),
            ("A:a2", False, False),
            ("A:a2", True, True),
            ("A:a3", False, False),
            ("A:a3", True, True),
            ("B:b1", True, False),
            ("B:b2", False, False),
        ]
    )
    wait_until(lambda: len(ids()) >= len(expected), "every expected example")
    time.sleep(3)  # a wrong extra example would have time to show
    assert ids() == expected

    by_id = {(e.example_id, e.correction): e for e in examples(s)}
    a1 = by_id[("A:a1", False)]
    assert (a1.position, a1.propensity, a1.served_score, a1.model_version) == (0, 0.5, 0.2, "v7")
    assert a1.item_features == {"price": 1.0} and a1.outcome_kind == "click"
    assert (a1.kind, a1.elapsed_s) == ("immediate", 1.0)
    assert (a1.recommendation_time, a1.outcome_time) == (t, t + 1)
    assert by_id[("B:b1", False)].outcome_time == t + 1.5

    want = {
        "recommendations": 2,
        "impressions": 5,
        "outcomes": 9,
        "positives": 2,
        "negatives": 3,
        "corrections": 2,
        "fake_negatives": 0,  # label mode window
        "delayed_positives": 0,
        "late_outcomes": 2,
        "late_positive_impressions": 2,
        "unmatched_outcomes": 3,
        "duplicate_outcomes": 2,
        "duplicate_recommendations": 0,
        "ignored_outcomes": 0,
    }
    wait_until(lambda: reports(s)[-1].counters == want, "the stats record to show every case")
    last = reports(s)[-1]
    assert last.coverage == pytest.approx(0.5)
    assert set(last.partitions) == set(range(s.partitions))
    assert all(h.pending_impressions == 0 for h in last.partitions.values())

    scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert "streamlearn_join_corrections_total 2.0" in scrape
    assert "streamlearn_join_duplicate_outcomes_total 2.0" in scrape
    assert "streamlearn_join_coverage 0.5" in scrape
    assert 'streamlearn_join_watermark_lag_seconds{partition="0"}' in scrape


# ---- disruptions -------------------------------------------------------------------------------

WINDOW_S = 3.0


def run_with(
    processes: Processes,
    monkeypatch: pytest.MonkeyPatch,
    disrupt: str,
    outcomes_partitioner: str = "murmur2_random",
    label_mode: str = "window",
) -> None:
    """Simulated traffic through the joiner while ``disrupt`` happens, then the exact check.
    With another ``outcomes_partitioner`` than the README's, most outcomes are forwarded
    through the repartition topic, in the transactions the disruption falls on. In label
    modes fnw and observe an impression may have a fake negative before its final label:
    each kind at most once, one final label each."""
    s = configure(
        processes,
        monkeypatch,
        STREAMLEARN_LABEL_MODE=label_mode,
        STREAMLEARN_OBSERVE_S="1",
        STREAMLEARN_ATTRIBUTION_WINDOW_S=str(WINDOW_S),
        STREAMLEARN_ALLOWED_LATENESS_S="1",
        STREAMLEARN_IDLE_TIMEOUT_S="3",
        STREAMLEARN_SIM_RATE="60",
        STREAMLEARN_SIM_MEAN_DELAY_S="1",
        STREAMLEARN_JOINER_METRICS_PORT="0",
    )
    if disrupt == "abort":  # one transaction aborted mid-stream, as a broker error would
        processes.env["STREAMLEARN_FAILPOINT"] = "joiner.commit:60"
    if disrupt == "renew":  # a commit the broker did not answer: a new producer takes over
        processes.env["STREAMLEARN_FAILPOINT"] = "joiner.commit-retriable:60"
    if disrupt == "hang":  # a commit that never returns, as librdkafka's can after a restart
        processes.env["STREAMLEARN_FAILPOINT"] = "joiner.commit-hangs:60"
        processes.env["STREAMLEARN_JOINER_CALL_TIMEOUT_S"] = "3"
    if disrupt == "stall":  # the joiner stops for 25 s after a commit, as a slow broker's would
        processes.env["STREAMLEARN_FAILPOINT"] = "joiner.stall:40"
    if disrupt == "refused":  # a produce refused mid-transaction, as after a broker restart
        processes.env["STREAMLEARN_FAILPOINT"] = "joiner.produce-refused:400"
    processes.start("joiner", "-m", "consumers.joiner")
    processes.env.pop("STREAMLEARN_FAILPOINT", None)
    processes.env.pop("STREAMLEARN_JOINER_CALL_TIMEOUT_S", None)
    wait_until(lambda: bool(reports(s)), "the joiner to start")
    sim = processes.start(
        "simulator",
        "-m",
        "consumers.simulator",
        "--duration",
        "30",
        "--drain",
        "8",
        "--outcomes-partitioner",
        outcomes_partitioner,
    )
    time.sleep(10)
    if disrupt == "sigkill":
        first = processes.running["joiner"]
        first.send_signal(signal.SIGKILL)
        first.wait()
        processes.start("joiner-restarted", "-m", "consumers.joiner")
    elif disrupt == "rebalance":
        processes.start("joiner-2", "-m", "consumers.joiner")
        time.sleep(10)
        processes.running["joiner"].terminate()  # the first leaves; the second takes it all
    assert sim.wait(120) == 0

    recs, outcomes, impressions = traffic(s)
    wait_until(lambda: len(examples(s)) >= len(impressions), "every impression joined", every=2)
    time.sleep(WINDOW_S + 3)
    got = examples(s)
    final = [e for e in got if e.kind != "fake_negative"]
    counts = collections.Counter(e.example_id for e in final)
    assert set(counts) == impressions
    assert max(counts.values()) == 1, counts.most_common(3)
    fakes = collections.Counter(e.example_id for e in got if e.kind == "fake_negative")
    if label_mode == "window":
        assert not fakes
    else:
        assert fakes and max(fakes.values()) == 1, fakes.most_common(3)
        # Every final negative and every delayed positive follows its fake negative.
        after_fake = {
            e.example_id for e in final if e.kind in ("real_negative", "delayed_positive")
        }
        assert after_fake == set(fakes)
        if label_mode == "fnw":
            assert set(fakes) == impressions

    positives = {e.example_id for e in got if e.label}
    assert positives == converted(recs, outcomes, WINDOW_S)  # none lost, none invented
    if disrupt == "abort":
        assert "transaction aborted (failpoint joiner.commit)" in processes.log("joiner")
    if disrupt == "renew":
        assert "transaction aborted (Local: Broker transport failure)" in processes.log("joiner")
    if disrupt == "stall":
        assert "the loop stalled for" in processes.log("joiner")
    if disrupt == "hang":
        assert "transaction aborted (committing had not returned 8 s later)" in processes.log(
            "joiner"
        )
    if disrupt == "refused":
        assert "transaction aborted (Local: Erroneous state)" in processes.log("joiner")
    forwarded = sum(sum(g.values()) for r in reports(s) for g in r.forwarded.values())
    if outcomes_partitioner == "murmur2_random":
        assert forwarded == 0
    else:
        assert forwarded > len(outcomes) / 3, "most outcomes should have taken the detour"
    if disrupt == "sigkill":
        restored = re.search(r": (\d+) open windows", processes.log("joiner-restarted"))
        assert restored and int(restored.group(1)) > 0, "the kill should leave windows open"


def test_sigkill_mid_stream_loses_and_repeats_nothing(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_with(processes, monkeypatch, "sigkill")


def test_a_second_joiner_joining_then_one_leaving(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_with(processes, monkeypatch, "rebalance")


def test_sigkill_while_forwarding_misplaced_outcomes(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes placed by librdkafka's default (CRC32): the kill aborts forwards in flight,
    and the restarted joiner forwards them again, once."""
    run_with(processes, monkeypatch, "sigkill", "consistent_random")


def test_a_rebalance_while_forwarding_unkeyed_outcomes(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes without a key, anywhere: forwarded to a partition whose owner changes."""
    run_with(processes, monkeypatch, "rebalance", "no-key")


def test_a_stall_of_the_joiner_while_forwarding_loses_nothing(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The joiner stops for 25 s between two transactions (as behind a commit the broker is slow
    to answer) while outcomes arrive unkeyed and are forwarded: every label exact afterwards.
    CI once lost 22 positives after such a stall; the race it hit (the stall's wall time taken
    for the inputs' silence) is pinned by the unit test test_a_stall_of_the_reader_is_not_
    idleness, which fails without Joiner.on_stalled: this one does not always hit it."""
    run_with(processes, monkeypatch, "stall", "no-key")


def test_an_aborted_transaction_loses_and_repeats_nothing(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows closed inside the aborted transaction open again from the changelog and close
    again: none is left open for ever, none labeled twice."""
    run_with(processes, monkeypatch, "abort")


def test_a_produce_refused_mid_transaction_loses_and_repeats_nothing(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a broker restart, librdkafka can refuse the next produce of the open transaction
    ("Erroneous state": seen in CI, the joiner died of it). The transaction is aborted, the rest
    of the batch read again from the last commit, while misplaced outcomes are forwarded."""
    run_with(processes, monkeypatch, "refused", "consistent_random")


@pytest.mark.parametrize("mode", ["fnw", "observe"])
def test_sigkill_in_each_label_mode(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Fake negatives, delayed positives and final negatives, each once through a SIGKILL."""
    run_with(processes, monkeypatch, "sigkill", label_mode=mode)


@pytest.mark.parametrize("mode", ["fnw", "observe"])
def test_a_rebalance_in_each_label_mode(
    processes: Processes, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    run_with(processes, monkeypatch, "rebalance", label_mode=mode)


def test_a_commit_the_broker_did_not_answer_loses_and_repeats_nothing(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retriable error at commit (the broker restarting, say): the open transaction is
    aborted by a new producer under the same id, and the state rewinds to the last commit."""
    run_with(processes, monkeypatch, "renew")


def test_a_commit_that_never_returns_loses_and_repeats_nothing(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transactional call that blocks past its timeout for good (librdkafka's can after a
    broker restart; one reading of a CI run whose broker-restart test waited 4 minutes for a
    join that never came): given up 5 s after its timeout, the transaction aborted by a new
    producer, every label exact. Without the watch the joiner blocks for ever and this test
    gives up waiting."""
    run_with(processes, monkeypatch, "hang")
