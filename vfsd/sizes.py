"""Human sizes on the command line: 64K, 20G, 1.5T, 512 (bytes). Binary units, like QEMU."""

from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
MAX_SIZE = (1 << 63) - 1
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"invalid size {text!r} (use e.g. 512, 64K, 20G, 1.5T)")
    number, unit = match.groups()
    value = int(float(number) * _UNITS[unit.upper()])
    if value <= 0:
        raise ValueError(f"invalid size {text!r}: must be positive")
    if value > MAX_SIZE:
        raise ValueError(f"invalid size {text!r}: at most 8 EiB - 1 byte (the largest file "
                         "Linux can hold)")
    return value


def format_size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
