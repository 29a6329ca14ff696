"""The verbs that run daemons: mount, up (mount and gateway together), gateway; and the
re-exec that gives them their glibc tunables."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from vfsd.store import Store, StoreError, users
from vfsd.store.config import load_config

from .common import DEFAULT_USER, EXIT_ERROR, UsageError, open_store, store_path


def _mount_config(args: argparse.Namespace, mountpoint: Path, foreground: bool,
                  metrics_listen: tuple[str, int] | None):
    from vfsd.fs.mount import MountConfig

    return MountConfig(store=store_path(args), mountpoint=mountpoint, foreground=foreground,
                       cache_size=args.cache_size, commit_interval=args.commit_interval,
                       allow_other=args.allow_other, metrics_listen=metrics_listen,
                       poll_us=args.poll_us)


def cmd_mount(args: argparse.Namespace) -> int:
    from vfsd.fs.mount import mount

    return mount(_mount_config(args, Path(args.mountpoint), args.foreground,
                               args.metrics_listen))


def cmd_up(args: argparse.Namespace) -> int:
    from vfsd.fs.mount import check_mountpoint, mount

    path = store_path(args)
    _check_gateway_options(args, "up")
    gateway_args = _gateway_args(args)
    mnt = Path(args.mnt)
    if not mnt.exists():
        mnt.mkdir(parents=True)
    check_mountpoint(mnt)  # before anything is made: a bad --mnt leaves no store behind
    if not (path / "store.toml").exists():
        Store.init(path).close()
        print(f"initialised store {path}")
    with open_store(args) as store:
        user = next((u for u in users.list_users(store) if u.name == DEFAULT_USER), None)
        if user is None:
            user = users.add(store, DEFAULT_USER)
            print(f"created S3 user {DEFAULT_USER}")
    host, port = args.listen
    gateway = GatewayChild(path, host, port, gateway_args)
    try:
        gateway.wait_until_serving()
        scheme = "https" if args.tls_cert else "http"
        shown = f"[{host}]" if ":" in host else host
        print(f"S3 endpoint  {scheme}://{shown}:{port}   access key {user.access_key}   "
              f"secret key {user.secret_key}", flush=True)
        print(f"mounting {path} on {mnt} (Ctrl-C to flush, unmount and stop)", flush=True)
        status = mount(_mount_config(args, mnt, foreground=True,
                                     metrics_listen=args.mount_metrics_listen))
    finally:
        gateway.stop()
    return EXIT_ERROR if gateway.failed else status


class GatewayChild:
    """The `vfsd gateway` that `vfsd up` runs beside its mount. Its output is passed on, line
    by line; the mount starts only once it serves (a port it cannot have stops `up` before
    anything is mounted); if it dies later, `up` says so at once and exits non-zero at the
    end, but the mount keeps serving meanwhile: VMs may be running on it."""

    def __init__(self, store: Path, host: str, port: int, options: Sequence[str] = ()):
        # preexec_fn: the only way to set the child's PDEATHSIG; run before the mount's threads.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vfsd", "gateway", "--store", str(store),
             "--listen", f"[{host}]:{port}" if ":" in host else f"{host}:{port}", *options],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            preexec_fn=_die_with_parent)  # noqa: PLW1509
        self.stopping = False
        self.failed = False

    def wait_until_serving(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            _pass_on(line)
            if line.startswith("vfsd gateway: serving"):
                threading.Thread(target=self._watch, name="vfsd-up-gateway",
                                 daemon=True).start()
                return
        raise StoreError(f"the S3 gateway did not start ({_status(self.proc.wait())}); "
                         "nothing was mounted")

    def _watch(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            _pass_on(line)
        status = self.proc.wait()
        if status != 0 and not self.stopping:
            self.failed = True
            # To the mount's log and the terminal (the mount logs to both in the foreground).
            logging.getLogger("vfsd.up").error(
                "event=gateway-exited how=%r: S3 is down; the mount keeps serving until "
                "Ctrl-C, then `vfsd up` exits with status 1", _status(status))

    def stop(self) -> None:
        self.stopping = True
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the gateway child: SIGTERM (its clean stop) when `vfsd up` dies, however it dies.
    A `kill -9` of `up` left the gateway serving, orphaned, and holding the port, so the
    next `vfsd up` could not start. The check after the call covers an `up` that died
    before it."""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


def _pass_on(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


def _status(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        if not sep or not host or not 0 <= int(port) < 65536:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid address {text!r} (use HOST:PORT, e.g. 127.0.0.1:9000)") from None
    return host.strip("[]"), int(port)


def _check_gateway_options(args: argparse.Namespace, verb: str) -> None:
    """Before anything starts: TLS files that go together and exist."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError(f"vfsd {verb}: --tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            raise StoreError(f"cannot read {path}")


def _gateway_args(args: argparse.Namespace) -> list[str]:
    """The gateway's options as `vfsd gateway` arguments, for the gateway `vfsd up` starts."""
    out = ["--region", args.region]
    if args.tls_cert is not None:
        out += ["--tls-cert", str(args.tls_cert.resolve()),
                "--tls-key", str(args.tls_key.resolve())]
    if args.metrics_listen is not None:
        host, port = args.metrics_listen
        out += ["--metrics-listen", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if args.processes is not None:
        out += ["--processes", str(args.processes)]
    return out


def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.config import GatewayConfig, default_processes
    from gateway.server import serve

    load_config(store_path(args))  # one clear line for a missing store, before anything starts
    _check_gateway_options(args, "gateway")
    host, port = args.listen
    metrics_host, metrics_port = args.metrics_listen or ("127.0.0.1", None)
    return serve(GatewayConfig(store=store_path(args), host=host, port=port,
                               region=args.region, tls_cert=args.tls_cert,
                               tls_key=args.tls_key, metrics_host=metrics_host,
                               metrics_port=metrics_port,
                               processes=args.processes or default_processes()))


def reexec_with_tunables(argv: Sequence[str]) -> None:
    """The daemons need glibc tunables that only apply at process start (DESIGN.md, "Measured
    facts": without them every 1 MiB buffer costs hundreds of page faults; the gateway's GET
    16M went from ~42 to ~57 ops/s with them in bench/s3.py's profile)."""
    from vfsd.tunables import GLIBC_TUNABLES

    if os.environ.get("GLIBC_TUNABLES") == GLIBC_TUNABLES or os.environ.get("VFSD_NO_TUNABLES"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=GLIBC_TUNABLES)
    os.execve(sys.executable, [sys.executable, "-m", "vfsd", *argv], env)
