"""A gateway of several server processes on one port (gateway/supervisor.py): connections
spread over them, a port already taken is refused, /metrics sums them and its counters never
go down, a server process that dies is replaced, starts and stops interrupted by signals end
cleanly, and a `kill -9` of the gateway leaves none running."""

from __future__ import annotations

import asyncio
import errno
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from s3gateway import (
    ROOT,
    GatewayProcess,
    Keys,
    child_pids,
    client,
    free_port,
    make_store,
    wait_for,
)

from gateway import supervisor as supervisor_module
from gateway.config import GatewayConfig

pytestmark = pytest.mark.timeout(120)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def serving_processes(log: str) -> set[str]:
    """Request-id prefixes (one per server process) of the requests logged."""
    return set(re.findall(r"request_id=([0-9A-F]{8})[0-9A-F]{8} ", log))


def requests_counted(metrics_port: int, operation: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(value) for value in re.findall(
        rf'^vfsd_gateway_requests_total{{operation="{operation}",status="200"}} (\S+)$', text,
        re.MULTILINE))


def metered_gateway(tmp_path: Path, processes: int) -> tuple[GatewayProcess, Keys, int]:
    """A gateway of `processes` server processes with /metrics on a port of its own."""
    keys = make_store(tmp_path / "store")
    metrics_port = free_port()
    process = GatewayProcess(tmp_path / "store", tmp_path / "log",
                             ["--processes", str(processes), "--metrics-listen",
                              f"127.0.0.1:{metrics_port}"]).start()
    return process, keys, metrics_port


def test_connections_spread_and_metrics_add_up(tmp_path):
    process, keys, metrics_port = metered_gateway(tmp_path, 3)
    try:
        assert len(process.server_pids()) == 3
        assert "3 processes" in process.log()
        s3 = client(process.endpoint, keys)
        s3.create_bucket(Bucket="spread")
        url = s3.generate_presigned_url("put_object", Params={"Bucket": "spread", "Key": "k"},
                                        ExpiresIn=600).split(f":{process.port}", 1)[1]
        # A connection each: the kernel picks the process per connection, at random.
        for i in range(30):
            conn = http.client.HTTPConnection("127.0.0.1", process.port, timeout=10)
            conn.request("PUT", url, body=f"body {i}".encode())
            assert conn.getresponse().status == 200
            conn.close()
        assert len(serving_processes(process.log())) == 3, process.log()
        assert requests_counted(metrics_port, "PutObject") == 30
        assert s3.get_object(Bucket="spread", Key="k")["Body"].read() == b"body 29"
        servers = process.server_pids()
    finally:
        assert process.stop() == 0, process.log()
    assert not any(alive(pid) for pid in servers)


def test_a_second_gateway_on_the_same_port_is_refused(tmp_path):
    keys = make_store(tmp_path / "store")
    first = GatewayProcess(tmp_path / "store", tmp_path / "log1", ["--processes", "2"]).start()
    try:
        second = GatewayProcess(tmp_path / "store", tmp_path / "log2", ["--processes", "2"])
        with pytest.raises(RuntimeError, match="(?s)cannot start.*Address already in use"):
            second.start(port=first.port)
        client(first.endpoint, keys).create_bucket(Bucket="still-first")
    finally:
        assert first.stop() == 0, first.log()


def test_a_dead_server_process_is_replaced(tmp_path):
    keys = make_store(tmp_path / "store")
    process = GatewayProcess(tmp_path / "store", tmp_path / "log", ["--processes", "2"]).start()
    try:
        s3 = client(process.endpoint, keys)
        s3.create_bucket(Bucket="phoenix")
        before = process.server_pids()
        os.kill(before[0], signal.SIGKILL)
        wait_for(lambda: len(process.server_pids()) == 2 and before[0] not in
                 process.server_pids(), what="a new server process")
        wait_for(lambda: "event=server-process-restarted" in process.log(),
                 what="the restart to be logged")
        for i in range(10):  # fresh clients: fresh connections, spread over both
            client(process.endpoint, keys).put_object(Bucket="phoenix", Key=f"k{i}", Body=b"x")
        assert len(s3.list_objects_v2(Bucket="phoenix")["Contents"]) == 10
    finally:
        assert process.stop() == 0, process.log()


