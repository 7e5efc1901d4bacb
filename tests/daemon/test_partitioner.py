"""The daemon's partitioner puts every key where Kafka's default partitioner (Java's, and
aiokafka's ``DefaultPartitioner``) puts it, and picks unkeyed records' partitions as aiokafka does."""

from __future__ import annotations

import random
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from octopus_crm.daemon.partitioner import murmur2, partition

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed Java ints)
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), JAVA_VECTORS.items())
def test_murmur2_matches_the_java_client(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected & 0xFFFFFFFF


def test_same_partition_as_aiokafka_for_random_keys() -> None:
    rng = random.Random(20240611)
    default = DefaultPartitioner()
    keys = [b"", b"\x00", b"\xff\xff\xff", "événement-ü-😀".encode()]
    keys += [rng.randbytes(rng.randint(0, 80)) for _ in range(20_000)]
    keys += [str(uuid.UUID(int=rng.getrandbits(128))).encode() for _ in range(1_000)]
    for i, key in enumerate(keys):
        assert murmur2(key) == aiokafka_murmur2(key), key
        partitions = list(range(i % 64 + 1))
        assert partition(key, partitions, partitions) == default(key, partitions, partitions), key


def test_all_partition_counts_for_one_key() -> None:
    default = DefaultPartitioner()
    key = b"8b0c5a3e-6f1d-4c2b-9a7e-3d5f1e2c4b6a"
    for count in range(1, 65):
        partitions = list(range(count))
        assert partition(key, partitions, partitions[:1]) == default(key, partitions, partitions[:1])


def test_long_keys_beyond_the_precompiled_unpackers() -> None:
    rng = random.Random(7)
    for length in (255, 256, 257, 259, 260, 1000, 4099):
        key = rng.randbytes(length)
        assert murmur2(key) == aiokafka_murmur2(key)


def test_keyed_choice_indexes_the_list_as_given() -> None:
    default = DefaultPartitioner()
    partitions = [5, 2, 9, 0, 7]  # aiokafka passes them in whatever order its metadata holds them
    for i in range(200):
        key = f"event-{i}".encode()
        assert partition(key, partitions, []) == default(key, partitions, [])


@pytest.mark.parametrize("available", [[1, 3], []])
def test_unkeyed_records_choose_as_aiokafka_does(available: list[int]) -> None:
    default = DefaultPartitioner()
    partitions = [0, 1, 2, 3]
    state = random.getstate()  # both draw from the module's shared generator
    try:
        random.seed(99)
        ours = [partition(None, partitions, available) for _ in range(50)]
        random.seed(99)
        theirs = [default(None, partitions, available) for _ in range(50)]
    finally:
        random.setstate(state)
    assert ours == theirs
    assert set(ours) <= set(available or partitions)


@pytest.mark.parametrize("length", [32, 33, 35, 36, 37, 39, 40, 252, 255, 256, 257, 260, 1000, 1003])
def test_keys_around_the_precompiled_lengths(length: int) -> None:
    rng = random.Random(length)
    keys = [rng.randbytes(length) for _ in range(300)] + [bytes([255]) * length, bytes(length)]
    for key in keys:
        assert murmur2(key) == aiokafka_murmur2(key), key


def test_event_ids_in_either_case() -> None:
    rng = random.Random(36)
    for _ in range(2_000):
        text = str(uuid.UUID(int=rng.getrandbits(128)))
        for key in (text.encode(), text.upper().encode()):
            assert murmur2(key) == aiokafka_murmur2(key), key


def test_a_key_as_large_as_a_record_hashes_as_aiokafka_does() -> None:
    """A hostile record's key goes to the DLQ as it came: up to the record's size."""
    key = random.Random(7).randbytes(100_003)
    assert murmur2(key) == aiokafka_murmur2(key)
