"""The guard's policy, responder, watchdog and modes against real processes and the real kernel.

A "workload" here is a real process tree started in its own session (as the supervisor
starts one); openers are real processes (``cat``, ``python``, copies of them); every
open that the guard refuses is refused by the kernel (EPERM).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from custos.agent.blocks import ManifestCache
from custos.agent.config import config_from_dict
from custos.agent.guard import AllowEntry, Guard, GuardSettings, Policy, WorkloadMembers, WorkloadZone, Zone
from custos.agent.guard.fanotify import FAN_CLASS_CONTENT, FAN_EVENT_ON_CHILD, FAN_OPEN_PERM, Fanotify
from custos.agent.guard.policy import PolicyState
from custos.agent.guard.responder import Opened, PermissionResponder
from custos.agent.scanner import FileRecord
from custos.errors import InvalidInput
from custos.fs.hashing import build_manifest
from custos.v1 import custody_pb2

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="fanotify permission groups need root (CI runs as root)")
CAT = os.path.realpath(shutil.which("cat") or "/bin/cat")
SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
TAIL = os.path.realpath(shutil.which("tail") or "/usr/bin/tail")
AID = "a" * 64
OTHER_AID = "b" * 64

# A workload: reads the file named on each stdin line, says ok or the errno; "fork" makes a child
# that does the same (in the workload's session), "setsid" a child in a session of its own.
WORKLOAD = r"""
import os, sys, subprocess
def serve(inp, out):
    for line in inp:
        cmd = line.strip()
        if cmd in ("fork", "setsid"):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                     start_new_session=(cmd == "setsid"))
            print(child.pid, flush=True)
            continue
        try:
            with open(cmd, "rb") as f:
                f.read()
            print("ok", flush=True)
        except OSError as e:
            print("err", e.errno, flush=True)
