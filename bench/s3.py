"""S3 gateway throughput beside moto_server and a bare aiohttp server, in one run.

    python bench/s3.py [--dir DIR] [--duration 6] [--warmup 1] [--settle 30] [--repeat 1]
                       [--only gateway,moto,bare] [--rows 'PUT 64K,GET 64K,PUT 16M,GET 16M']

Rows: PUT 64 KiB and GET 64 KiB (8 connections), PUT 16 MiB and GET 16 MiB (4 connections),
each against three servers on 127.0.0.1 ephemeral ports:

  gateway  `python -m vfsd gateway` on a fresh store in a temporary directory under --dir
           (default: the current directory; the point is the disk, so tmpfs is refused unless
           --allow-tmpfs), with its default access log on (written to a file in the temp dir)
  moto     `moto_server` (in-memory S3 in Python; `pip install 'moto[server]'`)
  bare     bench/bare_aiohttp.py: an aiohttp handler that only streams bodies to/from files
           in a tmpfs directory: the ceiling for an aiohttp server

The load is `wrk` (a C client that costs little CPU: client and server share the machine)
replaying presigned SigV4 URLs made with boto3 (N object names per target and size; the
bench/s3_wrk.lua script cycles through them; PUT sends one fixed body of the object size with
no Content-Type, so every PUT after the first stores the same bytes: the store's dedup path).
Objects are created with boto3 before the rows run (each size once, so a GET row can run
without its PUT row: `--rows 'GET 16M'`). Server CPU per operation is the server
process's utime+stime (/proc/PID/stat, all threads) over the timed run, divided by ops; the
"other" column is the CPU everything else on the machine used meanwhile (/proc/stat), so a
run disturbed by other work shows it (a warning is printed above 0.3 core). Before each run
the bench waits (up to --settle seconds) for the machine to go quiet, so what the previous
run left behind (gc passes, the kernel discarding a deleted store's blocks) stays out of it.

With --repeat N each row runs N rounds, every target once per round (so a slow spell of the
machine hits the targets of a round alike), and the table shows each target's median run by
ops/s (N odd: the middle one); every run is printed as it ends. Single runs of the 64 KiB rows
spread by a third on this machine class.

Targets (from the issue): gateway ops/s >= 1.5x moto's on every row, and >= 50% of the bare
aiohttp ceiling. Prints PASS/MISS per row. Always exits 0 when it could run: benchmarks
report, tests check; everything started is stopped and temp dirs are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LUA = HERE / "s3_wrk.lua"
BARE = HERE / "bare_aiohttp.py"
KiB, MiB = 1 << 10, 1 << 20
MB = 1_000_000
REGION = "us-east-1"
BUCKET = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# (label, method, size, connections, object names)
ROWS = [
    ("PUT 64K", "PUT", 64 * KiB, 8, 64),
    ("GET 64K", "GET", 64 * KiB, 8, 64),
    ("PUT 16M", "PUT", 16 * MiB, 4, 8),
    ("GET 16M", "GET", 16 * MiB, 4, 8),
]
TARGETS = ("gateway", "moto", "bare")
# Also on request (--only): the gateway as one process, to see what its server processes bring.
EXTRA_TARGETS = ("gateway1",)


def fs_type(path: Path) -> str:
    """The mount type of the file system holding `path` (longest matching mount point)."""
    path = path.resolve()
    best, kind = "", "?"
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1].replace("\\040", " ")
            if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) \
                    and len(mnt) > len(best):
                best, kind = mnt, parts[2]
    return kind


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} not listening on {port} after {timeout:.0f}s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) and of its descendants (a gateway's
    server processes), in seconds."""
    total = 0.0
    pending = [pid]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2:].split()  # fields from 3 (state) on
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    pending.extend(int(child) for child in f.read().split())
            except FileNotFoundError:
                continue  # a thread that ended meanwhile
    return total


