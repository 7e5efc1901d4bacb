"""The daemon's producer partitioner: Kafka's default (murmur2 of the key), about twice as fast as
aiokafka's pure-Python one.

Every result is keyed by its eventId, so a key is hashed per produced record. The hash is the one
of the Java client (``Utils.murmur2``) and so of aiokafka's ``DefaultPartitioner``: the same key
lands on the same partition whichever client wrote it, and a reader (``published``) can find it.
The speed comes from unpacking the 4-byte little-endian words in one ``struct`` call instead of
assembling each from four indexed bytes, mixing all the words at once in two big ints, and
masking to 32 bits only where a shift needs it.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

__all__ = ["murmur2", "partition"]

# Precompiled for keys up to 256 bytes (an eventId is 36); longer keys compute theirs per call:
# the unpacker of n 4-byte words, and the masks of the low halves of the 64-bit lanes that hold
# the even words (0, 2, 4 …) of n words, and the odd ones once shifted down by 32 bits.
_WORDS = tuple(struct.Struct(f"<{n}I") for n in range(65))
_EVENS = tuple(int.from_bytes(b"\xff\xff\xff\xff\0\0\0\0" * ((n + 1) // 2), "little") for n in range(65))
_ODDS = tuple(int.from_bytes(b"\xff\xff\xff\xff\0\0\0\0" * (n // 2), "little") for n in range(65))
_WORDS_36 = _WORDS[9]
_EVEN_36, _ODD_36 = _EVENS[9], _ODDS[9]


def murmur2(data: bytes) -> int:
    """MurmurHash2 of ``data`` as Kafka computes it, as an unsigned 32-bit int."""
    # seed 0x9747B28C, m 0x5BD1E995, r 24; the constants are literals (cheaper than a global).
    # Each word's own mixing (k *= m; k ^= k >>> 24; k *= m) does not depend on the hash: it is
    # done for all words at once, on two big ints each holding every other word in the low half
    # of a 64-bit lane (a product of a 32-bit word and m fits its lane; lanes are masked back to
    # their low halves before a shift or a product could cross them). The low 32 bits of a
    # product do not depend on higher bits: the hash is masked once after all the words.
    n = len(data)
    words = n >> 2
    if n == 36:  # a 36-byte key: an eventId, a UUID's text
        x = int.from_bytes(data, "little")
        even, odd = _EVEN_36, _ODD_36
        e = ((x & even) * 0x5BD1E995) & even
        o = (((x >> 32) & odd) * 0x5BD1E995) & odd
        e = (((e ^ (e >> 24)) & even) * 0x5BD1E995) & even
        o = (((o ^ (o >> 24)) & odd) * 0x5BD1E995) & odd
        k0, k1, k2, k3, k4, k5, k6, k7, k8 = _WORDS_36.unpack((e | (o << 32)).to_bytes(36, "little"))
        h: int = ((0x9747B28C ^ 36) * 0x5BD1E995 ^ k0) * 0x5BD1E995 ^ k1
        h = ((h * 0x5BD1E995 ^ k2) * 0x5BD1E995 ^ k3) * 0x5BD1E995 ^ k4
        h = ((h * 0x5BD1E995 ^ k5) * 0x5BD1E995 ^ k6) * 0x5BD1E995 ^ k7
        h = (h * 0x5BD1E995 ^ k8) & 0xFFFFFFFF
    else:
        h = 0x9747B28C ^ n
        if words:
            if words < len(_WORDS):
                unpack, even, odd = _WORDS[words].unpack, _EVENS[words], _ODDS[words]
            else:
                unpack = struct.Struct(f"<{words}I").unpack
                even = int.from_bytes(b"\xff\xff\xff\xff\0\0\0\0" * ((words + 1) // 2), "little")
                odd = even >> 64 if words & 1 else even
            x = int.from_bytes(data, "little")
            e = ((x & even) * 0x5BD1E995) & even
            o = (((x >> 32) & odd) * 0x5BD1E995) & odd
            e = (((e ^ (e >> 24)) & even) * 0x5BD1E995) & even
            o = (((o ^ (o >> 24)) & odd) * 0x5BD1E995) & odd
            for k in unpack((e | (o << 32)).to_bytes(words * 4, "little")):
                h = h * 0x5BD1E995 ^ k
            h &= 0xFFFFFFFF
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
