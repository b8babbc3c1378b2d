"""Where a record belongs, and a guess at who put it elsewhere.

The join needs a user's recommendations and outcomes on the same partition number. Its own
partitioner is the Java client's default, the one the README asks producers to use: murmur2 of
the ``user_id`` (read from the value, not the key, which may be absent or something else),
``(murmur2 & 0x7fffffff) % partitions``. A record elsewhere was placed by a producer that hashes
differently, keys by something else or sends no key; the joiner forwards it through a
repartition topic, as Kafka Streams does, and counts it here by input and by a guess at the
producer's partitioner, so that an operator can tell which service to fix:

* ``no_key``: no key (round-robin, sticky or random placement: segmentio/kafka-go's default);
* ``other_key``: keyed by something other than the user (a session id, say);
* ``crc32``: keyed by user, placed by CRC32 (librdkafka's default ``consistent_random``, and
  so confluent-kafka's in every language);
* ``fnv1a``: keyed by user, placed by FNV-1a as Go's sarama does by default;
* ``unknown``: keyed by user, placed some other way (an explicit partition, say).

With few partitions the hashes often agree by chance, so a guess is the first that fits in the
order above, not a proof.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, get_args

Guess = Literal["no_key", "other_key", "crc32", "fnv1a", "unknown"]
GUESSES: tuple[Guess, ...] = get_args(Guess)

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), unsigned 32 bits."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    tail = length - length % 4
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    if rest:
        if rest == 3:
            h ^= data[tail + 2] << 16
        if rest >= 2:
            h ^= data[tail + 1] << 8
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & _MASK
    return h


@lru_cache(maxsize=1 << 16)
def join_partition(user_id: str, partitions: int) -> int:
    """The partition the join keeps ``user_id`` on: the Java client's default partitioner
    (librdkafka's ``murmur2_random``) applied to the user id."""
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's ``consistent`` and ``consistent_random`` partitioners for a key."""
    return zlib.crc32(key) % partitions


def sarama_partition(key: bytes, partitions: int) -> int:
    """sarama's default ``HashPartitioner``: FNV-1a taken as a signed 32-bit integer, Go's
    truncated remainder, then its absolute value."""
    h = fnv1a32(key)
    signed = h - (1 << 32) if h >= 1 << 31 else h
    return abs(signed) % partitions


def guess(key: bytes | None, user_id: str, partition: int, partitions: int) -> Guess:
    """Which partitioner most likely put a record of ``user_id`` with ``key`` on ``partition``."""
    if not key:
        return "no_key"
    if key != user_id.encode():
        return "other_key"
    if crc32_partition(key, partitions) == partition:
        return "crc32"
    if sarama_partition(key, partitions) == partition:
        return "fnv1a"
    return "unknown"


@dataclass
class Router:
    """Decides where each input record is joined, and counts what had to be forwarded."""

    partitions: int
    forwarded: dict[str, Counter[Guess]] = field(default_factory=dict)

    def home(self, input: str, user_id: str, key: bytes | None, partition: int) -> int:
        """The partition to join the record at; when it is not ``partition`` the record must be
        forwarded there, and is counted as such."""
        home = join_partition(user_id, self.partitions)
        if home != partition:
            guessed = guess(key, user_id, partition, self.partitions)
            self.forwarded.setdefault(input, Counter())[guessed] += 1
        return home

    def counts(self) -> dict[str, dict[str, int]]:
        """Forwarded records since this process started, by input and guess."""
        return {i: {g: n for g, n in c.items()} for i, c in sorted(self.forwarded.items())}
