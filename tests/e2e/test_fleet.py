"""A control plane and three agent processes: inventory, alerts, supervised runs, fail-closed, recovery.

Agents a and b run from explicit config files and enroll with `custos host add` +
`custos agent enroll`; agent c runs in dev mode (`--dev --data-dir`, enrolling
itself with the dev security-team certificate). The control plane grants 3-second
leases; agents heartbeat every 0.5 s and rescan every second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from custos.fs.hashing import build_manifest
from custos.v1 import custody_pb2, keys_pb2, keys_pb2_grpc, registry_pb2
from tests.e2e.conftest import (
    LEASE_TTL,
    AgentProc,
    Api,
    make_weights,
    server_config,
    unique,
    wait_until,
)
from tests.servers.custos import DevServer

pytestmark = pytest.mark.slow

# Fail-closed must happen within the lease TTL; this slack covers the stop grace
# (1 s), process start-up and the polling of this test.
SLACK = 6.0

VERIFY = """
import hashlib, json, os, sys
d = os.environ["CUSTOS_ARTIFACT_DIR"]
want = json.loads(sys.argv[1])
got = {}
for dirpath, _dirs, files in os.walk(d):
    for name in files:
        p = os.path.join(dirpath, name)
        with open(p, "rb") as f:
            got[os.path.relpath(p, d)] = hashlib.sha256(f.read()).hexdigest()
