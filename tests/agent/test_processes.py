"""Process attribution and stopping, against real processes."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from custos.agent.processes import (
    Method,
    Target,
    find_holders,
    gpu_processes,
    inspect_holders,
    parse_cgroup_file,
    parse_container_id,
    process_tree,
    stop_processes,
)
from custos.agent.scanner import ScanConfig, Scanner
from custos.errors import InvalidInput
from tests.agent.test_scanner import run_unprivileged

# mmap(2) through ctypes: Python's mmap.mmap keeps a dup of the descriptor, and this
# holder must hold the file only through its mapping.
MMAP_HOLDER = """
import ctypes, mmap, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(sys.argv[1], os.O_RDONLY)
addr = libc.mmap(None, os.fstat(fd).st_size, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
os.close(fd)
print("ready", flush=True)
time.sleep(120)
"""

OPEN_HOLDER = """
import sys, time
f = open(sys.argv[1], "rb")
print("ready", flush=True)
time.sleep(120)
"""

STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(120)
"""

POLITE = """
import time
print("ready", flush=True)
time.sleep(120)
"""

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


class Procs:
    """Starts python children that print one line when ready; kills the rest at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, code: str, *args: str) -> tuple[subprocess.Popen[str], str]:
        p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
        self.started.append(p)
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        assert line, f"child exited early: {p.wait()}"
        return p, line

    def cleanup(self) -> None:
        for p in self.started:
            for pid in process_tree(p.pid)[::-1]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=10)
            except ChildProcessError:
                pass


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.cleanup()


@pytest.fixture
def weight(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(os.urandom(1 << 16))
    return path


def holds_of(pid: int, targets: list[Target]) -> dict[str, tuple[str, ...]]:
    return {h.how: h.paths for h in find_holders(targets, pids=[pid])}


# --- finding holders ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["auto", "psutil"])
def test_finds_mmap_and_open_holders(procs: Procs, weight: Path, tmp_path: Path, method: Method) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(b"x")
    mapper, _ = procs.start(MMAP_HOLDER, str(weight))
    opener, _ = procs.start(OPEN_HOLDER, str(weight))
    bystander, _ = procs.start(OPEN_HOLDER, str(other))
    holds = find_holders([weight], method=method)
    got = sorted((h.pid, h.how, h.paths) for h in holds)
    assert got == sorted([(mapper.pid, "mmap", (str(weight),)), (opener.pid, "open", (str(weight),))])
    assert bystander.pid not in {h.pid for h in holds}
    h = next(h for h in holds if h.pid == mapper.pid)
    assert h.ppid == os.getpid()
    assert h.user == pwd.getpwuid(os.geteuid()).pw_name
    assert h.cmdline[:2] == (sys.executable, "-c") and h.cmdline[-1] == str(weight)
    assert h.create_time == psutil.Process(mapper.pid).create_time()
    assert h.cgroup == parse_cgroup_file(Path(f"/proc/{mapper.pid}/cgroup").read_text())[0]


def test_holder_through_another_path_is_found_by_inode(procs: Procs, weight: Path, tmp_path: Path) -> None:
    """A container or a bind mount shows the process another path to the same inode."""
    alias = tmp_path / "hardlink.bin"
    os.link(weight, alias)
    mapper, _ = procs.start(MMAP_HOLDER, str(alias))
    opener, _ = procs.start(OPEN_HOLDER, str(alias))
    assert holds_of(mapper.pid, [weight]) == {"mmap": (str(weight),)}
    assert holds_of(opener.pid, [weight]) == {"open": (str(weight),)}


def test_holder_of_a_deleted_file_is_found_from_its_record(procs: Procs, weight: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with Scanner(ScanConfig(roots=[weight.parent], workers=1), state / "c.db") as s:
        (record,) = [r for r in s.scan().records if r.path == str(weight)]
    mapper, _ = procs.start(MMAP_HOLDER, str(weight))
    opener, _ = procs.start(OPEN_HOLDER, str(weight))
    weight.unlink()  # the bytes live on in both processes
    assert holds_of(mapper.pid, [record]) == {"mmap": (str(weight),)}
    assert holds_of(opener.pid, [record]) == {"open": (str(weight),)}
    assert holds_of(opener.pid, [weight]) == {"open": (str(weight),)}  # "(deleted)" path still matches


def test_no_targets_no_work(procs: Procs) -> None:
    assert inspect_holders([]).processes_scanned == 0


def test_agent_itself_is_not_reported_by_default(weight: Path) -> None:
    with open(weight, "rb"):
        assert find_holders([weight], pids=[os.getpid()]) == []
        assert inspect_holders([weight], pids=[os.getpid()], include_self=True).holds[0].how == "open"


def test_gone_and_zombie_processes_are_skipped(weight: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    zombie = psutil.Process(p.pid)
    for _ in range(1000):  # exited but not reaped: a zombie
        if zombie.status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.01)
    assert zombie.status() == psutil.STATUS_ZOMBIE
    res = inspect_holders([weight], pids=[p.pid, 2**22 + 12345])
    assert res.holds == () and res.inaccessible == ()
    p.wait()


def test_processes_we_may_not_inspect_are_reported(procs: Procs, weight: Path) -> None:
    opener, _ = procs.start(OPEN_HOLDER, str(weight))
    if os.geteuid() != 0:  # pragma: no cover - the suite runs as root
        pid = 1
    else:
        pid = opener.pid

    def look() -> object:
        res = inspect_holders([weight], pids=[pid])
        return {"holds": len(res.holds), "inaccessible": [list(x) for x in res.inaccessible]}

    got = run_unprivileged(look)
    assert got == {"holds": 0, "inaccessible": [[pid, "permission denied reading open files"]]}


def test_bad_targets_rejected() -> None:
    with pytest.raises(InvalidInput):
        find_holders([42])  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        find_holders(["/x"], method="guess")  # type: ignore[arg-type]


# --- cgroups and containers ---------------------------------------------------------------------

CID = "4f1e2d3c" * 8
CID2 = "0a" * 32


@pytest.mark.parametrize(
    ("cgroup", "want"),
    [
        (f"/docker/{CID}", CID),  # docker, cgroupfs driver (v1)
        (f"/system.slice/docker-{CID}.scope", CID),  # docker, systemd driver
        (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{CID}.scope", CID),
        (f"/kubepods/besteffort/pod0f1e2d3c-aaaa-bbbb-cccc-000000000000/{CID}", CID),  # cgroupfs under k8s
        (f"/kubepods.slice/kubepods-pod12.slice/crio-{CID}.scope", CID),  # CRI-O
        (f"/kubepods.slice/kubepods-pod12.slice/crio-conmon-{CID}.scope", None),  # CRI-O's monitor, outside
        (f"/machine.slice/libpod-{CID}.scope/container", CID),  # podman
        (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope", CID),  # rootless podman
        (f"/machine.slice/libpod-conmon-{CID}.scope", None),
        (f"/docker/{CID}/docker/{CID2}", CID2),  # docker in docker: the innermost
        ("/user.slice/user-1000.slice/session-3.scope", None),
        ("/", None),
        (f"/docker/{CID[:-1]}", None),  # 63 hex digits is not an id
        (f"/docker/{CID.upper()}", None),
    ],
)
def test_parse_container_id(cgroup: str, want: str | None) -> None:
    assert parse_container_id(cgroup) == want


def test_parse_cgroup_file() -> None:
    v1 = f"12:memory:/docker/{CID}\n11:cpu,cpuacct:/docker/{CID}\n1:name=systemd:/docker/{CID}\n0::/\n"
    assert parse_cgroup_file(v1) == (f"/docker/{CID}", CID)
    v2 = "0::/system.slice/custos-agent.service\n"
    assert parse_cgroup_file(v2) == ("/system.slice/custos-agent.service", None)
    assert parse_cgroup_file("4:memory:/a\n3:cpu:/b\n") == ("/a", None)
    assert parse_cgroup_file("") == ("", None)


# --- GPUs ---------------------------------------------------------------------------------------


def test_gpu_processes_without_nvml_is_empty_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="custos.agent.processes")
    first = gpu_processes()
    second = gpu_processes()
    assert isinstance(first, list) and isinstance(second, list)
    try:
        # optional: pynvml comes with the agent's nvml extra
        import pynvml  # noqa: F401
    except ImportError:
        assert first == second == []


# --- trees and stopping -------------------------------------------------------------------------


def test_process_tree(procs: Procs) -> None:
    parent, line = procs.start(PARENT)
    child = int(line)
    assert process_tree(parent.pid) == [parent.pid, child]
    assert process_tree(child) == [child]
    assert process_tree(2**22 + 12345) == []


def test_stop_polite_and_stubborn_processes(procs: Procs) -> None:
    polite, _ = procs.start(POLITE)
    stubborn, _ = procs.start(STUBBORN)
    results = stop_processes([polite.pid, stubborn.pid], grace_s=0.5)
    by_pid = {r.pid: r for r in results}
    assert [r.pid for r in results] == [polite.pid, stubborn.pid]
    p = by_pid[polite.pid]
    assert (p.signals, p.exited, p.exit_code, p.error, p.refused) == (("SIGTERM",), True, -signal.SIGTERM, None, None)
    s = by_pid[stubborn.pid]
    assert (s.signals, s.exited, s.exit_code, s.error) == (("SIGTERM", "SIGKILL"), True, -signal.SIGKILL, None)
    assert s.name.startswith("python") and s.create_time is not None
    assert not psutil.pid_exists(stubborn.pid)


def test_stop_a_non_child_reports_exit_without_code(procs: Procs) -> None:
    _parent, line = procs.start(PARENT)
    grandchild = int(line)
    (r,) = stop_processes([grandchild], grace_s=5)
    # Its parent, not us, reaps it: gone (or a zombie) is what we can confirm.
    assert r.signals == ("SIGTERM",) and r.exited and r.exit_code is None


def test_stop_refuses_init_itself_and_groups() -> None:
    results = stop_processes([1, os.getpid(), 0, -1, 1], grace_s=0)
    assert [r.pid for r in results] == [1, os.getpid(), 0, -1]
    assert all(r.signals == () and r.refused and not r.exited for r in results)
    assert "itself" in (results[1].refused or "")


def test_stop_already_gone() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    (r,) = stop_processes([p.pid], grace_s=0)
    assert r.signals == () and r.exited and r.error is None


def test_stop_rejects_bad_input() -> None:
    with pytest.raises(InvalidInput):
        stop_processes([True], grace_s=1)
    with pytest.raises(InvalidInput):
        stop_processes(["12"], grace_s=1)  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        stop_processes([12345], grace_s=-1)
