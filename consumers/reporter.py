"""The daily drift job: once a day, at ``DAILY_REPORT_HOUR`` (UTC), yesterday against the days
before it (:mod:`streamlearn.daily`); or one day on demand.

For the champion of the configured model it writes the report, HTML and JSON, to the event
archive (``events/reports/daily/<day>.html``), posts its link as an ``info`` alert (to the
alerts topic, and queued for every webhook, which the monitor's couriers deliver), and when a
retraining rule is met backfills a fresh challenger of the champion's spec and names it in the
model's registry, where the trainer finds it and learns it live; another ``info`` alert
announces it. A day already reported is not reported again by the schedule.

Run: ``python -m consumers.reporter`` (the schedule), ``python -m consumers.reporter --day
2026-11-29`` (or ``streamlearn report --day 2026-11-29``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import signal
import threading
import time
from types import FrameType

import obstore
import orjson
import redis
from confluent_kafka import Producer
from obstore.store import from_url

from consumers.process import setup_logging
from streamlearn.archive import PREFIX
from streamlearn.archive_query import connect
from streamlearn.clock import SystemClock
from streamlearn.daily import DailyReport, alerts, daily_report, retrain
from streamlearn.errors import SnapshotNotFound, StreamlearnError
from streamlearn.learning import Learner
from streamlearn.outbox import Outbox
from streamlearn.registry import Registry
from streamlearn.reports import daily_html
from streamlearn.settings import Settings, get_settings
from streamlearn.snapshots import open_store
from topics import producer_config

log = logging.getLogger("streamlearn.reporter")

REPORTS = f"{PREFIX}/reports/daily"


def report_path(day: dt.date, kind: str) -> str:
    return f"{REPORTS}/{day.isoformat()}.{kind}"


def _at(registry: Registry, model: str, moment: float) -> Learner | None:
    """The model's last version created before ``moment``, if it is still kept."""
    before = [v for v, at in registry.store.version_times(model) if at < moment]
    if not before:
        return None
    try:
        learner: Learner = registry.store.get(model, before[-1]).model
    except SnapshotNotFound:
        return None
    return learner


def run_day(settings: Settings, day: dt.date, retraining: bool = True) -> DailyReport:
    """Report on ``day``; retrain when a rule says so (and ``retraining``); alert."""
    policy = settings.daily
    con = connect(settings.store_url, settings.archive_options)
    registry = Registry(open_store(settings))
    spec = settings.model
    champion = registry.served_version(spec.name)
    midnight = dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()
    versions = {
        "champion": registry.store.get(spec.name, champion).model if champion else None,
        "start": _at(registry, spec.name, midnight - policy.reference_days * 86_400),
        "before": _at(registry, spec.name, midnight),
        "after": _at(registry, spec.name, midnight + 86_400),
    }
    report = daily_report(con, spec.name, champion, versions, day, policy)
    store = from_url(settings.store_url, **settings.archive_options)
    report.link = f"{settings.store_url.rstrip('/')}/{report_path(day, 'html')}"
    obstore.put(store, report_path(day, "html"), daily_html(report, policy.psi_shift).encode())
    log.info("%s: report for %s at %s (%s)", spec.name, day, report.link, report.triggers)
    retrained = None
    if report.retrain and retraining:
        # The champion's own spec, as it learns (a lineage keeps the spec it began with).
        served = versions["champion"]
        chosen = served.spec if served is not None else spec
        retrained = retrain(con, registry, chosen, day, policy, settings.training, SystemClock())
        log.warning("%s: retraining after %s: challenger %s", spec.name, day, retrained[0])
    made = alerts(report, retrained, time.time())
    hooks = [w.name for w in settings.monitor.webhooks]
    Outbox(redis.Redis.from_url(settings.redis_url, socket_timeout=5), settings.topic_prefix).send(
        made, hooks
    )
    producer = Producer(producer_config(settings))
    for a in made:
        producer.produce(
            settings.topic("alerts"), a.model_dump_json().encode(), a.dedup_key.encode()
        )
    producer.flush(30)
    # Written last: the schedule's mark that the day is done, alerts and all.
    obstore.put(store, report_path(day, "json"), orjson.dumps(report.as_json()))
    return report


def reported(settings: Settings, day: dt.date) -> bool:
    store = from_url(settings.store_url, **settings.archive_options)
    try:
        obstore.head(store, report_path(day, "json"))
    except FileNotFoundError:
        return False
    return True


def schedule(
    settings: Settings, stop: threading.Event, check_s: float = 60.0, retry_s: float = 600.0
) -> None:
    """Every ``check_s``: from the configured hour on, yesterday, unless it is reported. A run
    that fails (nothing archived, a store away) is logged and tried again ``retry_s`` later:
    the job never dies of one bad day."""
    while not stop.is_set():
        now = dt.datetime.now(dt.UTC)
        yesterday = now.date() - dt.timedelta(days=1)
        wait = check_s
        try:
            if now.hour >= settings.daily.hour and not reported(settings, yesterday):
                run_day(settings, yesterday)
        except StreamlearnError as exc:
            log.warning("no report for %s yet: %s", yesterday, exc)
            wait = retry_s
        except Exception:
            log.exception("the report for %s failed", yesterday)
            wait = retry_s
        stop.wait(wait)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--day", type=dt.date.fromisoformat, help="report on this day, now")
    parser.add_argument("--no-retrain", action="store_true", help="report and alert only")
    args = parser.parse_args(argv)
    setup_logging()
    settings = get_settings()
    try:
        settings.check_safe()
        if args.day is not None:
            report = run_day(settings, args.day, retraining=not args.no_retrain)
            print(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
            return 0
    except StreamlearnError as exc:
        print(f"error: {exc}")
        return 1
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    schedule(settings, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
