"""The join's partitioner against Kafka's own vectors, and the guesses at other producers'."""

from __future__ import annotations

import zlib

import pytest

from streamlearn.partitioning import (
    Router,
    crc32_partition,
    fnv1a32,
    guess,
    join_partition,
    murmur2,
    sarama_partition,
)

# org.apache.kafka.common.utils.UtilsTest.testMurmur2 (signed, as Java has them).
KAFKA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), KAFKA_MURMUR2.items())
def test_murmur2_is_the_java_clients(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected & 0xFFFFFFFF


def test_join_partition_is_javas_to_positive_modulo() -> None:
    for data, h in KAFKA_MURMUR2.items():
        for n in (1, 2, 3, 12):
            assert join_partition(data.decode(), n) == (h & 0x7FFFFFFF) % n


def test_fnv1a_vectors() -> None:
    # The FNV authors' published test vectors for FNV-1a, 32 bits.
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968


def test_sarama_takes_the_absolute_value_of_a_truncated_remainder() -> None:
    # fnv1a32(b"foobar") is 0xBF9CF968, negative as an int32: -1080231576; Go's
    # -1080231576 % 7 is -4, negated to 4 (Python's floor modulo would give 3).
    assert sarama_partition(b"foobar", 7) == 4
    # fnv1a32(b"a") is 0xE40C292C, -468965076 as an int32: % 5 is -1 in Go, so 1 (not 4).
    assert sarama_partition(b"a", 5) == 1


def test_crc32_is_zlibs() -> None:
    assert crc32_partition(b"user-7", 5) == zlib.crc32(b"user-7") % 5


def test_guesses_in_order() -> None:
    n = 4
    user = next(
        u
        for u in (f"user-{i}" for i in range(1000))
        if len({join_partition(u, n), crc32_partition(u.encode(), n)}) == 2
        and sarama_partition(u.encode(), n)
        not in (join_partition(u, n), crc32_partition(u.encode(), n))
    )
    key = user.encode()
    assert guess(None, user, 0, n) == "no_key"
    assert guess(b"", user, 0, n) == "no_key"
    assert guess(b"session-1", user, 0, n) == "other_key"
    assert guess(key, user, crc32_partition(key, n), n) == "crc32"
    assert guess(key, user, sarama_partition(key, n), n) == "fnv1a"
    left = {0, 1, 2, 3} - {
        join_partition(user, n),
        crc32_partition(key, n),
        sarama_partition(key, n),
    }
    assert guess(key, user, left.pop(), n) == "unknown"


def test_the_router_counts_only_what_it_forwards() -> None:
    router = Router(3)
    home = join_partition("u1", 3)
    assert router.home("outcomes", "u1", b"u1", home) == home
    assert router.counts() == {}
    elsewhere = (home + 1) % 3
    assert router.home("outcomes", "u1", None, elsewhere) == home
    assert router.home("recommendations", "u1", b"s-9", elsewhere) == home
    assert router.counts() == {"outcomes": {"no_key": 1}, "recommendations": {"other_key": 1}}
