"""Mount a store: check the mount point, daemonise, run pyfuse3 under trio, unmount cleanly.

On SIGTERM/SIGINT, or when the kernel ends the session (`fusermount3 -u`), every dirty chunk is
flushed before the process exits.
"""

from __future__ import annotations

import errno
import gc as cyclic_gc
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from vfsd.mounts import register
from vfsd.store import Store, gc, journal, journalrecovery
from vfsd.store.config import load_config
from vfsd.store.errors import StoreError
from vfsd.store.vms import Vms

from . import guardian, metrics
from .invalidate import tail_changes
from .operations import Operations
from .polling import DEFAULT_POLL_US
from .readahead import widen_readahead

log = logging.getLogger("vfsd.mount")
LOG_NAME = "vfsd.log"


GC_INTERVAL = 2.0  # seconds between gc passes in the daemon


class MountError(StoreError):
    """The mount point cannot be used (missing, not empty, already mounted)."""


@dataclass(frozen=True)
class MountConfig:
    store: Path
    mountpoint: Path
    foreground: bool = False
    cache_size: int = 256 * 1024 * 1024
    commit_interval: float = 1.0
    allow_other: bool = False
    metrics_listen: tuple[str, int] | None = None  # serve Prometheus /metrics there
    poll_us: int = DEFAULT_POLL_US


def check_mountpoint(path: Path) -> None:
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise MountError(f"{path} is still mounted but its daemon is gone (killed?): "
                             f"unmount it with `fusermount3 -u {path}`, then mount again "
                             "(what was fsynced is replayed)") from None
        raise MountError(f"mount point {path} does not exist")
    if not path.is_dir():
        raise MountError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point")
    if any(path.iterdir()):
        raise MountError(f"mount point {path} is not empty")


def _metrics_listener(address: tuple[str, int] | None) -> socket.socket | None:
    if address is None:
        return None
    try:
        return metrics.bind(*address)
    except OSError as e:
        raise MountError(str(e)) from None


def setup_logging(store: Path, foreground: bool) -> None:
    handlers: list[logging.Handler] = [logging.FileHandler(store / LOG_NAME)]
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=logging.INFO, handlers=handlers, force=True,
        format="%(asctime)s level=%(levelname)s logger=%(name)s pid=%(process)d %(message)s",
    )


def mount(config: MountConfig) -> int:
    """Mount and serve until unmounted or signalled. Errors before the mount is up raise
    StoreError (one line for the CLI); in daemon mode the parent reports them."""
    load_config(config.store)  # fail fast, before forking, on a path that is not a store
    check_mountpoint(config.mountpoint)
    mountpoint = config.mountpoint.resolve()  # now: once mounted, stat would ask ourselves
    ready_w = None
    if not config.foreground:
        ready_r, ready_w = os.pipe()
        if os.fork() > 0:
            os.close(ready_w)
            with os.fdopen(ready_r) as ready:
                message = ready.read()
            if message.startswith("ok"):
                return 0
            raise MountError(message.strip() or "the mount daemon died while starting")
        os.close(ready_r)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    try:
        setup_logging(config.store, config.foreground)
        store = Store.open(config.store)  # opened after fork: LMDB handles do not survive one
        purged = store.purge_orphans()
        recovered = journalrecovery.recover(store)  # what a crashed mount fsynced, before we serve
        ops = Operations(store, config.cache_size, config.commit_interval)
        # A mount killed while its VMs ran never reached the closes that drop their swap.
        swaps = Vms(store).drop_abandoned_swap(ops.holder)
        listener = _metrics_listener(config.metrics_listen)
        ops.cache.journal = journal.Journal(store, ops.holder)
        options = {"fsname=vfsd", "subtype=vfsd", "default_permissions"}
        if config.allow_other:
            options.add("allow_other")
        pyfuse3.init(ops, str(config.mountpoint), options)
    except BaseException as e:
        if ready_w is not None:
            os.write(ready_w, f"cannot mount: {e}\n".encode())
            os._exit(1)
        raise
    registration = register(config.store, mountpoint)
    guard = _start_guardian(mountpoint, config.store / LOG_NAME)
    log.info("event=mounted store=%s mountpoint=%s orphans_purged=%d cache=%d interval=%.1f "
             "poll_us=%d journals_replayed=%d sets_replayed=%d sets_dropped=%d swaps_dropped=%d "
             "metrics=%s",
             config.store, config.mountpoint, purged, config.cache_size, config.commit_interval,
             config.poll_us,
             recovered.journals, recovered.replayed, recovered.dropped, swaps,
             metrics.url(listener) if listener else "off")
    if ready_w is not None:
        os.write(ready_w, b"ok\n")
        os.close(ready_w)
    # What start-up made lives as long as the mount: out of the cyclic GC's way, so a full
    # collection (run by whichever thread allocates, mostly the loop's) walks only what serving
    # made. Start-up's garbage (journal recovery, caught exceptions) goes first: frozen, it
    # would never be freed.
    cyclic_gc.collect()
    cyclic_gc.freeze()
    try:
        trio.run(serve, ops, mountpoint, listener, config.poll_us)
    finally:
        if guard is not None:
            guardian.stand_down(guard)
        registration.unlink(missing_ok=True)
        pyfuse3.close(unmount=True)
        ops.cache.journal.close()
        store.close()
        log.info("event=readmap hits=%d misses=%d", ops.readmap.hits, ops.readmap.misses)
        # Without FUSE_HANDLE_KILLPRIV_V2 the kernel asks this before every write.
        log.info("event=capability-requests count=%d", ops.capability_requests)
        log.info("event=unmounted mountpoint=%s", config.mountpoint)
    return 0


