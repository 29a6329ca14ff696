"""S3 users: access key -> (name, secret, created). The gateway checks signatures against these."""

from __future__ import annotations

import json
import secrets
import string
import time
from dataclasses import dataclass

from .errors import Exists, InvalidArgument, NotFound
from .store import Store

_KEY_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class User:
    name: str
    access_key: str
    secret_key: str
    created: int  # unix seconds


def _check_user_name(name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise InvalidArgument(f"invalid user name {name!r}: 1-64 of letters, digits, - _ .")


def _decode(access_key: bytes, raw: bytes) -> User:
    data = json.loads(raw)
    return User(data["name"], access_key.decode(), data["secret"], data["created"])


def add(store: Store, name: str) -> User:
    """Create a user with a fresh key pair (AWS-shaped: 20-char key id, 40-char secret)."""
    _check_user_name(name)
    user = User(
        name=name,
        access_key="VF" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(18)),
        secret_key=secrets.token_urlsafe(30),
        created=int(time.time()),
    )
    value = json.dumps({"name": name, "secret": user.secret_key, "created": user.created})
    with store.env.write() as tx:
        for key, raw in tx.cursor(tx.db.users):
            if _decode(key, raw).name == name:
                raise Exists(f"user {name} already exists")
        tx.put(tx.db.users, user.access_key.encode(), value.encode())
    return user


def list_users(store: Store) -> list[User]:
    with store.env.read() as tx:
        return sorted((_decode(k, v) for k, v in tx.cursor(tx.db.users)), key=lambda u: u.name)


def by_access_key(store: Store, access_key: str) -> User | None:
    with store.env.read() as tx:
        raw = tx.get(tx.db.users, access_key.encode())
        return _decode(access_key.encode(), raw) if raw else None


def remove(store: Store, name: str) -> None:
    with store.env.write() as tx:
        for key, raw in tx.cursor(tx.db.users):
            if _decode(key, raw).name == name:
                tx.delete(tx.db.users, key)
                return
    raise NotFound(f"no user named {name}")
