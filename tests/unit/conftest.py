"""Fixtures of the HTTP tests: a snapshot store on a local directory, Kafka's place."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamlearn.snapshots import ObjectSnapshotStore
from tests.factories import RecordingPublisher


@pytest.fixture
def store(tmp_path: Path) -> ObjectSnapshotStore:
    """A real store on a local directory: the API reads it as it reads the archive."""
    # These tests refresh the holder themselves: no follower swapping behind their back.
    return ObjectSnapshotStore(f"file://{tmp_path}", b"test-key", notices_poll_s=None)


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()
