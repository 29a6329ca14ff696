"""Verbs on the store as a whole: init, stats, fsck, the pool's quota, gc, and users."""

from __future__ import annotations

import argparse
import time

from vfsd.sizes import format_size
from vfsd.store import Store, users
from vfsd.store import fsck as fsck_module
from vfsd.store import stats as stats_module

from .common import (
    EXIT_DAMAGE,
    UsageError,
    emit,
    open_store,
    size_arg,
    store_path,
    tqdm_progress,
)


def cmd_init(args: argparse.Namespace) -> int:
    path = store_path(args)
    with Store.init(path, chunk_size=args.chunk_size, quota=args.quota) as store:
        print(f"initialised store {path} (node {store.config.node_id}, "
              f"{format_size(store.chunk_size)} chunks)")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        st = stats_module.collect(store)
    lines = [
        f"logical      {format_size(st.logical_bytes)}   (data files reference, before dedup)",
        f"physical     {format_size(st.physical_bytes)}   (unique chunk bodies)",
        f"dedup ratio  {st.dedup_ratio:.2f}",
        f"apparent     {format_size(st.apparent_bytes)}   (sum of file sizes, holes included)",
        (f"provisioned  {format_size(st.provisioned_bytes)}   "
         "(VM disks, swap and NVRAM files, volumes; thin)"),
        f"capacity     {format_size(st.capacity_bytes)}"
        + ("   (quota)" if st.quota_bytes else "   (free disk + stored)"),
        f"overcommit   {st.overcommit:.2f}"
        + ("   WARNING: thin disks could outgrow the pool" if st.overcommit > 1 else ""),
        f"chunks       {st.chunks}",
        f"segments     {st.segments} ({format_size(st.segment_bytes)} on disk)",
        f"files        {st.files} in {st.directories} directories",
    ]
    emit(args, st.as_dict(), "\n".join(lines))
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    if args.grace is not None and not args.repair:
        raise UsageError("vfsd fsck: --grace only applies with --repair")
    with open_store(args) as store:
        if args.repair:
            from vfsd.store import repair

            grace = 5.0 if args.grace is None else args.grace
            repaired = repair.repair(store, tqdm_progress, grace=grace)
            print(repaired.summary())
            if repaired.data_lost:
                for damaged in repaired.damaged:
                    print(f"lost: {damaged.describe()}")
        report = fsck_module.check(store, tqdm_progress)
    for problem in report.damage[:200]:
        print(f"damage: {problem}")
    if len(report.damage) > 200:
        print(f"… and {len(report.damage) - 200} more")
    print(report.summary())
    if args.repair and repaired.data_lost:
        return EXIT_DAMAGE
    return 0 if report.clean else EXIT_DAMAGE


def quota_arg(text: str) -> int | None:
    return None if text.lower() in ("none", "off") else size_arg(text)


def cmd_pool_set(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        store.set_quota(args.quota)
        st = stats_module.collect(store)
    limit = format_size(args.quota) if args.quota else "none (the backing disk's free space)"
    print(f"pool quota: {limit}; physical use {format_size(st.physical_bytes)}")
    if args.quota and args.quota < st.physical_bytes:
        print("warning: the quota is below what the pool already holds: writes that need new "
              "space fail (ENOSPC on the mount, 507 from S3) until data is deleted and gc'd")
    if st.overcommit > 1:
        print(f"warning: thin disks ({format_size(st.provisioned_bytes)}) could outgrow the pool "
              f"({format_size(st.capacity_bytes)}): overcommit {st.overcommit:.2f}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from vfsd.store import gc

    with open_store(args) as store:
        report = gc.collect(store, grace=args.grace, progress=tqdm_progress)
        if report.waiting and args.wait:
            time.sleep(args.grace)
            later = gc.collect(store, grace=args.grace, progress=tqdm_progress)
            report.deleted += later.deleted
            report.freed_bytes += later.freed_bytes
            report.waiting = later.waiting
            report.trimmed_changes += later.trimmed_changes
    print(report.summary())
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        user = users.add(store, args.name)
    data = {"name": user.name, "access_key": user.access_key, "secret_key": user.secret_key}
    emit(args, data, f"user {user.name}\naccess key  {user.access_key}\n"
                     f"secret key  {user.secret_key}")
    return 0


def cmd_user_ls(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        listed = users.list_users(store)
    emit(args, [{"name": u.name, "access_key": u.access_key, "created": u.created}
                for u in listed],
         "\n".join(f"{u.name:24} {u.access_key}" for u in listed) or "no users")
    return 0


def cmd_user_rm(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        users.remove(store, args.name)
    print(f"removed user {args.name}")
    return 0
