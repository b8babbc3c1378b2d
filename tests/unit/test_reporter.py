"""The daily job's schedule: a failing day is tried again later, and the job goes on."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from consumers import reporter
from streamlearn.errors import ArchiveError
from streamlearn.settings import Settings


def test_a_failing_run_is_tried_again_and_never_ends_the_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stop = threading.Event()
    tried: list[dt.date] = []
    failures = [ArchiveError("nothing archived yet"), RuntimeError("the store went away")]

    def run_day(settings: Settings, day: dt.date) -> None:
        tried.append(day)
        if failures:
            raise failures.pop(0)
        stop.set()  # the third try succeeds: the schedule then goes on until stopped

    monkeypatch.setattr(reporter, "run_day", run_day)
    monkeypatch.setattr(reporter, "reported", lambda settings, day: False)
    reporter.schedule(Settings(daily={"hour": 0}), stop, check_s=0.01, retry_s=0.01)
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    assert tried[0] == yesterday and len(tried) == 3
