"""A multipart object's checksum from its parts' checksums, as S3 makes it.

COMPOSITE (any algorithm but CRC64NVME): the algorithm's digest of the parts' binary
checksums, in part order, then "-<part count>".

FULL_OBJECT (the CRCs only): the CRC of the whole object, found without reading a byte of it.
For these CRCs (reflected, all-ones start and final xor) CRC(A + B) = CRC(A) * x^(8 len B)
xor CRC(B), multiplication being modulo the CRC's polynomial: zlib's crc32_combine.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Sequence

import crc32c

COMPOSITE = "COMPOSITE"
FULL_OBJECT = "FULL_OBJECT"
TYPES = (COMPOSITE, FULL_OBJECT)

# Reflected polynomials and widths.
_CRCS = {
    "crc32": (0xEDB88320, 32),
    "crc32c": (0x82F63B78, 32),
    "crc64nvme": (0x9A6C9329AC4BC9B5, 64),
}


def type_of(value: str) -> str:
    """The type of an object's checksum as stored: a COMPOSITE one ends in -<part count>."""
    return COMPOSITE if "-" in value else FULL_OBJECT


def default_type(algorithm: str) -> str:
    return FULL_OBJECT if algorithm == "crc64nvme" else COMPOSITE


def type_allowed(algorithm: str, checksum_type: str) -> bool:
    return checksum_type == COMPOSITE and algorithm != "crc64nvme" or (
        checksum_type == FULL_OBJECT and algorithm in _CRCS)


def combine(algorithm: str, checksum_type: str, parts: Sequence[tuple[str, int]]) -> str:
    """The object's checksum (base64; "-N" for COMPOSITE) from its parts' (base64 checksum,
    size), in order."""
    raw = [base64.b64decode(value) for value, _size in parts]
    if checksum_type == COMPOSITE:
        return f"{base64.b64encode(_digest(algorithm, b''.join(raw))).decode()}-{len(parts)}"
    poly, width = _CRCS[algorithm]
    crc = int.from_bytes(raw[0], "big")
    for value, (_text, size) in zip(raw[1:], parts[1:], strict=True):
        crc = _multiply(_x_power(8 * size, poly, width), crc, poly, width) ^ int.from_bytes(
            value, "big")
    return base64.b64encode(crc.to_bytes(width // 8, "big")).decode()


def _digest(algorithm: str, data: bytes) -> bytes:
    if algorithm == "crc32":
        return zlib.crc32(data).to_bytes(4, "big")
    if algorithm == "crc32c":
        return crc32c.crc32c(data).to_bytes(4, "big")
    return hashlib.new(algorithm, data).digest()


def _multiply(a: int, b: int, poly: int, width: int) -> int:
    """a * b modulo the polynomial, both reflected (bit width-1 is x^0)."""
    product = 0
    bit = 1 << (width - 1)
    while bit and a:
        if a & bit:
            product ^= b
            a ^= bit
        b = (b >> 1) ^ poly if b & 1 else b >> 1
        bit >>= 1
    return product


def _x_power(n: int, poly: int, width: int) -> int:
    """x^n modulo the polynomial, reflected."""
    result, base = 1 << (width - 1), 1 << (width - 2)  # x^0, x^1
    while n:
        if n & 1:
            result = _multiply(base, result, poly, width)
        base = _multiply(base, base, poly, width)
        n >>= 1
    return result