serve(sys.stdin, sys.stdout)
"""


def sha256_of(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Workload:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKLOAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.pid = self.proc.pid
        self.create_time = psutil.Process(self.pid).create_time()
        self.children: list[int] = []

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def read(self, path: Path) -> str:
        return self.ask(str(path))

    def spawn(self, how: str) -> int:
        pid = int(self.ask(how))
        self.children.append(pid)
        return pid

    def members(self, wid: str = "w-1", aid: str = AID) -> WorkloadMembers:
        return WorkloadMembers(workload_id=wid, artifact_id=aid, root_pid=self.pid, root_create_time=self.create_time,
                               members={self.pid: self.create_time})

    def stop(self) -> None:
        for pid in self.children:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def procs() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(list(argv))
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
        p.wait()


@pytest.fixture
def workload() -> Iterator[Workload]:
    w = Workload()
    yield w
    w.stop()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "runs" / "w-1" / "artifact" / "shards"
    d.mkdir(parents=True)
    (d / "model-00001.safetensors").write_bytes(b"plaintext shard 1")
    (d.parent / "config.json").write_bytes(b"{}")
    return tmp_path / "runs" / "w-1"


def shard(run_dir: Path) -> Path:
    return run_dir / "artifact" / "shards" / "model-00001.safetensors"


def wait_for(pred: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# -- the policy table -------------------------------------------------------------------------------


def test_the_custody_policy_table(workload: Workload, procs: Callable[..., subprocess.Popen[bytes]],
                                  tmp_path: Path) -> None:
    copy = tmp_path / "sleep-copy"
    shutil.copy2(SLEEP, copy)
    other_w = Workload()
    try:
        child = workload.spawn("fork")
        own_session = workload.spawn("setsid")  # left the session; still a descendant
        stranger = procs(TAIL, "-f", "/dev/null").pid
        other_uid = procs("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", TAIL, "-f", "/dev/null").pid
        allowed = procs(SLEEP, "61").pid
        renamed = procs(str(copy), "62").pid
        zone = Zone(kind="workload", root=str(tmp_path / "runs" / "w-1"), fail_closed=True, workload_id="w-1",
                    artifact_id=AID)
        other_zone = Zone(kind="workload", root=str(tmp_path / "runs" / "w-2"), fail_closed=True, workload_id="w-2",
                          artifact_id=OTHER_AID)
        protected = Zone(kind="protected", root=str(tmp_path / "protected"), fail_closed=True)
        canary = Zone(kind="canary", root=str(tmp_path / "decoy"), fail_closed=False, canary_id="c-1")
        right = Policy(allow=[AllowEntry(path=SLEEP, sha256=sha256_of(SLEEP))])
        wrong = Policy(allow=[AllowEntry(path=SLEEP, sha256="0" * 64)])
        for p in (right, wrong):
            p.update(workloads={"w-1": workload.members(), "w-2": other_w.members("w-2", OTHER_AID)})
        reused = Policy()  # the supervisor's pid with another start time: a reused pid, not the workload
        reused.update(workloads={"w-1": WorkloadMembers(
            workload_id="w-1", artifact_id=AID, root_pid=stranger, root_create_time=1.0, members={stranger: 1.0})})

        table: list[tuple[str, Policy, int, Zone, bool]] = [
            ("the workload itself", right, workload.pid, zone, True),
            ("a child of the workload (not yet tracked)", right, child, zone, True),
            ("a descendant that left the workload's session", right, own_session, zone, True),
            ("another workload, in this workload's run directory", right, other_w.pid, zone, False),
            ("the workload, in another workload's run directory", right, workload.pid, other_zone, False),
            ("a workload, on a protected path", right, workload.pid, protected, True),
            ("an unlisted process", right, stranger, zone, False),
            ("a process of another uid", right, other_uid, zone, False),
            ("an allow-listed executable, right sha256", right, allowed, protected, True),
            ("an allow-listed executable, right sha256, in a run directory", right, allowed, zone, True),
            ("an allow-listed path, wrong sha256", wrong, allowed, protected, False),
            ("a renamed copy of the allow-listed executable", right, renamed, protected, False),
            ("a reused pid of a tracked process", reused, stranger, zone, False),
            ("the agent itself", right, os.getpid(), zone, True),
            ("anyone, on a canary (allowed, reported)", right, stranger, canary, True),
        ]
        for what, policy, pid, z, want in table:
            d = policy.decide_now(pid, z, None)
            assert d.allow is want, f"{what}: {d}"
            assert (d.report is not None) is (not want or z.kind == "canary"), f"{what}: {d}"
        assert right.decide_now(stranger, canary, None).report == "canary"

        # From a halt on, even the workload is refused; the agent (which wipes) is not.
        right.update(halted=frozenset({AID}))
        assert not right.decide_now(workload.pid, zone, None).allow
        assert not right.decide_now(child, zone, None).allow
        assert not right.decide_now(allowed, zone, None).allow
        assert right.decide_now(os.getpid(), zone, None).allow
        assert right.decide_now(other_w.pid, other_zone, None).allow  # another artifact's run: not halted
        assert right.decide_now(workload.pid, protected, None).allow  # protected files of other bytes
        right.update(halted_inodes=frozenset({(1, 2)}))
        assert not right.decide_now(workload.pid, protected, (1, 2)).allow  # a protected file of the halted bytes
        right.update(halt_all=True)
        assert not right.decide_now(other_w.pid, other_zone, None).allow
        assert not right.decide_now(allowed, protected, None).allow
        assert right.decide_now(stranger, canary, None).allow  # a canary stays a trap
        right.update(halt_all=False, halted=frozenset())
        assert right.decide_now(workload.pid, zone, None).allow  # lifted
    finally:
        other_w.stop()


def test_zones_are_found_by_inode_and_by_the_deepest_root(tmp_path: Path) -> None:
    p = Policy()
    outer = Zone(kind="protected", root=str(tmp_path), fail_closed=True)
    inner = Zone(kind="workload", root=str(tmp_path / "runs" / "w-1"), fail_closed=True, workload_id="w-1")
    linked = Zone(kind="canary", root="/elsewhere/decoy", fail_closed=False, canary_id="c")
    p.update(zones={outer.root: outer, inner.root: inner}, by_inode={(7, 8): linked})
    assert p.zone_for(None, str(tmp_path / "runs" / "w-1" / "artifact" / "x.bin")) == inner
    assert p.zone_for(None, str(tmp_path / "runs" / "w-2" / "x.bin")) == outer
    assert p.zone_for(None, str(tmp_path / "runs" / "w-1" / "new.bin (deleted)")) == inner
    assert p.zone_for((7, 8), "/anywhere/hard-link") == linked  # the inode wins over the path
    for path in ("/", "/etc/passwd", str(tmp_path) + "-sibling/x", "relative/x", ""):
        assert p.zone_for(None, path) is None
    assert PolicyState().zones == {}


@pytest.mark.parametrize(("path", "sha"), [("relative/bin", "0" * 64), ("/bin/x", "ABC"), ("/bin/x", "0" * 63),
                                           ("/bin/\0x", "0" * 64), ("/bin/x", "g" * 64)])
def test_bad_allow_entries_are_refused(path: str, sha: str) -> None:
    with pytest.raises(InvalidInput):
        AllowEntry(path=path, sha256=sha)


# -- the responder: real events, the bound, the watchdog ---------------------------------------------


class Guarded:
    """One permission group on a run directory, answered by a PermissionResponder."""

    def __init__(self, run_dir: Path, policy: Policy, *, zone: Zone, bound_s: float = 0.2,
                 stall_s: float | None = None) -> None:
        self.group = Fanotify(FAN_CLASS_CONTENT)
        for d in (run_dir, run_dir / "artifact", run_dir / "artifact" / "shards"):
            self.group.mark(d, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD)
        policy.update(zones={str(run_dir): zone})
        self.reports: list[Opened] = []
        self.responder = PermissionResponder(self.group, policy, bound_s=bound_s, on_report=self.reports.append,
                                             stall_s=stall_s)
        self.responder.start()

    def close(self) -> None:
        self.responder.close()
        self.group.close()
        for r in self.reports:
            r.opener.release()


def cat(path: Path) -> tuple[int, float]:
    t = time.monotonic()
    res = subprocess.run([CAT, str(path)], capture_output=True, timeout=30, check=False)
    return res.returncode, time.monotonic() - t


def test_refusals_are_eperm_and_name_the_opener(run_dir: Path, workload: Workload) -> None:
    policy = Policy()
    policy.update(workloads={"w-1": workload.members()})
    zone = Zone(kind="workload", root=str(run_dir), fail_closed=True, workload_id="w-1", artifact_id=AID)
    g = Guarded(run_dir, policy, zone=zone)
    try:
        assert workload.read(shard(run_dir)) == "ok"
        assert cat(shard(run_dir))[0] == 1
        assert workload.read(shard(run_dir)) == "ok"  # the workload reads on
        assert shard(run_dir).read_bytes() == b"plaintext shard 1"  # the agent itself
        wait_for(lambda: g.reports, "the refusal's report")
        r = g.reports[0]
        assert r.kind == "denied" and r.zone == zone and r.path == str(shard(run_dir))
        assert r.opener.exe == CAT and r.opener.uid == 0 and CAT.rsplit("/", 1)[1] in r.opener.cmdline
        assert r.opener.exe_sha256() == sha256_of(CAT)  # hashed from the descriptor kept while cat waited
        st = g.responder.stats
        wait_for(lambda: st.answered >= 4, "the last answer to be counted")  # counted just after it is written
        assert st.denied == 1 and st.allowed >= 3 and st.defaults == 0 and g.responder.pending == 0
    finally:
        g.close()


@pytest.mark.parametrize(("fail_closed", "code"), [(True, 1), (False, 0)])
def test_a_decision_that_hangs_gets_the_zone_default_within_the_bound(run_dir: Path, fail_closed: bool,
                                                                      code: int) -> None:
    """An allow-listed executable whose digest never comes: the bound answers with the class default."""
    release = threading.Event()

    def hangs(pid: int, key: Any) -> str | None:
        release.wait(30)
        return None

    policy = Policy(allow=[AllowEntry(path=CAT, sha256=sha256_of(CAT))], hasher=hangs)
    zone = Zone(kind="workload" if fail_closed else "protected", root=str(run_dir), fail_closed=fail_closed,
                workload_id="w-1", artifact_id=AID)
    g = Guarded(run_dir, policy, zone=zone, bound_s=0.2)
    try:
        rc, elapsed = cat(shard(run_dir))
        assert rc == code
        assert elapsed < 2.0  # the 200 ms bound, generously (two cores shared with other work)
        assert g.responder.stats.defaults == 1
    finally:
        release.set()
        g.close()


class StallingPolicy(Policy):
    """Stalls the responder's own thread in its first zone lookup until released."""

    def __init__(self) -> None:
        super().__init__()
        self.stall = threading.Event()
        self.stalled = threading.Event()
        self.first = True

    def zone_for(self, key: Any, path: str) -> Zone | None:
        if self.first and threading.current_thread().name == "custos-guard-responder":
            self.first = False
            self.stalled.set()
            self.stall.wait(30)
        return super().zone_for(key, path)