def test_kill_9_of_the_gateway_leaves_no_server_process(tmp_path):
    keys = make_store(tmp_path / "store")
    process = GatewayProcess(tmp_path / "store", tmp_path / "log", ["--processes", "2"]).start()
    client(process.endpoint, keys).create_bucket(Bucket="gone")
    servers = process.server_pids()
    assert process.proc is not None and process.proc.pid not in servers
    process.proc.send_signal(signal.SIGKILL)  # the supervisor alone, as a user would
    process.proc.wait()
    wait_for(lambda: not any(alive(pid) for pid in servers), timeout=10,
             what="the server processes to die with the gateway")


def test_one_process_serves_without_a_supervisor(tmp_path):
    keys = make_store(tmp_path / "store")
    process = GatewayProcess(tmp_path / "store", tmp_path / "log", ["--processes", "1"]).start()
    try:
        assert process.server_pids() == [process.proc.pid]
        client(process.endpoint, keys).create_bucket(Bucket="single")
        assert "processes)" not in process.log()
    finally:
        assert process.stop() == 0, process.log()


DUAL_STACK_NAME = '''
import socket

_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    """`dual.test` resolves as `localhost` does on most machines: ::1, then 127.0.0.1."""
    if host == "dual.test":
        return [*_getaddrinfo("::1", *args, **kwargs), *_getaddrinfo("127.0.0.1", *args, **kwargs)]
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = getaddrinfo
'''


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback address here")
@pytest.mark.parametrize("processes", [1, 2])
def test_a_host_name_of_two_addresses_is_served_on_both(tmp_path, monkeypatch, processes):
    """`--listen localhost:9000` where localhost is ::1 and 127.0.0.1: aiohttp's listener (one
    process) takes both, and so must a supervisor's. The name's resolution is the only thing
    made up here (a sitecustomize in the gateway's PYTHONPATH): this machine's hosts file
    decides what `localhost` is."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(DUAL_STACK_NAME)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'site'}:{os.environ.get('PYTHONPATH', '')}")
    keys = make_store(tmp_path / "store")
    process = GatewayProcess(tmp_path / "store", tmp_path / "log",
                             ["--host", "dual.test", "--processes", str(processes)]).start()
    try:
        client(process.endpoint, keys).create_bucket(Bucket="both")
        v6 = client(f"http://[::1]:{process.port}", keys)
        assert [b["Name"] for b in v6.list_buckets()["Buckets"]] == ["both"]
        if processes > 1:
            assert len(process.server_pids()) == processes
    finally:
        assert process.stop() == 0, process.log()


def test_server_processes_that_keep_dying_stop_the_gateway(tmp_path):
    make_store(tmp_path / "store")
    process = GatewayProcess(tmp_path / "store", tmp_path / "log", ["--processes", "2"]).start()
    assert process.proc is not None
    for _ in range(3):
        victim = process.server_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda victim=victim: process.proc.poll() is not None or
                 victim not in process.server_pids() and len(process.server_pids()) == 2,
                 what="a replacement, or the gateway giving up")
    assert process.proc.wait(timeout=30) == 1, process.log()
    assert "event=server-process-crash-loop" in process.log()


def spawn(store: Path, log: Path, port: int, session: bool = False) -> subprocess.Popen[bytes]:
    """A two-process gateway started by hand: SIGINT at its default, as from a terminal."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "--store", str(store), "--host", "127.0.0.1",
             "--port", str(port), "--processes", "2"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=session,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509


def test_two_gateways_started_together_do_not_share_a_port(tmp_path):
    """Both start at once: the one that listens second must give up, not join the first's
    SO_REUSEPORT group (the kernel would split connections between two gateways)."""
    make_store(tmp_path / "store")
    port = free_port()
    first = spawn(tmp_path / "store", tmp_path / "log1", port)
    second = spawn(tmp_path / "store", tmp_path / "log2", port)
    try:
        wait_for(lambda: first.poll() is not None or second.poll() is not None
                 or "serving" in (tmp_path / "log1").read_text()
                 and "serving" in (tmp_path / "log2").read_text(), timeout=30,
                 what="both gateways to start or one to give up")
        time.sleep(0.5)
        running = [p for p in (first, second) if p.poll() is None]
        assert len(running) == 1, "two gateways serve one port"
        gave_up = (tmp_path / ("log2" if running[0] is first else "log1")).read_text()
        assert "cannot start" in gave_up and "Address already in use" in gave_up, gave_up
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)


