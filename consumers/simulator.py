"""The storefront simulator process: produces recommendations now and their outcomes later.

Run: ``python -m consumers.simulator [--duration S] [--count N] [--via-api] [--flip-at S]
[--flip-after N]``.
Outcomes are produced when their event time comes; after the run it keeps producing the ones
still due within ``--drain`` seconds, so the ground truth on the topics is complete.

With ``--via-api`` it is a storefront that lets streamlearn choose: each slate comes from
``POST /v1/rank`` over 20 candidates, and the API publishes the recommendation event, with the
scores it served, so the monitor can judge the served model. Until a model is served (or when
the API does not answer) it draws the slate itself and publishes the event, unscored.
``--flip-at S`` turns every hidden preference to its opposite S seconds in: a concept change to
watch the drift alarm fire, and resolve as the model relearns. ``--flip-after N`` flips them
once the API has ranked N impressions instead: the monitor's warm-up counts served examples, so a
flip counted the same way comes at the same point of it on a fast machine and a slow one.
``--outcomes-partitioner`` plays a conversion service that does not partition as the README
asks (``murmur2_random`` keyed by user): librdkafka's default ``consistent_random`` (CRC32),
``fnv1a`` (Go's sarama), ``no-key``, or ``session-key`` (keyed by the recommendation, as a
service keying by session would), so the joiner has records to forward.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import signal
import time

import httpx
from confluent_kafka import Producer

from streamlearn.events import Outcome
from streamlearn.settings import get_settings
from streamlearn.simulation import Storefront
from topics import producer_config

log = logging.getLogger("streamlearn.simulator")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=None, help="seconds to run")
    parser.add_argument("--count", type=int, default=None, help="recommendations to produce")
    parser.add_argument("--drain", type=float, default=None, help="seconds to finish outcomes")
    parser.add_argument("--via-api", action="store_true", help="slates from POST /v1/rank")
    parser.add_argument("--api", default=None, help="the API's URL (default: API_HOST:API_PORT)")
    parser.add_argument(
        "--flip-at", type=float, default=None, help="seconds in: the hidden preferences flip"
    )
    parser.add_argument(
        "--flip-after",
        type=int,
        default=None,
        help="impressions ranked by the API: then the hidden preferences flip",
    )
    parser.add_argument(
        "--outcomes-until",
        type=float,
        default=None,
        help="stop sending outcomes after this many seconds (recommendations go on): the "
        "outage of a storefront's conversion feed",
    )
    parser.add_argument(
        "--outcomes-partitioner",
        choices=("murmur2_random", "consistent_random", "fnv1a", "no-key", "session-key"),
        default="murmur2_random",
        help="how the conversion service places outcomes (default: as the README asks)",
    )
    args = parser.parse_args(argv)
    s = get_settings()
    recs_topic, outcomes_topic = s.topic("recommendations"), s.topic("outcomes")
    shop = Storefront(
        s.sim_users,
        s.sim_items,
        s.sim_slate_size,
        s.sim_seed,
        traffic_seed=int(time.time()),
        mean_delay_s=s.sim_mean_delay_s,
    )
    producer = Producer(producer_config(s))
    placing = args.outcomes_partitioner
    librdkafka = placing if placing in ("consistent_random", "fnv1a") else "murmur2_random"
    outcomes_producer = Producer(producer_config(s, partitioner=librdkafka))
    pending: list[tuple[float, int, Outcome]] = []
    seq = recs = outs = 0
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def emit_due(now: float) -> None:
        nonlocal outs
        while pending and pending[0][0] <= now:
            _, _, outcome = heapq.heappop(pending)
            if args.outcomes_until is not None and now - start >= args.outcomes_until:
                continue
            key = {
                "no-key": None,
                "session-key": (outcome.recommendation_id or "").encode(),
            }.get(placing, outcome.user_id.encode())
            outcomes_producer.produce(
                outcomes_topic, key=key, value=outcome.model_dump_json().encode()
            )
            outs += 1

    url = args.api or f"http://{s.api.host}:{s.api.port}"
    api = httpx.Client(base_url=url, timeout=2) if args.via_api else None
    flipped = False
    served = 0  # impressions the API ranked

    def ranked(now: float) -> list[Outcome] | None:
        """A slate from the API, and what the user will do; None when the API cannot rank."""
        nonlocal served
        assert api is not None
        user, body = shop.rank_request(candidates=20, k=s.sim_slate_size)
        try:
            r = api.post("/v1/rank", json=body)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        answer = r.json()
        slate = [shop.item(i["item_id"]) for i in answer["items"]]
        served += len(slate)
        return shop.respond(answer["recommendation_id"], user, slate, now)

    start = time.time()
    next_at = start
    while not stopping:
        now = time.time()
        if args.duration is not None and now - start >= args.duration:
            break
        if args.count is not None and recs >= args.count:
            break
        due = (args.flip_at is not None and now - start >= args.flip_at) or (
            args.flip_after is not None and served >= args.flip_after
        )
        if due and not flipped:
            shop.flip()
            flipped = True
            log.info("the hidden preferences flipped (a concept change)")
        while next_at <= now:
            outcomes = ranked(now) if api is not None else None
            if outcomes is None:
                rec, outcomes = shop.recommend(now)
                producer.produce(
                    recs_topic, key=rec.user_id.encode(), value=rec.model_dump_json().encode()
                )
            recs += 1
            for o in outcomes:
                seq += 1
                heapq.heappush(pending, (o.event_time, seq, o))
            next_at += 1.0 / s.sim_rate
        emit_due(now)
        producer.poll(0)
        outcomes_producer.poll(0)
        time.sleep(min(0.01, max(0.0, next_at - time.time())))
    drain_until = time.time() + (args.drain if args.drain is not None else 4 * s.sim_mean_delay_s)
    while pending and not stopping and time.time() < drain_until:
        emit_due(time.time())
        outcomes_producer.poll(0)
        time.sleep(0.01)
    producer.flush(30)
    outcomes_producer.flush(30)
    log.info(
        "produced %d recommendations and %d outcomes (%d outcomes not yet due dropped)",
        recs,
        outs,
        len(pending),
    )


if __name__ == "__main__":
    main()
