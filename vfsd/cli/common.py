"""What every verb shares: the parser class, argument types, finding and opening the store,
printing text or JSON, progress bars, exit codes."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn, TypeVar

from vfsd.sizes import parse_size
from vfsd.store import Store, journalrecovery

T = TypeVar("T")
EXIT_ERROR, EXIT_USAGE, EXIT_DAMAGE = 1, 2, 3
DEFAULT_USER = "admin"


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (plus a hint) instead of the usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def count_arg(text: str) -> int:
    """A count of at least 1 (processes, threads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r} (a whole number)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: must be at least 1")
    return value


def poll_arg(text: str) -> int:
    """A polling window: whole microseconds, 0 (never) to 10,000 (a longer one only burns CPU)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid window {text!r} (whole microseconds)") from None
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"invalid window {text!r}: must be 0 to 10000")
    return value


DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_arg(text: str) -> float:
    """Seconds: a number, or one with a unit (250ms, 1s, 2m, 1h)."""
    number, scale = text.strip(), 1.0
    for unit in sorted(DURATION_UNITS, key=len, reverse=True):  # "ms" before "m" and "s"
        if number.endswith(unit):
            number, scale = number[:-len(unit)], DURATION_UNITS[unit]
            break
    try:
        value = float(number) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r} (e.g. 250ms, 1s, 0.5, 2m)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be positive")
    return value


def store_path(args: argparse.Namespace) -> Path:
    return Path(args.store or os.environ.get("VFSD_STORE") or "./data")


def open_store(args: argparse.Namespace) -> Store:
    store = Store.open(store_path(args))
    try:
        journalrecovery.recover(store)  # what a crashed mount fsynced comes before any change made here
    except BaseException:
        store.close()
        raise
    return store


def emit(args: argparse.Namespace, data: object, text: str) -> None:
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else text)


def tqdm_progress(items: Iterable[T], total: int, label: str) -> Iterable[T]:
    from tqdm import tqdm

    return tqdm(items, total=total, desc=label, unit="", file=sys.stderr, disable=None,
                leave=False)
