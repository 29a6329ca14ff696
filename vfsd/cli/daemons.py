"""The verbs that run daemons: mount, up (mount and gateway together), gateway; and the
re-exec that gives them their glibc tunables."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from vfsd.store import Store, StoreError, users
from vfsd.store.config import load_config

from .common import DEFAULT_USER, UsageError, open_store, store_path


def _mount_config(args: argparse.Namespace, mountpoint: Path, foreground: bool):
    from vfsd.fs.mount import MountConfig

    return MountConfig(store=store_path(args), mountpoint=mountpoint, foreground=foreground,
                       cache_size=args.cache_size, commit_interval=args.commit_interval,
                       allow_other=args.allow_other)


def cmd_mount(args: argparse.Namespace) -> int:
    from vfsd.fs.mount import mount

    return mount(_mount_config(args, Path(args.mountpoint), args.foreground))


def cmd_up(args: argparse.Namespace) -> int:
    from vfsd.fs.mount import check_mountpoint, mount

    path = store_path(args)
    if not (path / "store.toml").exists():
        Store.init(path).close()
        print(f"initialised store {path}")
    with open_store(args) as store:
        user = next((u for u in users.list_users(store) if u.name == DEFAULT_USER), None)
        if user is None:
            user = users.add(store, DEFAULT_USER)
            print(f"created S3 user {DEFAULT_USER}")
    mnt = Path(args.mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    check_mountpoint(mnt)
    host, port = args.listen
    gateway = subprocess.Popen([sys.executable, "-m", "vfsd", "gateway", "--store", str(path),
                                "--listen", f"{host}:{port}"])
    print(f"S3 endpoint  http://{host}:{port}   access key {user.access_key}   "
          f"secret key {user.secret_key}", flush=True)
    print(f"mounting {path} on {mnt} (Ctrl-C to flush, unmount and stop)", flush=True)
    try:
        return mount(_mount_config(args, mnt, foreground=True))
    finally:
        if gateway.poll() is None:
            gateway.terminate()
        try:
            gateway.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.kill()


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        if not sep or not host or not 0 <= int(port) < 65536:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid address {text!r} (use HOST:PORT, e.g. 127.0.0.1:9000)") from None
    return host.strip("[]"), int(port)


def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.config import GatewayConfig, default_processes
    from gateway.server import serve

    load_config(store_path(args))  # one clear line for a missing store, before anything starts
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("vfsd gateway: --tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            raise StoreError(f"cannot read {path}")
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
    from vfsd.fs.mount import GLIBC_TUNABLES

    if os.environ.get("GLIBC_TUNABLES") == GLIBC_TUNABLES or os.environ.get("VFSD_NO_TUNABLES"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=GLIBC_TUNABLES)
    os.execve(sys.executable, [sys.executable, "-m", "vfsd", *argv], env)
