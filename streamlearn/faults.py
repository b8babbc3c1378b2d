"""Failpoints: named places where a test can make a process die, as FreeBSD's fail(9) or TiKV's
fail-rs allow. ``STREAMLEARN_FAILPOINT="trainer.before_snapshot:2"`` makes the process SIGKILL
itself the second time it reaches that point; unset, a failpoint costs one string comparison.

The crash tests use them to kill the trainer exactly between two steps of a checkpoint, which a
signal sent from outside could only hit by luck. :func:`fails` is the other kind: instead of
dying, the process takes its failure path there once (the joiner aborts a transaction, say).
"""

from __future__ import annotations

import os
import signal

_name, _, _count = os.environ.get("STREAMLEARN_FAILPOINT", "").partition(":")
_hits = 0


def failpoint(name: str) -> None:
    global _hits
    if name != _name:
        return
    _hits += 1
    if _hits >= int(_count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def fails(name: str) -> bool:
    """True the Nth time this point is reached (``STREAMLEARN_FAILPOINT="name:N"``), and never
    again: the caller then acts as if what it was doing had failed."""
    global _hits
    if name != _name:
        return False
    _hits += 1
    return _hits == int(_count or 1)
