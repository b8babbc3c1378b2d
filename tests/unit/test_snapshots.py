from __future__ import annotations

import pytest

from streamlearn.clock import ManualClock
from streamlearn.errors import SignatureError
from streamlearn.learning import ModelSpec
from streamlearn.snapshots import Snapshot
from streamlearn.training import Training, TrainingPolicy


def snapshot() -> Snapshot:
    t = Training(
        ModelSpec(),
        ManualClock(5.0),
        TrainingPolicy(checkpoint_every_n=10, checkpoint_every_s=60.0),
    )
    return t.snapshot(1)


def test_round_trip_keeps_model_and_metadata() -> None:
    snap = snapshot()
    back = Snapshot.verify(snap.sign(b"key"), b"key")
    assert back.meta() == snap.meta()
    assert back.model.predict_proba_one({"x": 1.0}) == pytest.approx(0.5)


@pytest.mark.parametrize("where", [10, -1, 40])
def test_any_altered_byte_is_refused_before_unpickling(where: int) -> None:
    blob = bytearray(snapshot().sign(b"key"))
    blob[where] ^= 0x01
    with pytest.raises(SignatureError):
        Snapshot.verify(bytes(blob), b"key")


def test_wrong_key_and_garbage_are_refused() -> None:
    with pytest.raises(SignatureError):
        Snapshot.verify(snapshot().sign(b"key"), b"other key")
    with pytest.raises(SignatureError, match="not a streamlearn snapshot"):
        Snapshot.verify(b"garbage", b"key")