def test_the_watchdog_answers_when_the_responder_stalls(run_dir: Path, workload: Workload) -> None:
    policy = StallingPolicy()
    policy.update(workloads={"w-1": workload.members()})
    zone = Zone(kind="workload", root=str(run_dir), fail_closed=True, workload_id="w-1", artifact_id=AID)
    g = Guarded(run_dir, policy, zone=zone, bound_s=0.1, stall_s=0.5)
    try:
        rc, elapsed = cat(shard(run_dir))  # stalls the responder; answered by the deadline
        assert policy.stalled.is_set() and rc == 1 and elapsed < 2.0
        wait_for(lambda: g.responder.stats.takeovers, "the watchdog to take over")
        rc, elapsed = cat(shard(run_dir))  # read and answered by the watchdog itself: the zone's default
        assert rc == 1 and elapsed < 2.0
        assert shard(run_dir).read_bytes() == b"plaintext shard 1"  # the agent's own opens still pass
        policy.stall.set()
        wait_for(lambda: not g.responder._taken_over, "the responder to be back")
        assert workload.read(shard(run_dir)) == "ok"  # decided again
        assert g.responder.pending == 0
    finally:
        policy.stall.set()
        g.close()


# -- the Guard: marks, deny-all, canaries, notifications, modes -------------------------------------


