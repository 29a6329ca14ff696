"""A gateway of several server processes on one port (gateway/supervisor.py): connections
spread over them, a port already taken is refused, /metrics sums them, a server process that
dies is replaced, and a `kill -9` of the gateway leaves none running."""

from __future__ import annotations

import http.client
import os
import re
import signal
import urllib.request
from pathlib import Path

import pytest
from s3gateway import GatewayProcess, client, free_port, make_store, wait_for

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


def test_connections_spread_and_metrics_add_up(tmp_path):
    keys = make_store(tmp_path / "store")
    metrics_port = free_port()
    process = GatewayProcess(tmp_path / "store", tmp_path / "log",
                             ["--processes", "3", "--metrics-listen",
                              f"127.0.0.1:{metrics_port}"]).start()
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
