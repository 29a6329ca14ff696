"""Helpers for the gateway tests: a gateway subprocess, boto3 clients, raw signed requests."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.awsrequest import AWSRequest
from botocore.config import Config

from vfsd.store import Store, users

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition"
             ) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Keys:
    access_key: str
    secret_key: str


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, however it dies (no stray gateway)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started (none if it has exited)."""
    try:
        return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    except FileNotFoundError:
        return []


class GatewayProcess:
    """`python -m gateway` on a store; start, stop (SIGTERM), kill (SIGKILL), restart."""

    def __init__(self, store: Path, log: Path, args: Sequence[str] = (), tls: bool = False):
        self.store = store
        self.log_path = log
        self.port = 0
        self.args = list(args)  # more command-line flags (--tls-cert, --metrics-listen, ...)
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> GatewayProcess:
        self.port = port or free_port()
        with open(self.log_path, "ab") as log:
            # preexec_fn: subprocess has no other way to set the child's PDEATHSIG.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--store", str(self.store), "--host",
                 "127.0.0.1", "--port", str(self.port), *self.args],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)  # noqa: PLW1509
        wait_for(self._answers, what=f"the gateway on port {self.port}")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {self.proc.returncode}:\n{self.log()}")
        if "vfsd gateway: serving" not in self.log():
            return False  # a supervisor announces once all its server processes listen
        try:
            if self.tls:
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, timeout=2,
                    context=ssl._create_unverified_context())
            else:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/")
            conn.getresponse().read()
            conn.close()
            return True
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL every process of the gateway (its server processes first: they hold the
        requests), and return once all are gone."""
        assert self.proc is not None
        servers = self.server_pids()
        for pid in [p for p in servers if p != self.proc.pid]:
            os.kill(pid, signal.SIGKILL)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in servers
                                 if pid != self.proc.pid),
                 what="the gateway's server processes to die")

    def server_pids(self) -> list[int]:
        """The processes that serve requests: the supervised ones if the gateway has any
        (gateway/supervisor.py), else the gateway itself."""
        assert self.proc is not None
        if not Path(f"/proc/{self.proc.pid}").exists():
            return []  # it has exited
        return child_pids(self.proc.pid) or [self.proc.pid]

    def status(self, field: str) -> int:
        """A /proc/PID/status field in bytes (VmRSS, VmHWM), summed over the processes that
        serve requests."""
        total = 0
        for pid in self.server_pids():
            text = Path(f"/proc/{pid}/status").read_text()
            total += int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))
        return total * 1024


def client(endpoint: str, keys: Keys, verify: str | bool | None = None, **config: Any):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=keys.access_key,
        aws_secret_access_key=keys.secret_key, verify=verify,
        config=Config(s3={"addressing_style": "path"}, **config))


def make_store(path: Path) -> Keys:
    with Store.init(path) as store:
        user = users.add(store, "test")
    return Keys(user.access_key, user.secret_key)


@dataclass
class Gateway:
    store: Path
    keys: Keys
    process: GatewayProcess

    @property
    def endpoint(self) -> str:
        return self.process.endpoint

    @property
    def port(self) -> int:
        return self.process.port

    def client(self, **config: Any):
        return client(self.endpoint, self.keys, **config)


# --- raw HTTP, for what boto3 will not send -----------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def code(self) -> str | None:
        found = re.search(rb"<Code>(.*?)</Code>", self.body)
        return found.group(1).decode() if found else None


def raw(endpoint: str, method: str, path: str, headers: dict[str, str] | None = None,
        body: bytes | None = None) -> Reply:
    port = int(endpoint.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read())
    finally:
        conn.close()


def signed(gateway: Gateway, method: str, path: str, headers: dict[str, str] | None = None,
           body: bytes = b"", *, secret: str | None = None, access_key: str | None = None,
           when=None, payload: str | None = None, region: str = REGION) -> Reply:
    """A request signed by botocore's own SigV4 signer (not ours), with knobs to break it."""
    from unittest import mock

    from botocore.auth import S3SigV4Auth
    from botocore.credentials import Credentials

    url = gateway.endpoint + path
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    credentials = Credentials(access_key or gateway.keys.access_key,
                              secret or gateway.keys.secret_key)
    signer = S3SigV4Auth(credentials, "s3", region)
    if payload is not None:
        signer.payload = lambda _request: payload  # type: ignore[method-assign]
    if when is not None:
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            signer.add_auth(request)
    else:
        signer.add_auth(request)
    prepared = request.prepare()
    sent_headers = {k: v.decode() if isinstance(v, bytes) else v
                    for k, v in prepared.headers.items()}
    parts = urlsplit(prepared.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return raw(gateway.endpoint, method, target, sent_headers, body or None)


def env_with_keys(gateway: Gateway) -> dict[str, str]:
    env = dict(os.environ)
    env.update(AWS_ACCESS_KEY_ID=gateway.keys.access_key,
               AWS_SECRET_ACCESS_KEY=gateway.keys.secret_key, AWS_DEFAULT_REGION=REGION,
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    return env


def race(seconds: float, stop: threading.Event, *loops: Callable[[], None]) -> None:
    """Run each loop in a thread of its own for `seconds`, then set `stop` and join them."""
    threads = [threading.Thread(target=loop) for loop in loops]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