class Events:
    def __init__(self) -> None:
        self.items: list[custody_pb2.AccessEvent] = []
        self.lock = threading.Lock()

    def __call__(self, ev: custody_pb2.AccessEvent) -> None:
        with self.lock:
            self.items.append(ev)

    def of(self, kind: str) -> list[custody_pb2.AccessEvent]:
        with self.lock:
            return [e for e in self.items if e.kind == kind]


def _zones(workload: Workload, run_dir: Path) -> Callable[[], list[WorkloadZone]]:
    f = shard(run_dir)
    st = f.stat()
    files = ((str(f), (st.st_dev, st.st_ino), "c" * 64),)
    return lambda: [WorkloadZone(members=workload.members(), run_dir=str(run_dir), files=files)]


def test_guard_deny_all_refuses_the_workload_at_once_and_lift_restores(run_dir: Path, workload: Workload,
                                                                       tmp_path: Path) -> None:
    events = Events()
    g = Guard(GuardSettings(), workloads=_zones(workload, run_dir), on_event=events)
    g.start()
    try:
        assert g.mode_text == "fanotify" and g.status()["zones"]["workload"] == 1
        assert workload.read(shard(run_dir)) == "ok"
        # A hard link made elsewhere is still the guarded inode.
        link = tmp_path / "link.bin"
        os.link(shard(run_dir), link)
        assert cat(link)[0] == 1
        # A file the workload creates in its directory later is guarded by the directory's mark.
        new = run_dir / "artifact" / "shards" / "later.bin"
        new.write_bytes(b"x")
        assert cat(new)[0] == 1
        g.deny_all({AID})
        assert workload.read(shard(run_dir)) == "err 1"
        assert workload.read(shard(run_dir)) == "err 1"
        assert shard(run_dir).read_bytes()  # the agent (which wipes) still may
        assert g.status()["halted"] == [AID] and g.status()["denied_all_at_unix_ns"] > 0
        wait_for(lambda: len(events.of("denied")) >= 3, "the refusals' events")
        time.sleep(0.3)
        mine = [e for e in events.of("denied") if e.pid == workload.pid]
        assert len(mine) == 1, mine  # one event per (pid, path) in the window; the kernel refused both
        ev = mine[0]
        assert ev.mode == "fanotify-perm" and ev.path == str(shard(run_dir)) and ev.artifact_id == AID
        assert ev.sha256 == "c" * 64 and ev.user == "root" and ev.exe == os.path.realpath(sys.executable)
        assert ev.exe_sha256 == sha256_of(os.path.realpath(sys.executable)) and "halted" in ev.detail
        g.lift({AID})
        assert workload.read(shard(run_dir)) == "ok"
        g.deny_all(None)  # fail closed: everything
        assert workload.read(shard(run_dir)) == "err 1"
        g.lift(None)
        assert workload.read(shard(run_dir)) == "ok"
    finally:
        g.close()
    assert cat(shard(run_dir))[0] == 0  # a closed guard guards nothing (the kernel drops its marks)


