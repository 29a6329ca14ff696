"""store.toml: the one file that says a directory is a vfsd store and how it was made.

Written once by `init`, read by every process that opens the store. Nothing in it changes
afterwards; mutable settings (the quota) live in LMDB.
"""

from __future__ import annotations

import datetime
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import FormatMismatch, InvalidArgument, NotAStore

FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 64 * 1024
STORE_TOML = "store.toml"
META_DIR = "meta"
SEGMENTS_DIR = "segments"


@dataclass(frozen=True)
class StoreConfig:
    path: Path
    format_version: int
    node_id: str
    chunk_size: int
    created_at: str

    @property
    def meta_dir(self) -> Path:
        return self.path / META_DIR

    @property
    def segments_dir(self) -> Path:
        return self.path / SEGMENTS_DIR


def validate_chunk_size(chunk_size: int) -> None:
    if chunk_size < 4096 or chunk_size > 4 * 1024 * 1024 or chunk_size & (chunk_size - 1):
        raise InvalidArgument(
            f"chunk size must be a power of two between 4K and 4M, not {chunk_size}"
        )


def create_config(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> StoreConfig:
    """Create the store directory skeleton and write store.toml (atomically, then fsync).

    Refuses a directory that already holds a store or any other files.
    """
    validate_chunk_size(chunk_size)
    path = Path(path)
    if (path / STORE_TOML).exists():
        raise InvalidArgument(f"{path} is already a vfsd store")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InvalidArgument(f"{path} exists and is not an empty directory")
    (path / META_DIR).mkdir(parents=True, exist_ok=True)
    (path / SEGMENTS_DIR).mkdir(exist_ok=True)
    config = StoreConfig(
        path=path,
        format_version=FORMAT_VERSION,
        node_id=secrets.token_hex(8),
        chunk_size=chunk_size,
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    text = (
        "# vfsd store: written once by `vfsd init`, never edited.\n"
        f"format_version = {config.format_version}\n"
        f'node_id = "{config.node_id}"\n'
        f"chunk_size = {config.chunk_size}\n"
        f'created_at = "{config.created_at}"\n'
    )
    tmp = path / (STORE_TOML + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / STORE_TOML)
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return config


def load_config(path: Path) -> StoreConfig:
    """Read store.toml; raise NotAStore or FormatMismatch with a message fit for one line."""
    path = Path(path)
    toml_path = path / STORE_TOML
    if not path.is_dir():
        raise NotAStore(f"no store at {path} (run `vfsd init` first)")
    try:
        raw = toml_path.read_bytes()
    except FileNotFoundError:
        raise NotAStore(f"{path} is not a vfsd store: {STORE_TOML} is missing") from None
    except OSError as e:
        raise NotAStore(f"cannot read {toml_path}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode())
        version = data["format_version"]
        config = StoreConfig(
            path=path,
            format_version=version,
            node_id=str(data["node_id"]),
            chunk_size=int(data["chunk_size"]),
            created_at=str(data["created_at"]),
        )
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise NotAStore(f"{toml_path} is corrupt ({type(e).__name__}: {e})") from None
    if version != FORMAT_VERSION:
        raise FormatMismatch(
            f"{path} has store format {version}; this vfsd reads format {FORMAT_VERSION}"
        )
    try:
        validate_chunk_size(config.chunk_size)
    except InvalidArgument as e:
        raise NotAStore(f"{toml_path} is corrupt: {e}") from None
    if not config.meta_dir.is_dir() or not config.segments_dir.is_dir():
        raise NotAStore(f"{path} is not a vfsd store: meta/ or segments/ is missing")
    return config
