"""Whole-object checksums of multipart uploads from their parts' (vfsd/store/checksums.py):
the combined CRC equals the CRC of the concatenated bytes, for random splits."""

from __future__ import annotations

import base64
import random
import zlib

import crc32c
import pytest
from awscrt import checksums as crt

from vfsd.store.checksums import COMPOSITE, FULL_OBJECT, combine, type_allowed


@pytest.mark.parametrize("algorithm,crc,width", [
    ("crc32", zlib.crc32, 4), ("crc32c", crc32c.crc32c, 4), ("crc64nvme", crt.crc64nvme, 8)])
def test_combined_crc_is_the_crc_of_the_whole(algorithm, crc, width):
    rng = random.Random(algorithm)
    for _ in range(20):
        parts = [rng.randbytes(rng.choice((0, 1, 7, 4096, 65536, 100_003)))
                 for _ in range(rng.randint(1, 5))]
        sums = [(base64.b64encode(crc(p).to_bytes(width, "big")).decode(), len(p))
                for p in parts]
        whole = base64.b64encode(crc(b"".join(parts)).to_bytes(width, "big")).decode()
        assert combine(algorithm, FULL_OBJECT, sums) == whole


def test_composite_is_a_digest_of_digests_with_the_part_count():
    sums = [(base64.b64encode(zlib.crc32(p).to_bytes(4, "big")).decode(), len(p))
            for p in (b"ab", b"cd")]
    raw = b"".join(base64.b64decode(v) for v, _ in sums)
    assert combine("crc32", COMPOSITE, sums) == (
        f"{base64.b64encode(zlib.crc32(raw).to_bytes(4, 'big')).decode()}-2")
    assert not type_allowed("sha256", FULL_OBJECT) and not type_allowed("crc64nvme", COMPOSITE)
    assert type_allowed("crc32", FULL_OBJECT) and type_allowed("sha1", COMPOSITE)
