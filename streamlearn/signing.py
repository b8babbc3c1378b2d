"""Signed blobs: the one framing for everything streamlearn signs with its key and later trusts
enough to unpickle (model snapshots, the monitor's saved state).

Wire form::

    b"SLSG" | HMAC-SHA256(key, signed) (32 bytes) | signed
    signed = len(purpose) (1 byte) | purpose (ASCII) | body

The purpose tag is inside the signed bytes, so a blob signed for one purpose never verifies for
another, even under the same key: a monitor state offered as a snapshot is refused, and so is the
reverse. Verification comes before anything is parsed or unpickled.

>>> blob = dumps({"w": 1.0}, b"k", MONITOR_STATE)
>>> loads(blob, b"k", MONITOR_STATE)
{'w': 1.0}
>>> loads(blob, b"k", SNAPSHOT)
Traceback (most recent call last):
...
streamlearn.errors.SignatureError: a monitor-state blob is not a snapshot: refusing to load it
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any, Final

from streamlearn.errors import SignatureError

MAGIC: Final = b"SLSG"
SNAPSHOT: Final = "snapshot"
MONITOR_STATE: Final = "monitor-state"
SNAPSHOT_META: Final = "snapshot-meta"
_MAC = 32
# The snapshot framing from before this module, without a purpose tag: still read, never written.
_LEGACY_SNAPSHOT = b"SLS1"


def is_signed(blob: bytes) -> bool:
    """Whether ``blob`` is in this framing at all (whatever its signature)."""
    return blob[: len(MAGIC)] == MAGIC


def sign(body: bytes, key: bytes, purpose: str) -> bytes:
    tag = purpose.encode("ascii")
    signed = bytes([len(tag)]) + tag + body
    return MAGIC + hmac.new(key, signed, hashlib.sha256).digest() + signed


def verify(blob: bytes, key: bytes, purpose: str) -> bytes:
    """The body of a blob signed for ``purpose`` with ``key``; raises SignatureError otherwise."""
    head = len(MAGIC) + _MAC
    if purpose == SNAPSHOT and blob[:4] == _LEGACY_SNAPSHOT and len(blob) >= head:
        return _checked(blob[4:head], blob[head:], key, purpose)
    if not is_signed(blob) or len(blob) < head + 1:
        raise SignatureError(f"not a streamlearn {purpose}: refusing to load it")
    signed = _checked(blob[len(MAGIC) : head], blob[head:], key, purpose)
    n = signed[0]
    tag = signed[1 : 1 + n].decode("ascii", "replace")
    if tag != purpose:
        raise SignatureError(f"a {tag} blob is not a {purpose}: refusing to load it")
    return signed[1 + n :]


def _checked(mac: bytes, signed: bytes, key: bytes, purpose: str) -> bytes:
    if not hmac.compare_digest(mac, hmac.new(key, signed, hashlib.sha256).digest()):
        raise SignatureError(f"{purpose} signature does not verify: refusing to load it")
    return signed


def dumps(obj: Any, key: bytes, purpose: str) -> bytes:
    """``obj`` pickled and signed for ``purpose``."""
    return sign(pickle.dumps(obj, protocol=5), key, purpose)


def loads(blob: bytes, key: bytes, purpose: str) -> Any:
    """The object of a blob signed for ``purpose``, unpickled only once it verifies."""
    return pickle.loads(verify(blob, key, purpose))
