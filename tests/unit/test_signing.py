"""One signed framing for snapshots and the monitor's state, each tagged with its purpose."""

from __future__ import annotations

import hashlib
import hmac
import pickle

import pytest

from streamlearn import signing
from streamlearn.errors import SignatureError
from streamlearn.snapshots.base import Snapshot

KEY = b"one key for both"


def snapshot() -> Snapshot:
    return Snapshot(
        model_name="ctr",
        version=1,
        model={"w": 1.0},
        offsets={0: 3},
        samples_seen=3,
        metrics={},
        spec={},
        parent_version=None,
        created_at=0.0,
    )


def test_a_monitor_state_never_verifies_as_a_snapshot() -> None:
    state = signing.dumps({"format": 3, "monitor": None}, KEY, signing.MONITOR_STATE)
    with pytest.raises(SignatureError, match="monitor-state blob is not a snapshot"):
        Snapshot.verify(state, KEY)
    with pytest.raises(SignatureError, match="monitor-state blob is not a snapshot"):
        Snapshot.verify_meta(state, KEY)


def test_a_snapshot_never_verifies_as_a_monitor_state() -> None:
    blob = snapshot().sign(KEY)
    with pytest.raises(SignatureError, match="snapshot blob is not a monitor-state"):
        signing.loads(blob, KEY, signing.MONITOR_STATE)
    assert Snapshot.verify(blob, KEY).offsets == {0: 3}


def test_the_purpose_tag_is_signed() -> None:
    """Rewriting the tag in place breaks the signature: it cannot be relabelled."""
    blob = bytearray(signing.dumps([1, 2], KEY, signing.MONITOR_STATE))
    head = len(signing.MAGIC) + 32
    tag = signing.SNAPSHOT.encode().ljust(len(signing.MONITOR_STATE), b" ")
    blob[head + 1 : head + 1 + len(tag)] = tag
    with pytest.raises(SignatureError, match="does not verify"):
        signing.loads(bytes(blob), KEY, signing.MONITOR_STATE)
    with pytest.raises(SignatureError):
        signing.loads(bytes(blob), KEY, signing.SNAPSHOT)


def test_wrong_key_truncated_and_foreign_blobs_are_refused() -> None:
    blob = signing.dumps({"a": 1}, KEY, signing.MONITOR_STATE)
    with pytest.raises(SignatureError, match="does not verify"):
        signing.loads(blob, b"other", signing.MONITOR_STATE)
    with pytest.raises(SignatureError, match="not a streamlearn"):
        signing.loads(blob[:20], KEY, signing.MONITOR_STATE)
    # The monitor's framing before signing.py: an HMAC then the pickle, no magic.
    payload = pickle.dumps({"a": 1})
    old = hmac.new(KEY, payload, hashlib.sha256).digest() + payload
    assert not signing.is_signed(old)
    with pytest.raises(SignatureError, match="not a streamlearn monitor-state"):
        signing.loads(old, KEY, signing.MONITOR_STATE)


def test_snapshots_in_the_framing_before_signing_py_still_load() -> None:
    snap = snapshot()
    body = snap.sign(KEY)[len(signing.MAGIC) + 32 + 1 + len(signing.SNAPSHOT) :]
    legacy = b"SLS1" + hmac.new(KEY, body, hashlib.sha256).digest() + body
    assert Snapshot.verify(legacy, KEY).meta() == snap.meta()
    with pytest.raises(SignatureError, match="does not verify"):
        Snapshot.verify(legacy[:-1] + bytes([legacy[-1] ^ 1]), KEY)
