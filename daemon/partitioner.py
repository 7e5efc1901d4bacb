"""The daemon's producer partitioner: Kafka's default (murmur2 of the key), about twice as fast as
aiokafka's pure-Python one.

Every result is keyed by its eventId, so a key is hashed per produced record. The hash is the one
of the Java client (``Utils.murmur2``) and so of aiokafka's ``DefaultPartitioner``: the same key
lands on the same partition whichever client wrote it, and a reader (``published``) can find it.
The speed comes from unpacking the 4-byte little-endian words in one ``struct`` call instead of
assembling each from four indexed bytes, mixing all the words at once in one big int, and
masking to 32 bits only where a shift needs it.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

__all__ = ["murmur2", "partition"]


def _masks(words: int) -> tuple[int, int, int]:
    """For ``words`` 4-byte words: the lanes the words are mixed in (see ``murmur2``), the even
    words' part of them, and where the odd words' part starts."""
    evens = (words + 1) // 2
    low_halves = int.from_bytes(b"\xff\xff\xff\xff\0\0\0\0" * evens, "little")
    odd_at = 64 * evens
    return low_halves | (low_halves >> (64 if words & 1 else 0)) << odd_at, low_halves, odd_at


# Precompiled for keys up to 256 bytes (an eventId is 36); longer keys compute theirs per call.
_WORDS = tuple(struct.Struct(f"<{n}I") for n in range(65))
_MASKS = tuple(_masks(n) for n in range(65))


def murmur2(data: bytes) -> int:
    """MurmurHash2 of ``data`` as Kafka computes it, as an unsigned 32-bit int."""
    # seed 0x9747B28C, m 0x5BD1E995, r 24; the constants are literals (cheaper than a global).
    # Each word's own mixing (k *= m; k ^= k >>> 24; k *= m) does not depend on the hash: it is
    # done for all the words at once, on one big int holding each word in the low half of a
    # 64-bit lane (the even words first, then the odd ones): a product of a 32-bit word and m
    # fits its lane, and the lanes are masked back to their low halves before a shift or a
    # product could cross them.
    n = len(data)
    h = 0x9747B28C ^ n
    words = n >> 2
    if words:
        if words < len(_WORDS):
            unpack, (lanes, evens, odds_at) = _WORDS[words].unpack, _MASKS[words]
        else:
            unpack, (lanes, evens, odds_at) = struct.Struct(f"<{words}I").unpack, _masks(words)
        x = int.from_bytes(data, "little")  # the tail's bytes too: masked off
        y = ((((x >> 32) << odds_at) & lanes) | (x & evens)) * 0x5BD1E995 & lanes
        y = (((y ^ (y >> 24)) & lanes) * 0x5BD1E995) & lanes
        for k in unpack(((y & evens) | (y >> (odds_at - 32))).to_bytes(words * 4, "little")):
            h = (h * 0x5BD1E995 ^ k) & 0xFFFFFFFF  # masked each round: a long key stays linear
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
