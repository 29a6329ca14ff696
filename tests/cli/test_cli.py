"""The `vfsd` command as a user runs it: exit codes, one-line errors, --json for scripts."""

import json
import os
import subprocess
import sys

import pytest

from vfsd.store import Store

pytestmark = pytest.mark.timeout(120)


def vfsd(*args, store=None, check=False, **environment):
    env = dict(os.environ, **environment)
    if store is not None:
        env["VFSD_STORE"] = str(store)
    result = subprocess.run([sys.executable, "-m", "vfsd", *args], capture_output=True,
                            text=True, env=env, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def one_line_error(result, code=None):
    assert result.returncode != 0
    if code is not None:
        assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store"
    vfsd("init", store=path, check=True)
    return path


def test_missing_store_is_one_line(tmp_path):
    line = one_line_error(vfsd("stats", store=tmp_path / "nowhere"), 1)
    assert "no store" in line


def test_not_a_store_and_bad_format(tmp_path):
    (tmp_path / "plain").mkdir()
    assert "store.toml is missing" in one_line_error(vfsd("stats", store=tmp_path / "plain"))
    path = tmp_path / "s"
    vfsd("init", store=path, check=True)
    toml = (path / "store.toml").read_text()
    (path / "store.toml").write_text(toml.replace("format_version = 1", "format_version = 99"))
    assert "format 99" in one_line_error(vfsd("stats", store=path))
    (path / "store.toml").write_text("this is [not toml")
    assert "corrupt" in one_line_error(vfsd("stats", store=path))


def test_export_says_why_it_cannot_copy_the_disk(store, tmp_path):
    """Unmounted, export copies the disk to a sparse raw file in the temporary directory
    first: one past what that file system takes (ext4: 16 TiB) is refused with a line that
    says so, and leaves nothing behind."""
    vfsd("vm", "create", "big", "--disk", "100P", "--memory", "256M", store=store, check=True)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = vfsd("vm", "export", "big", str(tmp_path / "big.qcow2"), store=store,
                  TMPDIR=str(tmp))
    line = one_line_error(result, 1)
    assert "File too large in the temporary raw copy of VM big's" in line, line
    assert "through the mount" in line
    assert not (tmp_path / "big.qcow2").exists() and not list(tmp.iterdir())


def test_init_twice_refused(store):
    assert "already a vfsd store" in one_line_error(vfsd("init", store=store))


@pytest.mark.parametrize("name", ["a/b", "..", ".", "x" * 256, "new\nline"])
def test_bad_vm_names(store, name):
    one_line_error(vfsd("vm", "create", name, "--disk", "1G", "--memory", "1G", store=store))


def test_bad_sizes_are_usage_errors(store):
    line = one_line_error(vfsd("vm", "create", "web", "--disk", "20X", "--memory", "2G",
                               store=store), 2)
    assert "20X" in line
    one_line_error(vfsd("volume", "create", "v", "--size", "-1G", store=store), 2)
    # Past the largest file Linux can hold (8 EiB): such a disk broke every listing of its
    # directory on the mount, and 16 EiB did not fit the index's 64-bit field.
    for size in ("8192P", "16384P"):
        assert "8 EiB" in one_line_error(vfsd("volume", "create", "v", "--size", size,
                                              store=store), 2)
        one_line_error(vfsd("vm", "create", "big", "--disk", "1G", "--memory", size,
                            store=store), 2)
        one_line_error(vfsd("pool", "set", "--quota", size, store=store), 2)


@pytest.mark.parametrize("grace", ["250ms", "0.25", "0.25s", "1m"])
def test_durations_take_a_unit(store, grace):
    vfsd("gc", "--grace", grace, store=store, check=True)


@pytest.mark.parametrize("grace", ["0ms", "-1s", "inf", "nan", "5x", "ms", ""])
def test_bad_durations_are_usage_errors(store, grace):
    line = one_line_error(vfsd("gc", f"--grace={grace}", store=store), 2)
    assert "invalid duration" in line


def test_a_quota_below_physical_use_is_set_with_a_warning(store):
    with Store.open(store) as s:
        s.write_file("data", os.urandom(3 << 20))
    out = vfsd("pool", "set", "--quota", "1M", store=store, check=True).stdout
    assert "pool quota: 1.0 MiB; physical use 3.0 MiB" in out
    assert "warning: the quota is below what the pool already holds" in out
    out = vfsd("pool", "set", "--quota", "1G", store=store, check=True).stdout
    assert "warning" not in out


@pytest.mark.parametrize("count", ["0", "-2", "two"])
def test_bad_gateway_process_counts_are_usage_errors(store, count):
    line = one_line_error(vfsd("gateway", "--processes", count, "--listen", "127.0.0.1:0",
                               store=store), 2)
    assert count in line


def test_vm_and_volume_lifecycle(store):
    created = json.loads(vfsd("vm", "create", "web", "--disk", "20G", "--memory", "2G",
                              "--json", store=store, check=True).stdout)
    assert created["disks"][0]["size"] == 20 << 30
    assert "already exists" in one_line_error(
        vfsd("vm", "create", "web", "--disk", "1G", "--memory", "1G", store=store))
    vfsd("volume", "create", "data", "--size", "10G", store=store, check=True)
    vfsd("volume", "attach", "data", "--vm", "web", store=store, check=True)
    vfsd("vm", "create", "db", "--disk", "1G", "--memory", "1G", store=store, check=True)
    assert "attached to VM web" in one_line_error(
        vfsd("volume", "attach", "data", "--vm", "db", store=store))
    assert "detach it first" in one_line_error(vfsd("volume", "rm", "data", store=store))
    volumes = json.loads(vfsd("volume", "ls", "--json", store=store, check=True).stdout)
    assert volumes == [{"name": "data", "size": 10 << 30, "physical": 0, "attached_to": "web"}]
    vfsd("vm", "rm", "web", store=store, check=True)
    volumes = json.loads(vfsd("volume", "ls", "--json", store=store, check=True).stdout)
    assert volumes[0]["attached_to"] is None
    assert [v["name"] for v in json.loads(vfsd("vm", "ls", "--json", store=store,
                                               check=True).stdout)] == ["db"]
    stats = json.loads(vfsd("stats", "--json", store=store, check=True).stdout)
    assert stats["provisioned_bytes"] == (1 << 30) + (1 << 30) + (10 << 30) + 8684
    assert "no VM named nope" in one_line_error(vfsd("vm", "show", "nope", store=store))
    assert vfsd("fsck", store=store).returncode == 0


def test_users(store):
    user = json.loads(vfsd("user", "add", "alice", "--json", store=store, check=True).stdout)
    assert len(user["access_key"]) == 20 and len(user["secret_key"]) >= 40
    assert "already exists" in one_line_error(vfsd("user", "add", "alice", store=store))
    listed = json.loads(vfsd("user", "ls", "--json", store=store, check=True).stdout)
    assert [u["access_key"] for u in listed] == [user["access_key"]]
    assert "secret" not in json.dumps(listed)
    # `list` and `remove` are the same verbs as `ls` and `rm`
    assert json.loads(vfsd("user", "list", "--json", store=store, check=True).stdout) == listed
    vfsd("user", "remove", "alice", store=store, check=True)
    one_line_error(vfsd("user", "rm", "alice", store=store))


def test_fsck_reports_damage_and_exits_3(store):
    vfsd("vm", "create", "web", "--disk", "1G", "--memory", "1G", "--firmware", "bios",
         store=store, check=True)
    # Flip one byte inside a chunk body: the descriptor's text lives in the first segment.
    segments = sorted((store / "segments").iterdir())
    victim = next(p for p in segments if p.stat().st_size > 100)
    data = bytearray(victim.read_bytes())
    data[60] ^= 0xFF
    victim.write_bytes(bytes(data))
    result = vfsd("fsck", store=store)
    assert result.returncode == 3
    assert "damage:" in result.stdout


def test_every_verb_has_help(store):
    for verb in (["init"], ["stats"], ["fsck"], ["vm", "create"], ["vm", "ls"], ["vm", "rm"],
                 ["vm", "resize"], ["volume", "attach"], ["user", "add"]):
        result = vfsd(*verb, "--help", check=True)
        assert "usage: vfsd" in result.stdout


def test_a_broken_vm_directory_is_listed_as_such_and_can_be_removed(store):
    """Through the mount anyone can make a directory under vms/, or delete a VM's .vmx: one
    such entry must not stop `vm ls` for all the others, and `vm rm` must clean it up
    (detaching a volume the broken VM still holds)."""
    from vfsd.store import Store

    for name in ("good", "bad"):
        vfsd("vm", "create", name, "--disk", "1G", "--memory", "1G", store=store, check=True)
    vfsd("volume", "create", "data", "--size", "1G", store=store, check=True)
    vfsd("volume", "attach", "data", "--vm", "bad", store=store, check=True)
    with Store.open(store) as opened:
        opened.mkdir(opened.resolve("vms").ino, b"junk")
        opened.unlink(opened.resolve("vms/bad").ino, b"bad.vmx")
    listed = vfsd("vm", "ls", store=store, check=True).stdout
    assert "broken" in listed and "good" in listed
    rows = json.loads(vfsd("vm", "ls", "--json", store=store, check=True).stdout)
    assert {row["name"]: "error" in row for row in rows} == {
        "bad": True, "good": False, "junk": True}
    for name in ("junk", "bad"):
        vfsd("vm", "rm", name, store=store, check=True)
    assert [row["name"] for row in json.loads(
        vfsd("vm", "ls", "--json", store=store, check=True).stdout)] == ["good"]
    volumes = json.loads(vfsd("volume", "ls", "--json", store=store, check=True).stdout)
    assert volumes[0]["attached_to"] is None
    assert vfsd("fsck", store=store).returncode == 0


def test_fsck_grace_without_repair_is_a_usage_error(store):
    assert "--repair" in one_line_error(vfsd("fsck", "--grace", "1", store=store), 2)
    done = vfsd("fsck", "--repair", "--grace", "1", store=store)
    assert done.returncode == 0 and "unreferenced bytes" in done.stdout, done.stdout


def test_a_long_vm_name_gets_one_limit_whatever_its_length(store):
    for length in (201, 255, 300):
        line = one_line_error(vfsd("vm", "create", "v" * length, "--disk", "1G", "--memory",
                                   "1G", store=store))
        assert f"{length} bytes; 200 at most" in line, line


def test_a_reader_that_leaves_early_is_no_error(store):
    """`vfsd stats | head -1`: the pipe closes before vfsd is done writing."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "vfsd", "stats", "--store", str(store)],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                                check=False)
    finally:
        os.close(write_end)
    assert result.stderr == "" and result.returncode == 141


def test_snapshot_errors_name_the_vm_and_one_limit(store):
    assert one_line_error(vfsd("vm", "snapshot", "nosuch", "s", store=store)) == (
        "vfsd: error: no VM named nosuch")
    vfsd("vm", "create", "a", "--disk", "1G", "--memory", "64M", store=store, check=True)
    for length in (220, 300):  # both past the 200-byte limit, however far
        assert "200 bytes at most" in one_line_error(
            vfsd("vm", "snapshot", "a", "x" * length, store=store))