def test_sigterm_while_server_processes_start_is_a_clean_stop(tmp_path):
    make_store(tmp_path / "store")
    log = tmp_path / "log"
    proc = spawn(tmp_path / "store", log, free_port())
    wait_for(lambda: len(child_pids(proc.pid)) == 2, what="the server processes to be started")
    proc.send_signal(signal.SIGTERM)
    status = proc.wait(timeout=60)
    text = log.read_text()
    assert status == 0, text
    assert "server-process-stopped" not in text and "Traceback" not in text, text


def test_ctrl_c_while_server_processes_start_leaves_no_traceback(tmp_path):
    """A terminal's Ctrl-C signals its whole foreground process group."""
    make_store(tmp_path / "store")
    log = tmp_path / "log"
    proc = spawn(tmp_path / "store", log, free_port(), session=True)
    wait_for(lambda: len(child_pids(proc.pid)) == 2, what="the server processes to be started")
    time.sleep(0.2)  # they are importing aiohttp and the store
    os.killpg(proc.pid, signal.SIGINT)
    status = proc.wait(timeout=60)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert status == 0, text


def test_a_scrape_while_a_server_process_restarts_waits_for_it(tmp_path, monkeypatch):
    """A scrape's question to a server process being restarted must not reach the new
    process before its configuration does (it would take the question for its hello, and the
    restart would fail). The question is queued as the new control socket appears: the
    interleaving that 4 threads scraping /metrics while server processes were killed hit
    about one run in three."""
    make_store(tmp_path / "store")
    config = GatewayConfig(store=tmp_path / "store", port=0, processes=2, gc_interval=None,
                           access_log=False)
    real_connect = asyncio.open_unix_connection

    async def main() -> None:
        listeners = supervisor_module.listen_sockets("127.0.0.1", 0, 2)
        supervisor = supervisor_module.Supervisor(config, listeners)
        try:
            await supervisor.start()
            server = supervisor.servers[1]
            assert server.proc is not None
            server.proc.kill()
            await server.proc.wait()

            async def connect(*args, **kwargs):
                pair = await real_connect(*args, **kwargs)
                asyncio.ensure_future(server.metrics())  # a scrape's question, under way
                return pair

            monkeypatch.setattr(supervisor_module.asyncio, "open_unix_connection", connect)
            await server.start()  # what Supervisor.watch does
            monkeypatch.undo()
            await server.metrics()
            assert server.last is not None and server.last["in_flight"] == 0
        finally:
            monkeypatch.undo()
            assert await supervisor.stop()
            supervisor_module.close_all(listeners)

    asyncio.run(main())


def test_summed_counters_do_not_go_down_when_a_server_process_restarts(tmp_path):
    """/metrics is one Prometheus target: its counters, sums over the server processes, must
    keep the counts of one that died (a drop reads as a reset to 0, and rate() spikes)."""
    process, keys, metrics_port = metered_gateway(tmp_path, 2)
    try:
        client(process.endpoint, keys).create_bucket(Bucket="counted")
        for i in range(20):  # fresh clients: connections spread over both processes
            client(process.endpoint, keys).put_object(Bucket="counted", Key=f"k{i}", Body=b"x")
        assert requests_counted(metrics_port, "PutObject") == 20
        os.kill(process.server_pids()[0], signal.SIGKILL)
        wait_for(lambda: "event=server-process-restarted" in process.log(), what="the restart")
        assert requests_counted(metrics_port, "PutObject") == 20
        client(process.endpoint, keys).put_object(Bucket="counted", Key="one-more", Body=b"x")
        assert requests_counted(metrics_port, "PutObject") == 21
    finally:
        assert process.stop() == 0, process.log()