def _start_guardian(mountpoint: Path, log_path: Path) -> guardian.Guard | None:
    """The mount serves without one if it cannot be had (it only matters after a kill)."""
    connection = guardian.connection_of(mountpoint)
    if connection is None:
        log.warning("event=no-guardian reason=connection-not-found mountpoint=%s", mountpoint)
        return None
    try:
        return guardian.start(connection, log_path)
    except OSError as e:
        log.warning("event=no-guardian error=%s", e.strerror or e)
        return None


async def serve(ops: Operations, mountpoint: Path,
                metrics_listener: socket.socket | None = None, poll_us: int = 0) -> None:
    # Polling saves a wake-up per request where requests follow their replies closely
    # (patches/pyfuse3-3.5.0-zz-poll-before-sleeping.patch), but it keeps a core busy: not
    # while the workers need it (a flush, gc, a read from the disk).
    if poll_us:
        ops.workers.idle_changed = lambda idle: pyfuse3.set_poll(poll_us if idle else 0)
    async with trio.open_nursery() as nursery:
        if metrics_listener is not None:
            nursery.start_soon(metrics.serve, metrics_listener, ops.metrics)
        nursery.start_soon(_widen_readahead, ops, mountpoint)
        nursery.start_soon(ops.cache.run_flusher)
        nursery.start_soon(tail_changes, ops.store, ops.run, ops.foreign_change,
                           ops.changes_lost)
        nursery.start_soon(ops.own_changes.run)
        nursery.start_soon(_stop_on_signal, ops)
        nursery.start_soon(_collect_garbage, ops)
        nursery.start_soon(_write_access_times, ops)
        await pyfuse3.main(poll_us=0 if ops.workers.busy else poll_us)
        nursery.cancel_scope.cancel()
    # The kernel session is over (unmount or terminate): make everything durable.
    try:
        await ops.cache.flush_all()
        await _store_access_times(ops)
        unwritten = {ino: len(f.dirty) for ino, f in ops.cache.files.items() if f.dirty}
        if unwritten:
            # A flush that kept failing (the pool full, the disk failing): the writers heard
            # of it (ENOSPC/EIO at fsync or close), and what an fsync journaled is replayed by
            # the next mount; the rest goes with this process. Say so, once, loudly.
            log.error("event=unmount-unwritten files=%d chunks=%d inodes=%s", len(unwritten),
                      sum(unwritten.values()), ",".join(map(str, sorted(unwritten)[:20])))
    finally:
        ops.workers.close()


async def _widen_readahead(ops: Operations, mountpoint: Path) -> None:
    # The reply to the kernel's INIT sets the window, so ours must come after it: INIT is
    # answered as soon as Operations.init returns, before this task runs again.
    await ops.initialized.wait()
    await ops.run(widen_readahead, mountpoint)


async def _collect_garbage(ops: Operations) -> None:
    """Give back the space of dead chunks a few seconds after they die (DESIGN.md, gc)."""
    while True:
        await trio.sleep(GC_INTERVAL)
        try:
            report = await ops.run(gc.collect, ops.store)
        except StoreError as e:
            log.warning("event=gc-failed error=%s", e)
            ops.cache.gc_ran(reclaiming=False)
            continue
        ops.cache.gc_ran(reclaiming=bool(report.retired or report.deleted or report.waiting
                                         or report.no_room))
        if report.changed:
            log.info("event=gc %s", report.summary())


async def _write_access_times(ops: Operations) -> None:
    """Access times read meanwhile, a transaction every few seconds (vfsd/fs/atime.py)."""
    while True:
        await trio.sleep(GC_INTERVAL)
        await _store_access_times(ops)


async def _store_access_times(ops: Operations) -> None:
    times = dict(ops.atimes.pending)
    if not times:
        return
    try:
        await ops.run(ops.store.set_access_times, times)
    except StoreError as e:  # a full disk, say: access times are not worth failing for
        log.warning("event=atime-write-failed error=%s", e)
    else:
        ops.atimes.written(times)


async def _stop_on_signal(ops: Operations) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("event=signal signal=%s action=flush-and-unmount", signal.Signals(signum).name)
            await ops.cache.flush_all()
            pyfuse3.terminate()
            return