def busy_seconds() -> float:
    """CPU time used by everything on the machine (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def settle(quiet_cores: float, longest: float) -> float:
    """Wait (at most `longest` seconds) until the whole machine uses under `quiet_cores` of
    CPU over half a second; returns the seconds waited. What one run leaves behind would
    otherwise land in the next: a store deleted on a file system mounted `-o discard` keeps
    kernel workers busy for tens of seconds (0.3-0.5 cores seen), and gc passes follow a
    PUT row."""
    start = time.monotonic()
    while time.monotonic() - start < longest:
        before = busy_seconds()
        time.sleep(0.5)
        if (busy_seconds() - before) / 0.5 < quiet_cores:
            break
    return time.monotonic() - start


@dataclass
class Target:
    name: str
    proc: subprocess.Popen
    port: int
    access_key: str
    secret_key: str
    log: Path
    urls: dict = field(default_factory=dict)  # (method, size) -> url file

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_gateway(tmp: Path, store_dir: Path, name: str = "gateway",
                  processes: int | None = None) -> Target:
    """The gateway as `vfsd gateway` runs it (its default server processes), or with
    `processes` server processes."""
    py = sys.executable
    # The caller's PYTHONPATH after ours: a sitecustomize there can instrument the gateway.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    store = store_dir / name
    subprocess.run([py, "-m", "vfsd", "init", "--store", str(store)], check=True, cwd=REPO,
                   env=env, stdout=subprocess.DEVNULL)
    out = subprocess.run([py, "-m", "vfsd", "user", "add", "bench", "--json", "--store",
                          str(store)], check=True, cwd=REPO, env=env, capture_output=True,
                         text=True).stdout
    keys = json.loads(out)
    port = free_port()
    log = tmp / f"{name}.log"
    more = [] if processes is None else ["--processes", str(processes)]
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([py, "-m", "vfsd", "gateway", "--store", str(store),
                                 "--listen", f"127.0.0.1:{port}", *more], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    target = Target(name, proc, port, keys["access_key"], keys["secret_key"], log)
    wait_port(port, proc, name)
    deadline = time.monotonic() + 60
    while b"vfsd gateway: serving" not in log.read_bytes():  # all server processes listen
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')}")
        time.sleep(0.1)
    return target


def start_moto(tmp: Path) -> Target:
    exe = Path(sys.executable).with_name("moto_server")  # the venv's, beside this python
    if not exe.exists():
        exe = Path(shutil.which("moto_server") or exe)
    if not exe.exists():
        raise RuntimeError("moto_server not found: pip install 'moto[server]'")
    port = free_port()
    log = tmp / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    target = Target("moto", proc, port, "testing", "testing", log)
    wait_port(port, proc, "moto_server")
    return target


def start_bare(tmp: Path, shm: Path) -> Target:
    port = free_port()
    log = tmp / "bare.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(BARE), "--dir", str(shm), "--port",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT)
    target = Target("bare", proc, port, "bare", "bare", log)
    wait_port(port, proc, "bare aiohttp")
    return target


def s3_client(target: Target):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=target.endpoint, region_name=REGION,
                        aws_access_key_id=target.access_key,
                        aws_secret_access_key=target.secret_key,
                        config=Config(signature_version="s3v4",
                                      s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))


def object_key(size: int, i: int) -> str:
    return f"obj-{size}/{i:04d}"


def prepare(target: Target, tmp: Path, rows: list[tuple[str, str, int, int, int]]) -> None:
    """Bucket, the objects the rows' URLs name (once per size: a GET row needs them whether
    or not its PUT row runs), and the presigned URL files."""
    uploaded: set[int] = set()
    if target.name == "bare":
        for _label, method, size, _conns, names in rows:
            lines = [f"{target.endpoint}/{BUCKET}/{object_key(size, i)}" for i in range(names)]
            path = tmp / f"urls-{target.name}-{method}-{size}.txt"
            path.write_text("\n".join(lines) + "\n")
            target.urls[(method, size)] = path
            if size not in uploaded:
                uploaded.add(size)
                body = os.urandom(size)
                for i in range(names):
                    url = f"{target.endpoint}/{BUCKET}/{object_key(size, i)}"
                    urllib.request.urlopen(urllib.request.Request(url, data=body,
                                                                  method="PUT")).read()
        return
    s3 = s3_client(target)
    s3.create_bucket(Bucket=BUCKET)
    for _label, method, size, _conns, names in rows:
        op = "put_object" if method == "PUT" else "get_object"
        lines = [s3.generate_presigned_url(op, Params={"Bucket": BUCKET,
                                                       "Key": object_key(size, i)},
                                           ExpiresIn=6 * 3600) for i in range(names)]
        path = tmp / f"urls-{target.name}-{method}-{size}.txt"
        path.write_text("\n".join(lines) + "\n")
        target.urls[(method, size)] = path
        if size not in uploaded:
            uploaded.add(size)
            body = os.urandom(size)
            for i in range(names):
                s3.put_object(Bucket=BUCKET, Key=object_key(size, i), Body=body)
            got = s3.get_object(Bucket=BUCKET, Key=object_key(size, 0))["Body"].read()
            if got != body:
                raise RuntimeError(f"{target.name}: read back {len(got)} bytes, not the "
                                   f"{size} written")


def run_wrk(target: Target, method: str, size: int, conns: int, seconds: float) -> dict:
    url_file = target.urls[(method, size)]
    cmd = ["wrk", "-t", "1", "-c", str(conns), "-d", f"{max(1, round(seconds))}s", "--timeout", "60s",
           "-s", str(LUA), target.endpoint, "--", str(url_file), method, str(size)]
    cpu0, t0 = cpu_seconds(target.proc.pid), time.monotonic()
    ru0, all0 = os.times(), busy_seconds()
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=HERE)
    ru1, all1 = os.times(), busy_seconds()
    cpu1 = cpu_seconds(target.proc.pid)
    wall = time.monotonic() - t0
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} "
                           f"{out.stderr[-500:]}")
    res = json.loads(line[len("WRKJSON "):])
    secs = res["duration_us"] / 1e6
    errors = res["connect"] + res["read"] + res["write"] + res["status"] + res["timeout"]
    ok = max(res["requests"] - errors, 0)
    res.update(
        seconds=secs,
        errors=errors,
        ops=ok / secs if secs else 0.0,
        mbps=ok * size / MB / secs if secs else 0.0,
        server_cpu=cpu1 - cpu0,
        cpu_per_op_ms=(cpu1 - cpu0) / ok * 1000 if ok else float("nan"),
        server_cores=(cpu1 - cpu0) / secs if secs else 0.0,
        client_cores=((ru1.children_user + ru1.children_system)
                      - (ru0.children_user + ru0.children_system)) / wall,
    )
    # Whatever else ran meanwhile (other processes on a shared machine): a run with this much
    # above ~0.1 core was disturbed and its numbers are low.
    res["other_cores"] = max(0.0, (all1 - all0) / wall - res["client_cores"]
                             - (cpu1 - cpu0) / wall)
    return res


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=None,
                    help="where the gateway's store goes (default: /var/tmp, else the current "
                         "directory; must not be tmpfs)")
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per timed run")
    ap.add_argument("--warmup", type=float, default=1.0,
                    help="untimed seconds before each (whole seconds, 0 for none)")
    ap.add_argument("--only", default=",".join(TARGETS),
                    help="targets, comma-separated (%(default)s; also: "
                         f"{', '.join(EXTRA_TARGETS)}: the gateway as a single process)")
    ap.add_argument("--rows", default=",".join(row[0] for row in ROWS),
                    help="rows, comma-separated (default all: %(default)s)")
    ap.add_argument("--allow-tmpfs", action="store_true")
    ap.add_argument("--settle", type=float, default=30.0,
                    help="before each run, wait up to this many seconds for the machine to "
                         "go quiet (under 0.1 core busy; 0: don't wait)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds per row, all targets in each; the table shows medians")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="before stopping, wait this long (seconds) printing server pids "
                         "(to attach a profiler to a run started by hand)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(TARGETS) - set(EXTRA_TARGETS)
    if unknown:
        ap.error(f"unknown targets: {', '.join(sorted(unknown))}")
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    rows = [row for row in ROWS if row[0] in wanted]
    if unknown := set(wanted) - {row[0] for row in ROWS}:
        print(f"bench/s3.py: no row {sorted(unknown)}; rows: {[row[0] for row in ROWS]}",
              file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("bench/s3.py: wrk not found (apt-get install -y wrk)", file=sys.stderr)
        return 1
    if args.dir is None:
        var_tmp = Path("/var/tmp")
        ok = var_tmp.is_dir() and fs_type(var_tmp) not in ("tmpfs", "ramfs")
        args.dir = var_tmp if ok else Path.cwd()
    moto = Path(sys.executable).with_name("moto_server")
    if "moto" in names and not moto.exists() and shutil.which("moto_server") is None:
        print("bench/s3.py: moto_server not found (pip install 'moto[server]')", file=sys.stderr)
        return 1
    kind = fs_type(args.dir)
    if kind in ("tmpfs", "ramfs") and not args.allow_tmpfs:
        print(f"bench/s3.py: {args.dir} is {kind}; the gateway's store must be on a disk "
              f"(--dir elsewhere, or --allow-tmpfs)", file=sys.stderr)
        return 1
    shm_root = Path("/dev/shm") if fs_type(Path("/dev/shm")) == "tmpfs" else None
    tmp = Path(tempfile.mkdtemp(prefix="vfsd-s3bench-"))
    store_dir = Path(tempfile.mkdtemp(prefix="vfsd-s3bench-store-", dir=args.dir))
    shm = Path(tempfile.mkdtemp(prefix="vfsd-s3bench-bare-", dir=shm_root))
    targets: dict[str, Target] = {}
    results: dict[tuple[str, str], list[dict]] = {}
    try:
        print(f"gateway store: {store_dir} ({kind}, on disk as users run it); bare aiohttp "
              f"bodies: {shm} ({fs_type(shm)}); moto: in memory")
        print(f"load: wrk -t1, presigned SigV4 URLs, {args.duration:g}s per run after "
              f"{args.warmup:g}s warm-up; {os.cpu_count()} CPUs shared by client and servers")
        starters = {"gateway": lambda: start_gateway(tmp, store_dir),
                    "gateway1": lambda: start_gateway(tmp, store_dir, "gateway1", 1),
                    "moto": lambda: start_moto(tmp),
                    "bare": lambda: start_bare(tmp, shm)}
        for name in names:
            targets[name] = starters[name]()
            prepare(targets[name], tmp, rows)
        print("servers: " + ", ".join(f"{t.name} pid {t.proc.pid} port {t.port}"
                                      for t in targets.values()))
        sys.stdout.flush()
        for label, method, size, conns, _n in rows:
            for _round in range(max(1, args.repeat)):
                for name, target in targets.items():
                    if args.settle > 0 and (waited := settle(0.1, args.settle)) >= 1:
                        print(f"  (waited {waited:.0f}s for the machine to go quiet)",
                              flush=True)
                    if args.warmup > 0:
                        run_wrk(target, method, size, conns, args.warmup)
                    res = run_wrk(target, method, size, conns, args.duration)
                    results.setdefault((name, label), []).append(res)
                    print(f"  {label:8} {name:8} {res['ops']:9.1f} ops/s {res['mbps']:8.1f} "
                          f"MB/s {res['cpu_per_op_ms']:8.3f} ms CPU/op  errors {res['errors']}",
                          flush=True)
        if args.hold > 0:
            print(f"holding {args.hold:g}s", flush=True)
            time.sleep(args.hold)
        report({key: median_run(runs) for key, runs in results.items()}, names)
    finally:
        for target in targets.values():
            stop(target.proc)
        for path in (tmp, store_dir, shm):
            shutil.rmtree(path, ignore_errors=True)
    return 0


def median_run(runs: list[dict]) -> dict:
    """The run with the median ops/s (the lower middle one of an even count): one run's
    figures, so that its CPU and latency columns belong to its ops/s."""
    return sorted(runs, key=lambda run: run["ops"])[(len(runs) - 1) // 2]


def report(results: dict, names: list[str]) -> None:
    print()
    head = (f"{'row':8} {'target':8} {'conns':>5} {'ops/s':>9} {'MB/s':>8} {'srv ms CPU/op':>13} "
            f"{'srv cores':>9} {'wrk cores':>9} {'other':>6} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'errors':>6} "
            f"{'x moto':>7} {'% bare':>7}")
    print("srv ms CPU/op: server process utime+stime per op; srv/wrk cores: CPU of the server "
          "and of wrk over the run;\nother: CPU of everything else on the machine meanwhile "
          "(above ~0.1 the run was disturbed). PUT bodies repeat: the store dedups them.")
    print(head)
    print("-" * len(head))
    verdicts = []
    for label, _method, _size, conns, _n in ROWS:
        moto = results.get(("moto", label))
        bare = results.get(("bare", label))
        for name in names:
            r = results.get((name, label))
            if r is None:
                continue
            x_moto = r["ops"] / moto["ops"] if moto and moto["ops"] else float("nan")
            p_bare = 100 * r["ops"] / bare["ops"] if bare and bare["ops"] else float("nan")
            print(f"{label:8} {name:8} {conns:5d} {r['ops']:9.1f} {r['mbps']:8.1f} "
                  f"{r['cpu_per_op_ms']:13.3f} {r['server_cores']:9.2f} {r['client_cores']:9.2f} "
                  f"{r['other_cores']:6.2f} "
                  f"{r['p50_us'] / 1000:8.1f} {r['p99_us'] / 1000:8.1f} {r['errors']:6d} "
                  f"{x_moto:7.2f} {p_bare:6.0f}%")
        g = results.get(("gateway", label))
        if g and moto and bare:
            x_moto = g["ops"] / moto["ops"] if moto["ops"] else float("inf")
            p_bare = g["ops"] / bare["ops"] if bare["ops"] else float("inf")
            ok_moto, ok_bare = x_moto >= 1.5, p_bare >= 0.5
            verdicts.append(f"{label:8} gateway {x_moto:5.2f}x moto "
                            f"[{'PASS' if ok_moto else 'MISS'} >= 1.5x]   "
                            f"{100 * p_bare:4.0f}% of bare aiohttp "
                            f"[{'PASS' if ok_bare else 'MISS'} >= 50%]"
                            + (f"   ({g['errors']} errors)" if g["errors"] else ""))
    busy = [r["other_cores"] for r in results.values()]
    if busy and max(busy) > 0.3:
        print(f"\nWARNING: other processes used up to {max(busy):.2f} cores during the runs "
              f"(median {sorted(busy)[len(busy) // 2]:.2f}): numbers are low and noisy; "
              "rerun on an idle machine.")
    if verdicts:
        print()
        print("targets: gateway >= 1.5x moto ops/s on every row, >= 50% of bare aiohttp")
        for v in verdicts:
            print("  " + v)


if __name__ == "__main__":
    sys.exit(main())