def test_deleted_segments_are_not_pinned_by_server_processes_that_run_no_gc(tmp_path):
    """Only the first server process runs gc passes; the others must still let go of the
    segments those passes delete, or the space of deleted objects never comes back."""
    keys = make_store(tmp_path / "store")
    process = GatewayProcess(tmp_path / "store", tmp_path / "log",
                             ["--processes", "2", "--gc-interval", "1"]).start()
    try:
        s3 = client(process.endpoint, keys)
        s3.create_bucket(Bucket="space")
        for i in range(3):  # 144 MiB of distinct chunks: two sealed 64 MiB segments
            s3.put_object(Bucket="space", Key=f"o{i}", Body=os.urandom(48 << 20))
        # Small ranged reads over fresh connections until each process has read every object.
        served: dict[int, set[str]] = {i: set() for i in range(3)}
        for _ in range(200):
            if all(len(p) == 2 for p in served.values()):
                break
            c = client(process.endpoint, keys)
            for i in range(3):
                for offset in range(0, 48 << 20, 8 << 20):
                    r = c.get_object(Bucket="space", Key=f"o{i}",
                                     Range=f"bytes={offset}-{offset + 1023}")
                    r["Body"].read()
                served[i].add(r["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"][:8])
        assert all(len(p) == 2 for p in served.values()), served
        for i in range(3):
            s3.delete_object(Bucket="space", Key=f"o{i}")
        segments = tmp_path / "store" / "segments"
        before = {p.name for p in segments.iterdir()}
        wait_for(lambda: len(before - {p.name for p in segments.iterdir()}) >= 2, timeout=60,
                 what="gc to delete the dead segments")
        wait_for(lambda: not deleted_segments_open(process.server_pids()), timeout=10,
                 what="every server process to let go of the deleted segments")
    finally:
        assert process.stop() == 0, process.log()


def deleted_segments_open(pids: list[int]) -> dict[int, list[str]]:
    pinned = {}
    for pid in pids:
        held = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except FileNotFoundError:
                continue
            if ".seg" in target and target.endswith("(deleted)"):
                held.add(target)
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            if ".seg" in line and line.endswith("(deleted)"):
                held.add(line.split()[-2])
        if held:
            pinned[pid] = sorted(held)
    return pinned


def test_a_restart_that_cannot_spawn_still_stops_the_gateway_cleanly(tmp_path, monkeypatch):
    """A server process dies and its replacement cannot be spawned (fork: EAGAIN/ENOMEM, as
    under the memory pressure that may have killed it): the gateway must not go on without a
    watcher (no restarts; the dead process's socket queues connections nobody accepts), and
    a SIGTERM must still stop the other server process as asked, not raise past it."""
    make_store(tmp_path / "store")
    config = GatewayConfig(store=tmp_path / "store", port=0, processes=2, gc_interval=None,
                           access_log=False)
    made: list[supervisor_module.Supervisor] = []
    real_init = supervisor_module.Supervisor.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(supervisor_module.Supervisor, "__init__", init)

    async def fail_spawn(*args, **kwargs):
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    async def main() -> tuple[int | BaseException, bool]:
        listeners = supervisor_module.listen_sockets("127.0.0.1", 0, 2)
        gateway = asyncio.ensure_future(supervisor_module._supervise(config, listeners))
        while not made or not all(s.writer is not None for s in made[0].servers):
            assert not gateway.done(), gateway
            await asyncio.sleep(0.05)
        supervisor = made[0]
        monkeypatch.setattr(supervisor_module.asyncio, "create_subprocess_exec", fail_spawn)
        victim, other = supervisor.servers
        victim.proc.kill()
        await asyncio.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler sets the stop event
        try:
            outcome: int | BaseException = await asyncio.wait_for(gateway, 60)
        except BaseException as e:  # noqa: BLE001
            outcome = e
        finally:
            supervisor_module.close_all(listeners)
        other_alive = other.proc.returncode is None
        if other_alive:
            other.proc.kill()
            await other.proc.wait()
        return outcome, other_alive

    outcome, other_alive = asyncio.run(main())
    assert not other_alive, f"the other server process was left running; _supervise: {outcome!r}"
    assert outcome == 1, f"_supervise ended with {outcome!r}, not exit status 1"
