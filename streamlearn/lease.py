"""A lease in Redis: which one of several processes of a kind acts, the others standing by.

The monitor keeps one rolling view of every example, so two active at once would page twice and
overwrite each other's state. Each monitor process takes the lease (``SET NX`` with a time to
live) before it restores the saved state and reads anything; the others wait, trying again every
third of the time to live, and the first to find it free takes over from the saved state. The
holder renews it while it runs (only while the token is still its own, in one Lua script) and
gives it up when it stops. Every save of the state is fenced by it
(:meth:`streamlearn.outbox.Outbox.record`): a holder that lost the lease (paused past its time
to live, say) fails its next save with :class:`~streamlearn.errors.LeaseLost` and stops, so it
never overwrites what its successor saved.
"""

from __future__ import annotations

import secrets

import redis

_IF_OURS = "if redis.call('get', KEYS[1]) == ARGV[1] then return {} else return 0 end"
_RENEW = _IF_OURS.format("redis.call('pexpire', KEYS[1], ARGV[2])")
_RELEASE = _IF_OURS.format("redis.call('del', KEYS[1])")


class Lease:
    def __init__(self, client: redis.Redis[bytes], key: str, ttl_s: float) -> None:
        self._r = client
        self.key = key
        self.ttl_ms = max(int(ttl_s * 1000), 1)
        self.token = secrets.token_hex(16).encode()

    def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this process holds it now."""
        return bool(self._r.set(self.key, self.token, nx=True, px=self.ttl_ms)) or self.renew()

    def renew(self) -> bool:
        """Extend the lease while it is still this process's; False when it is not."""
        return self._if_ours(_RENEW, self.ttl_ms)

    def release(self) -> None:
        self._if_ours(_RELEASE)

    def _if_ours(self, script: str, *args: int) -> bool:
        done = self._r.eval(script, 1, self.key, self.token, *args)  # type: ignore[no-untyped-call]
        return bool(done)

    def held(self) -> bool:
        return self._r.get(self.key) == self.token
