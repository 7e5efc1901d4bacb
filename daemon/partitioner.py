"""The daemon's producer partitioner: Kafka's default (murmur2 of the key), about twice as fast as
aiokafka's pure-Python one.

Every result is keyed by its eventId, so a key is hashed per produced record. The hash is the one
of the Java client (``Utils.murmur2``) and so of aiokafka's ``DefaultPartitioner``: the same key
lands on the same partition whichever client wrote it, and a reader (``published``) can find it.
The speed comes from unpacking the 4-byte little-endian words in one ``struct`` call instead of
assembling each from four indexed bytes, and from masking to 32 bits only where a shift needs it.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

__all__ = ["murmur2", "partition"]

# Precompiled unpackers for keys up to 256 bytes (an eventId is 36); longer keys compile per call.
_WORDS = tuple(struct.Struct(f"<{n}I") for n in range(65))


def murmur2(data: bytes) -> int:
    """MurmurHash2 of ``data`` as Kafka computes it, as an unsigned 32-bit int."""
    # The constants are literals, not names: a constant load is cheaper than a global lookup.
    # seed 0x9747B28C, m 0x5BD1E995, r 24; low 32 bits of a product do not depend on higher bits,
    # so a product is masked once, after the xor, unless a right shift reads it first.
    n = len(data)
    h = 0x9747B28C ^ n
    words = n >> 2
    unpacked = _WORDS[words].unpack_from(data) if words < len(_WORDS) else struct.unpack_from(f"<{words}I", data)
    for k in unpacked:
        k = (k * 0x5BD1E995) & 0xFFFFFFFF
        h = ((h * 0x5BD1E995) ^ ((k ^ (k >> 24)) * 0x5BD1E995)) & 0xFFFFFFFF
    tail = n & 3
    if tail:
        i = n - tail
        if tail == 3:
            h ^= data[i + 2] << 16
        if tail >= 2:
            h ^= data[i + 1] << 8
        h = ((h ^ data[i]) * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0x5BD1E995) & 0xFFFFFFFF
    return h ^ (h >> 15)


def partition(key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
    """The ``partitioner`` callable of ``AIOKafkaProducer``, choosing as its default does: a keyed
    record by murmur2, an unkeyed one at random among the available partitions (or all)."""
    if key is None:
        return random.choice(available) if available else random.choice(all_partitions)
    return all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]