def test_canary_opens_are_allowed_and_reported_with_the_opener(tmp_path: Path) -> None:
    decoy = tmp_path / "decoys" / "model-00001-of-00002.safetensors"
    decoy.parent.mkdir()
    decoy.write_bytes(b"decoy")
    events = Events()
    g = Guard(GuardSettings(), on_event=events)
    g.start()
    try:
        g.set_canaries({str(decoy): "canary-1"})
        assert decoy.read_bytes() == b"decoy"  # the agent's own open: no event
        t0 = time.monotonic()
        assert cat(decoy)[0] == 0  # allowed: the decoy does not give itself away
        first = wait_for(lambda: events.of("canary"), "the canary event", timeout=5)[0]
        assert time.monotonic() - t0 < 1.5  # at once (the bound is 5 s end to end)
        assert first.canary_id == "canary-1" and first.exe == CAT and first.pid > 0 and first.user == "root"
        assert first.exe_sha256 == sha256_of(CAT) and first.path == str(decoy)
        assert cat(decoy)[0] == 0  # another pid: another event
        wait_for(lambda: len(events.of("canary")) == 2, "the second canary event", timeout=5)
        with pytest.raises(InvalidInput):
            g.set_canaries({"relative/path": "c"})
    finally:
        g.close()


def test_reads_of_registered_weights_are_reported_only_from_outside_custody(tmp_path: Path,
                                                                            workload: Workload) -> None:
    copy = tmp_path / "scan-root" / "copy"
    copy.mkdir(parents=True)
    (copy / "model.safetensors").write_bytes(b"registered bytes" * 100)
    manifest = build_manifest(copy)
    manifests = ManifestCache(tmp_path / "manifests")
    manifests.put(manifest.artifact_id, manifest)
    f = copy / "model.safetensors"
    st = f.stat()
    rec = FileRecord(path=str(f), size=st.st_size, sha256=manifest.files[0].sha256, device=st.st_dev,
                     inode=st.st_ino, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
    unregistered = copy / "other.safetensors"
    unregistered.write_bytes(b"not registered")
    st2 = unregistered.stat()
    other = FileRecord(path=str(unregistered), size=st2.st_size, sha256="d" * 64, device=st2.st_dev, inode=st2.st_ino,
                       mtime_ns=st2.st_mtime_ns, ctime_ns=st2.st_ctime_ns)
    empty = tmp_path / "run"
    events = Events()
    g = Guard(GuardSettings(read_dedupe_s=60), records=lambda: [rec, other], manifests=manifests, on_event=events,
              workloads=lambda: [WorkloadZone(members=workload.members(), run_dir=str(empty), files=())])
    g.start()
    try:
        assert g.status()["registered_watched"] == 1
        assert f.read_bytes()  # the agent
        assert workload.read(f) == "ok"  # a supervised workload
        assert cat(unregistered)[0] == 0  # not registered: nothing to report
        assert cat(f)[0] == 0  # notification mode blocks nothing...
        ev = wait_for(lambda: events.of("read"), "the weights-read event", timeout=5)[0]  # ...but reports it
        assert ev.mode == "fanotify-notify" and ev.path == str(f) and ev.artifact_id == manifest.artifact_id
        assert ev.sha256 == manifest.files[0].sha256 and ev.pid > 0
        time.sleep(0.3)
        assert len(events.items) == 1, events.items
    finally:
        g.close()


def test_inotify_mode_reports_without_pid_and_says_degraded(tmp_path: Path) -> None:
    prot = tmp_path / "protected"
    (prot / "sub").mkdir(parents=True)
    (prot / "sub" / "w.bin").write_bytes(b"w")
    decoy = tmp_path / "decoy.safetensors"
    decoy.write_bytes(b"d")
    events = Events()
    g = Guard(GuardSettings(mode="inotify", protected_paths=(str(prot),)), on_event=events)
    g.start()
    try:
        assert g.mode_text == "inotify (degraded)" and g.status()["mode"] == "inotify (degraded)"
        g.set_canaries({str(decoy): "c-2"})
        assert cat(prot / "sub" / "w.bin")[0] == 0  # nothing refused
        assert cat(decoy)[0] == 0
        wait_for(lambda: events.of("read") and events.of("canary"), "the inotify events", timeout=5)
        r, c = events.of("read")[0], events.of("canary")[0]
        assert (r.mode, r.pid, r.path) == ("inotify", 0, str(prot / "sub" / "w.bin"))
        assert (c.mode, c.pid, c.canary_id) == ("inotify", 0, "c-2")
    finally:
        g.close()


def test_off_mode_guards_nothing(tmp_path: Path) -> None:
    g = Guard(GuardSettings(mode="off", protected_paths=(str(tmp_path),)))
    g.start()
    g.deny_all(None)  # never raises, whatever the mode
    assert g.mode_text == "off" and g.status()["answered"] == 0
    g.close()


GUARD_IN_CHILD = """
import json, sys
from custos.agent.guard import Guard, GuardSettings
from custos.errors import FailedPrecondition
try:
    g = Guard(GuardSettings(mode=sys.argv[1]))
    g.start()
    print(json.dumps({"mode": g.mode_text, "reason": g.reason}))
    g.close()
except FailedPrecondition as exc:
    print(json.dumps({"error": str(exc)}))
"""


@pytest.mark.parametrize(("mode", "want"), [("auto", "inotify (degraded)"), ("fanotify", "error")])
def test_without_cap_sys_admin(mode: str, want: str) -> None:
    res = subprocess.run(["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", sys.executable, "-c",
                          GUARD_IN_CHILD, mode], capture_output=True, text=True, timeout=60, check=False)
    out = res.stdout.strip()
    assert out, res.stderr
    if want == "error":
        assert "no CAP_SYS_ADMIN" in out and '"error"' in out
    else:
        assert want in out and "no CAP_SYS_ADMIN" in out


# -- configuration ------------------------------------------------------------------------------------


def _cfg(tmp_path: Path, guard: dict[str, Any]) -> Any:
    raw = {"control_plane": {"addr": "cp:7443", "ca_file": "ca.pem"}, "scan": {"roots": ["/data"]}, "guard": guard}
    return config_from_dict(raw, path=tmp_path / "agent.toml").guard


def test_guard_config(tmp_path: Path) -> None:
    g = _cfg(tmp_path, {})
    assert (g.mode, g.response_timeout_ms, g.protected_fail, g.protected_paths) == ("auto", 250, "closed", ())
    g = _cfg(tmp_path, {"mode": "inotify", "protected_paths": ["models", "/srv/w/"], "protected_fail": "open",
                        "allow": [{"path": SLEEP, "sha256": "0" * 64}], "response_timeout_ms": 100})
    assert g.protected_paths == (str(tmp_path / "models"), "/srv/w") and g.protected_fail == "open"
    assert g.allow == (AllowEntry(path=SLEEP, sha256="0" * 64),) and g.response_timeout_ms == 100


@pytest.mark.parametrize(("guard", "words"), [
    ({"mode": "kernel"}, "guard.mode"),
    ({"mode": 1}, "guard.mode"),
    ({"protected_fail": "maybe"}, "protected_fail"),
    ({"response_timeout_ms": 0}, "response_timeout_ms"),
    ({"response_timeout_ms": 60000}, "response_timeout_ms"),
    ({"response_timeout_ms": 0.5}, "response_timeout_ms"),
    ({"protected_paths": "/data"}, "protected_paths"),
    ({"protected_paths": [""]}, "protected_paths"),
    ({"protected_paths": ["/"]}, "protected_paths"),
    ({"allow": [{"path": SLEEP}]}, "guard.allow[0]"),
    ({"allow": [{"path": SLEEP, "sha256": "0" * 64, "extra": 1}]}, "guard.allow[0]"),
    ({"allow": [{"path": "sleep", "sha256": "0" * 64}]}, "guard.allow[0]"),
    ({"allow": [{"path": SLEEP, "sha256": "Z" * 64}]}, "guard.allow[0]"),
    ({"allow": ["/usr/bin/sleep"]}, "guard.allow[0]"),
    ({"unknown": True}, "unknown key"),
    ({"watch_registered": "yes"}, "watch_registered"),
])
def test_bad_guard_config_is_one_clear_error(tmp_path: Path, guard: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidInput) as e:
        _cfg(tmp_path, guard)
    assert words in str(e.value) and str(tmp_path / "agent.toml") in str(e.value)


def test_metrics_say_the_mode_and_the_answers(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from custos.agent.metrics import AgentCollector

    g = Guard(GuardSettings(protected_paths=(str(tmp_path),)))
    g.start()
    try:
        status = {"host": "h", "lease": {"state": "live"}, "failed_closed": None, "connected": True,
                  "inventory": {"files": 0, "processes": 0, "problems": [], "full_scans": 1}, "workloads": [],
                  "connections": 1, "last_halt": None, "guard": g.status()}
        reg = CollectorRegistry(auto_describe=False)
        reg.register(AgentCollector(lambda: status))
        text = generate_latest(reg).decode()
    finally:
        g.close()
    assert 'custos_agent_guard{mode="fanotify"} 1.0' in text
    assert 'custos_agent_guard{mode="inotify (degraded)"} 0.0' in text
    for name in ("custos_agent_guard_answered_total", "custos_agent_guard_denied_total",
                 "custos_agent_guard_defaults_total", "custos_agent_guard_response_seconds_bucket"):
        assert name in text, name