print("ARTIFACT_DIR", d)
print("MATCH" if got == want else "MISMATCH %r" % got)
sys.exit(7)
"""

HOLD = """
import mmap, os, sys, time
d = os.environ.get("CUSTOS_ARTIFACT_DIR") or sys.argv[1]
with open(os.path.join(d, "model-00001.safetensors"), "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
print("mapped", flush=True)
time.sleep(120)
"""


@dataclass
class Fleet:
    server: DevServer
    api: Api
    a: AgentProc
    b: AgentProc
    c: AgentProc
    weights: Path
    artifact: str
    files: dict[str, str]  # manifest path -> sha256
    scripts: Path

    @property
    def agents(self) -> list[AgentProc]:
        return [self.a, self.b, self.c]

    def restart_api(self) -> None:
        self.api.close()
        self.api = Api(self.server)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fleet")
    server = DevServer(base / "cp", extra=["--config", str(server_config(base / "cp.toml"))]).start()
    agents: list[AgentProc] = []
    api: Api | None = None
    try:
        server.cli("model", "register", "m1", "--training-flops", "3e26", check=True)
        server.cli("model", "register", "other", "--training-flops", "1e20", check=True)
        weights = make_weights(base / "weights", seed=1)
        pushed = json.loads(server.cli("push", "m1", str(weights), "-o", "json", check=True).stdout)
        manifest = build_manifest(weights)
        scripts = base / "scripts"
        scripts.mkdir()
        (scripts / "verify.py").write_text(VERIFY)
        (scripts / "hold.py").write_text(HOLD)
        loop_dir = base / "b-loop"
        a = AgentProc(base / "a", unique("host-a"), server)
        b = AgentProc(base / "b", unique("host-b"), server, scan_extra="follow_symlinks = true",
                      extra_roots=(str(base / "no-such-root"), str(scripts / "verify.py"), str(loop_dir)))
        c = AgentProc(base / "c", unique("host-c"), server, dev=True)
        agents = [a, b, c]
        # A symlink loop in one of b's roots (b follows symlinks).
        loop_dir.mkdir()
        (loop_dir / "again").symlink_to(loop_dir)
        (loop_dir / "self").symlink_to(loop_dir / "self")
        a.enroll()
        b.enroll()
        for ag in agents:
            ag.start()
        api = Api(server)
        f = Fleet(server=server, api=api, a=a, b=b, c=c, weights=weights, artifact=pushed["id"],
                  files={e.path: e.sha256 for e in manifest.files}, scripts=scripts)
        for ag in agents:
            wait_until(ag.lease_live, 30, f"{ag.name} to hold a live lease")
        # m1 is covered: runs need an access grant naming their hosts (sec1 asks, sec2 approves).
        server.grant("m1", hosts=[ag.name for ag in agents], duration_s=4 * 3600)
    except BaseException:
        # Set-up failed: show why (pytest prints captured output with the error).
        for ag in agents:
            print(f"--- agent {ag.name} log ---\n{ag.log()[-4000:]}")
        print(f"--- control plane log ---\n{server.log()}")
        for ag in agents:
            ag.stop()
        if api is not None:
            api.close()
        server.stop()
        raise
    try:
        yield f
    finally:
        for ag in agents:
            ag.stop()
        f.api.close()
        f.server.stop()  # the one running now: a test restarts it
        server.stop()  # the first one (a no-op once it is stopped)


def copy_at(fleet: Fleet, host: str, path: str, form: int = registry_pb2.COPY_FORM_PLAINTEXT) -> Any:
    for c in fleet.api.copies("m1"):
        if c.host == host and c.location == f"{host}:{path}" and c.form == form:
            return c
    return None


def alerts(fleet: Fleet, host: str, rule: str) -> list[Any]:
    resp = fleet.api.alerts.ListAlerts(custody_pb2.ListAlertsRequest(host=host), timeout=10)
    return [a for a in resp.alerts if a.rule == rule]


# -- enrollment and inventory -------------------------------------------------------------------


def test_three_agents_enrolled_with_live_leases(fleet: Fleet) -> None:
    hosts = wait_until(lambda: (h := fleet.api.hosts()) and all(
        h.get(ag.name) is not None and h[ag.name].lease_state == "live" for ag in fleet.agents) and h,
        15, "three live leases on the control plane")
    for ag in fleet.agents:
        h = hosts[ag.name]
        assert h.state == "enrolled"
        if ag.dev:
            assert h.labels["dev"] == "true"  # added by the dev agent itself
        ident = json.loads((ag.state_dir / "identity" / "enrollment.json").read_text())
        assert ident["name"] == ag.name
        assert ident["cert_sha256"] == h.cert_fingerprint
    # The dev agent's socket defaults to DATA_DIR/agent.sock unless the config names one.
    assert fleet.c.status()["dev"] is True


def test_local_socket_is_private(fleet: Fleet) -> None:
    for ag in fleet.agents:
        assert ag.socket.stat().st_mode & 0o777 == 0o600
        assert ag.socket.parent.stat().st_mode & 0o777 == 0o700
        assert (ag.state_dir / "identity").stat().st_mode & 0o777 == 0o700


def test_enrollment_token_is_one_time_and_checked(fleet: Fleet, tmp_path: Path) -> None:
    name = unique("host-x")
    res = fleet.a.cli("host", "add", name, "-o", "json")
    assert res.returncode == 0, res.stderr
    token = json.loads(res.stdout)["enrollment_token"]
    state = tmp_path / "x"
    args = ["agent", "enroll", "--enroll-addr", fleet.server.env["CUSTOS_ENROLL_ADDR"], "--name", name,
            "--state-dir", str(state)]
    res = fleet.a.cli(*args, "--token", "not-the-token")
    assert res.returncode == 4 and "enrollment refused" in res.stderr, res.stderr
    assert sorted(p.name for p in (state / "identity").iterdir()) == []  # no key, no certificate left behind
    res = fleet.a.cli(*args, "--token", token)
    assert res.returncode == 0, res.stderr
    res = fleet.a.cli(*args, "--token", token)
    assert res.returncode == 4, res.stderr  # used once
    assert (state / "identity" / "agent.pem").exists()  # the first enrollment's identity is intact


def test_copied_artifact_appears_in_copies(fleet: Fleet) -> None:
    dest = fleet.a.root / "copy1"
    shutil.copytree(fleet.weights, dest)
    # While the copy is being made it may first show as partial; it must settle as complete.
    c = wait_until(lambda: (c := copy_at(fleet, fleet.a.name, str(dest))) and "3 files match" in c.evidence and c,
                   20, "the complete copy in ListCopies")
    assert c.artifact_id == fleet.artifact
    assert c.state == "present"
    assert c.location_kind == registry_pb2.LOCATION_KIND_HOST_PATH


def test_memory_mapped_weights_are_a_loaded_copy(fleet: Fleet) -> None:
    dest = fleet.b.root / "copy2"
    shutil.copytree(fleet.weights, dest)
    holder = subprocess.Popen([sys.executable, str(fleet.scripts / "hold.py"), str(dest)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "mapped"
        loaded = wait_until(lambda: copy_at(fleet, fleet.b.name, str(holder.pid), registry_pb2.COPY_FORM_LOADED),
                            20, "a LOADED copy for the mapping process")
        assert loaded.location_kind == registry_pb2.LOCATION_KIND_PROCESS
        assert loaded.artifact_id == fleet.artifact
        assert "(mmap)" in loaded.evidence
        assert loaded.state == "present"
    finally:
        holder.kill()
        holder.wait()
    gone = wait_until(lambda: (c := copy_at(fleet, fleet.b.name, str(holder.pid), registry_pb2.COPY_FORM_LOADED))
                      and c.state == "gone" and c, 20, "the LOADED copy to be gone after the process exits")
    assert gone.state == "gone"


def test_unregistered_weights_raise_an_alert(fleet: Fleet) -> None:
    stray = fleet.c.root / "stray.safetensors"
    stray.write_bytes(os.urandom(4096))
    found = wait_until(lambda: [a for a in alerts(fleet, fleet.c.name, "unregistered-weights")
                                if str(stray) in a.detail], 20, "an unregistered-weights alert")
    assert found[0].host == fleet.c.name
    assert hashlib.sha256(stray.read_bytes()).hexdigest()[:16] in found[0].detail


def test_copy_outside_the_custody_policy_raises_an_alert(fleet: Fleet) -> None:
    fleet.api.registry.SetCustodyPolicy(registry_pb2.SetCustodyPolicyRequest(
        model="m1", hosts=[fleet.a.name], paths=[f"{fleet.a.root}/*"]), timeout=10)
    rogue = fleet.b.root / "rogue"
    shutil.copytree(fleet.weights, rogue)
    found = wait_until(lambda: [a for a in alerts(fleet, fleet.b.name, "unauthorized-copy")
                                if str(rogue) in a.detail], 20, "an unauthorized-copy alert for the rogue copy")
    assert found[0].model == "m1"
    assert found[0].artifact_id == fleet.artifact
    assert found[0].severity == "high"
    # The copy inside the policy is authorized; the rogue one is not.
    wait_until(lambda: (c := copy_at(fleet, fleet.a.name, str(fleet.a.root / "copy1"))) and c.authorized,
               20, "the in-policy copy to be authorized")
    c = wait_until(lambda: copy_at(fleet, fleet.b.name, str(rogue)), 20, "the rogue copy")
    assert not c.authorized


# -- supervised runs ------------------------------------------------------------------------------


def test_custos_run_gives_the_workload_the_verified_files(fleet: Fleet) -> None:
    res = fleet.a.run("--model", "m1", "--artifact", fleet.artifact[:16], "--",
                      sys.executable, str(fleet.scripts / "verify.py"), json.dumps(fleet.files))
    assert res.returncode == 7, res.stderr  # the workload's own exit code
    assert "MATCH" in res.stdout.split(), res.stdout
    run_dir = Path(res.stdout.split("ARTIFACT_DIR ", 1)[1].split()[0])
    assert run_dir.is_relative_to(fleet.a.plaintext)
    assert not run_dir.exists()  # wiped when the workload exited
    # The agent recorded the copy as this host, inside its managed roots: authorized.
    c = wait_until(lambda: copy_at(fleet, fleet.a.name, str(run_dir)), 10, "the run's recorded copy")
    assert c.authorized


def test_custos_run_refusals_are_clear(fleet: Fleet) -> None:
    res = fleet.a.run("--model", "other", "--artifact", fleet.artifact, "--", "true")
    assert res.returncode == 2 and "belongs to model 'm1'" in res.stderr, res.stderr
    res = fleet.a.run("--model", "m1", "--artifact", fleet.artifact, "--", "/no/such/command")
    assert res.returncode == 2 and "cannot start" in res.stderr, res.stderr
    res = fleet.a.run("--model", "m1", "--artifact", fleet.artifact)
    assert res.returncode == 2 and "no command" in res.stderr
    # Without --artifact the agent looks up the newest stored artifact (needs a read role),
    # or says plainly that it may not.
    res = fleet.a.run("--model", "m1", "--", "true")
    assert res.returncode == 0 or (res.returncode == 4 and "--artifact" in res.stderr), res.stderr
    assert not list(fleet.a.plaintext.iterdir())  # nothing left behind by refused runs


def test_detached_run_is_reported_and_cleaned_up(fleet: Fleet) -> None:
    res = fleet.b.run("--model", "m1", "--artifact", fleet.artifact, "--detach", "-o", "json", "--",
                      sys.executable, str(fleet.scripts / "hold.py"))
    assert res.returncode == 0, res.stderr
    started = json.loads(res.stdout)
    wid, pid, adir = started["workload_id"], started["pid"], Path(started["artifact_dir"])
    assert adir.is_dir()
    # The workload's pid is in the inventory: a LOADED copy attributed to it, authorized.
    loaded = wait_until(lambda: copy_at(fleet, fleet.b.name, str(pid), registry_pb2.COPY_FORM_LOADED),
                        20, "the workload's LOADED copy")
    assert loaded.authorized
    assert adir.parent.parent == fleet.b.plaintext
    st = next(w for w in fleet.b.status()["workloads"] if w["workload_id"] == wid)
    assert st["state"] == "running" and st["pid"] == pid
    os.kill(pid, 15)
    wait_until(lambda: next(w for w in fleet.b.status()["workloads"] if w["workload_id"] == wid)["state"]
               == "exited", 15, "the workload to be reported exited")
    assert not adir.parent.exists()


# -- fail closed and recovery ----------------------------------------------------------------------


def test_control_plane_loss_fails_closed_and_restart_recovers(fleet: Fleet) -> None:
    runs: dict[str, dict[str, Any]] = {}
    for ag in fleet.agents:
        res = ag.run("--model", "m1", "--artifact", fleet.artifact, "--detach", "-o", "json", "--",
                     sys.executable, str(fleet.scripts / "hold.py"))
        assert res.returncode == 0, f"{ag.name}: {res.stderr}"
        runs[ag.name] = json.loads(res.stdout)
        assert Path(runs[ag.name]["artifact_dir"]).is_dir()

    fleet.server.kill9()

    def all_halted() -> bool:
        for ag in fleet.agents:
            r = runs[ag.name]
            if _pid_alive(r["pid"]) or Path(r["artifact_dir"]).exists():
                return False
        return True

    wait_until(all_halted, LEASE_TTL + SLACK, "every agent to stop its workloads and wipe their plaintext")
    # The halt's record is written just after its last wipe: wait for it too, not only for its effects.
    wait_until(lambda: all(ag.status()["last_halt"] for ag in fleet.agents), SLACK, "every agent's halt record")
    for ag in fleet.agents:
        s = ag.status()
        assert s["failed_closed"] and s["failed_closed"].startswith("custody lease expired at"), s
        halt = s["last_halt"]
        assert runs[ag.name]["pid"] in halt["pids_stopped"]
        assert any(p.startswith(runs[ag.name]["artifact_dir"]) for p in halt["paths_wiped"]), halt
        w = next(w for w in s["workloads"] if w["workload_id"] == runs[ag.name]["workload_id"])
        assert w["state"] == "stopped" and "custody lease expired" in w["stopped"]
        res = ag.run("--model", "m1", "--artifact", fleet.artifact, "--", "true")
        assert res.returncode == 6 and "failed closed" in res.stderr, res.stderr
        assert any(e.get("msg", "").startswith("failing closed") for e in ag.log_events())

    # Same data dir, same port: every agent reconnects to a live lease and runs work again.
    fleet.server = DevServer(fleet.server.data_dir, port=fleet.server.port, extra=fleet.server.extra).start()
    fleet.restart_api()
    wait_until(lambda: all(h.lease_state == "live" for n, h in fleet.api.hosts().items()
                           if n in {ag.name for ag in fleet.agents}) and len(fleet.api.hosts()) >= 3,
               30, "live leases after the restart")
    for ag in fleet.agents:
        wait_until(ag.lease_live, 15, f"{ag.name} to resume")
        res = ag.run("--model", "m1", "--artifact", fleet.artifact, "--", sys.executable,
                     str(fleet.scripts / "verify.py"), json.dumps(fleet.files))
        assert res.returncode == 7 and "MATCH" in res.stdout, f"{ag.name}: {res.stderr}"
        # The workloads stopped by the fail-closed halt were not restarted.
        assert not _pid_alive(runs[ag.name]["pid"])
        assert [w["state"] for w in ag.status()["workloads"]
                if w["workload_id"] == runs[ag.name]["workload_id"]] == ["stopped"]


def test_a_silent_partition_fails_closed_on_the_lease_alone(fleet: Fleet) -> None:
    """SIGSTOP: the control plane's sockets stay open but nothing answers. No connection
    error tells the agents anything; their own lease deadline must."""
    agents = [fleet.a, fleet.b]
    runs = {}
    for ag in agents:
        res = ag.run("--model", "m1", "--artifact", fleet.artifact, "--detach", "-o", "json", "--",
                     sys.executable, str(fleet.scripts / "hold.py"))
        assert res.returncode == 0, res.stderr
        runs[ag.name] = json.loads(res.stdout)
    assert fleet.server.proc is not None
    os.kill(fleet.server.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: all(not _pid_alive(runs[ag.name]["pid"]) and not Path(runs[ag.name]["artifact_dir"]).exists()
                               for ag in agents), LEASE_TTL + SLACK, "the partitioned agents to fail closed")
        for ag in agents:
            assert ag.status()["failed_closed"].startswith("custody lease expired at")
    finally:
        os.kill(fleet.server.proc.pid, signal.SIGCONT)
    for ag in fleet.agents:
        wait_until(ag.lease_live, 30, f"{ag.name} to recover after the partition")


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_removed_host_is_refused_and_fails_closed(fleet: Fleet) -> None:
    c = fleet.c
    res = c.run("--model", "m1", "--artifact", fleet.artifact, "--detach", "-o", "json", "--",
                sys.executable, str(fleet.scripts / "hold.py"))
    assert res.returncode == 0, res.stderr
    run = json.loads(res.stdout)
    removed = c.cli("host", "remove", c.name)
    assert removed.returncode == 0, removed.stderr
    wait_until(lambda: c.status()["lease"]["state"] == "removed", 15, "the agent to see its removal")
    wait_until(lambda: not _pid_alive(run["pid"]) and not Path(run["artifact_dir"]).exists(), 15,
               "the removed host to stop its workload and wipe its plaintext")
    s = c.status()
    assert "removed" in (s["refusing"] or "")
    res = c.run("--model", "m1", "--artifact", fleet.artifact, "--", "true")
    assert res.returncode == 6 and "removed" in res.stderr
    assert any("removed from custody" in e.get("msg", "") for e in c.log_events())
    # The control plane refuses the old certificate outright.
    ident = c.state_dir / "identity"
    creds = grpc.ssl_channel_credentials(root_certificates=(ident / "ca.pem").read_bytes(),
                                         private_key=(ident / "agent.key").read_bytes(),
                                         certificate_chain=(ident / "agent.pem").read_bytes())
    with grpc.secure_channel(fleet.server.env["CUSTOS_ADDR"], creds) as ch:
        with pytest.raises(grpc.RpcError) as err:
            keys_pb2_grpc.KeysStub(ch).UnwrapDataKey(keys_pb2.UnwrapDataKeyRequest(
                artifact_id=fleet.artifact, purpose="run"), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "certificate not accepted" in (err.value.details() or "")  # type: ignore[attr-defined]
    assert c.alive()  # failed closed, still running, waiting to be re-enrolled
    assert fleet.api.hosts()[c.name].state == "removed"
    # Restarted, it is refused at once and stays failed closed.
    c.stop()
    c.start()
    wait_until(lambda: c.status()["lease"]["state"] == "removed", 15, "the restarted agent to be refused")
    assert "removed" in (c.status()["refusing"] or "")


# -- bad input ---------------------------------------------------------------------------------------


def test_scan_problems_are_logged_and_the_agent_keeps_running(fleet: Fleet) -> None:
    b = fleet.b
    events = wait_until(lambda: {(e.get("kind"), e.get("path")) for e in b.log_events()
                                 if e.get("msg") == "scan problem"} or None, 10, "scan problem log lines")
    kinds = {k for k, _ in events}
    assert "missing" in kinds  # a root that does not exist
    assert "unreadable" in kinds  # a root that is a file, not a directory
    assert "loop" in kinds  # symlinks into their own parent, and to themselves
    # Each problem is logged once, not on every 1-second rescan.
    lines = [e for e in b.log_events() if e.get("msg") == "scan problem"]
    assert len(lines) == len({(e["kind"], e["path"]) for e in lines})
    assert b.alive() and b.status()["lease"]["state"] == "live"
    assert b.status()["inventory"]["problems"]
