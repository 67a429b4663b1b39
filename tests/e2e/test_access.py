"""The two-person rule end to end: a real dev control plane and a real agent process.

A covered model's data keys are released only under an active access grant. Here:
a grant needing two approvals (sec2 and a third security-team member, sec3, issued
by the dev CA for this test) lets `custos run` work; a revoked grant stops the
running workload within a few of the agent's grant checks; an expired grant stops
it at its ``not_after`` and one second later no new pull or run succeeds, while an
extended one keeps its workload going; a policy of ``on_expiry = run`` lets it run;
a halt order revokes every grant of its model and a lift does not restore them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from custos.client import access
from custos.client.signerkeys import load_private_key, save_private_key
from custos.controlplane.pki import CertificateAuthority, DevPKI
from custos.core.access import AccessPolicy
from custos.core.signers.keys import SignerKey, generate_ed25519
from custos.fs.hashing import build_manifest
from custos.v1 import access_pb2
from tests.e2e.conftest import AgentProc, make_weights, server_config, unique, wait_until
from tests.servers.access import dev_client
from tests.servers.custos import DevServer

pytestmark = pytest.mark.slow

CHECK_INTERVAL = 0.5  # the agent's workloads.grant_check_interval here
# A stop is seen within a few checks; the slack covers the stop grace (1 s), the polling and,
# should the agent not use the configured interval, its default of 10 s.
STOP_WITHIN = 20.0
MIN_GRANT_S = 60  # the shortest grant the core allows

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
print("MATCH" if got == want else "MISMATCH %r" % got)
sys.exit(7)
"""

HOLD = """
import mmap, os, time
with open(os.path.join(os.environ["CUSTOS_ARTIFACT_DIR"], "model-00001.safetensors"), "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
print("mapped", flush=True)
time.sleep(600)
"""


@dataclass
class World:
    server: DevServer
    agent: AgentProc
    base: Path
    scripts: Path

    @property
    def env(self) -> dict[str, str]:
        return self.server.env

    def model(self, name: str, seed: int) -> tuple[str, dict[str, str]]:
        """Register a covered model, push one artifact; (artifact id, manifest path -> sha256)."""
        self.server.cli("model", "register", name, "--training-flops", "3e26", check=True)
        weights = make_weights(self.base / f"w-{name}", seed=seed)
        aid = json.loads(self.server.cli("push", name, str(weights), "-o", "json", check=True).stdout)["id"]
        return aid, {e.path: e.sha256 for e in build_manifest(weights).files}

    def set_policy(self, model: str, **kw: Any) -> None:
        with dev_client(self.env, "admin") as admin:
            access.set_policy(admin, model, AccessPolicy(**kw))

    def request(self, model: str, *, hosts: tuple[str, ...] = (), principal: str = "",
                duration_s: int = 3600, extends: str = "") -> access_pb2.AccessGrant:
        with dev_client(self.env, "sec1") as c:
            return access.request(c, model=model, duration_s=duration_s, reason="e2e: access grants",
                                  hosts=hosts, principal=principal, extends=extends)

    def approve(self, gid: str, name: str) -> access_pb2.AccessGrant:
        key = load_private_key(Path(self.env["CUSTOS_DATA_DIR"]) / "approvers" / f"{name}.key", None)
        with dev_client(self.env, name) as c:
            return access.approve(c, gid, key)

    def grant(self, model: str, **kw: Any) -> access_pb2.AccessGrant:
        g = self.request(model, **kw)
        return self.approve(g.id, "sec2")

    def get(self, gid: str) -> access_pb2.AccessGrant:
        with dev_client(self.env, "sec1") as c:
            return access.get(c, gid)

    def revoke(self, gid: str) -> None:
        with dev_client(self.env, "sec2") as c:
            access.revoke(c, gid, "e2e: revoked while running")

    def run_detached(self, model: str, aid: str) -> dict[str, Any]:
        res = self.agent.run("--model", model, "--artifact", aid, "--detach", "-o", "json", "--",
                             sys.executable, str(self.scripts / "hold.py"))
        assert res.returncode == 0, res.stderr
        started = dict(json.loads(res.stdout))
        wait_until(lambda: self.workload(started["workload_id"])["state"] == "running", 10, "the workload to run")
        return started

    def workload(self, wid: str) -> dict[str, Any]:
        return dict(next(w for w in self.agent.status()["workloads"] if w["workload_id"] == wid))

    def stopped(self, started: dict[str, Any], timeout: float = STOP_WITHIN) -> dict[str, Any]:
        w = wait_until(lambda: (w := self.workload(started["workload_id"]))["state"] in ("stopped", "exited") and w,
                       timeout, "the workload to stop")
        assert w["state"] == "stopped", w
        assert not _pid_alive(started["pid"]), started
        assert not Path(started["artifact_dir"]).exists(), started  # its plaintext wiped
        return dict(w)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _add_sec3(server: DevServer) -> None:
    """A third member of the security team: a certificate from the dev CA (CN sec3) and an
    Ed25519 approval key, registered as an approver by the admin."""
    data_dir = Path(server.env["CUSTOS_DATA_DIR"])
    pki = DevPKI(data_dir)
    cert, key = CertificateAuthority.load(pki.ca_cert, pki.ca_key).issue(common_name="sec3", role="security-team")
    cert_dir = Path(server.env["CUSTOS_CERT_DIR"])
    (cert_dir / "sec3.key").write_bytes(key)
    (cert_dir / "sec3.key").chmod(0o600)
    (cert_dir / "sec3.pem").write_bytes(cert)
    priv = generate_ed25519()
    save_private_key(data_dir / "approvers" / "sec3.key", priv, None)
    with dev_client(server.env, "admin") as admin:
        access.add_approver(admin, name="sec3", principals=["sec3"],
                            public_keys=[SignerKey.from_ed25519(priv.public_key(), name="sec3").to_openssh()])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("access")
    server = DevServer(base / "cp", extra=["--config", str(server_config(base / "cp.toml"))]).start()
    agent: AgentProc | None = None
    try:
        _add_sec3(server)
        scripts = base / "scripts"
        scripts.mkdir()
        (scripts / "verify.py").write_text(VERIFY)
        (scripts / "hold.py").write_text(HOLD)
        agent = AgentProc(base / "host", unique("gpu"), server)
        agent.config.write_text(agent.config.read_text().replace(
            "[workloads]\n", f"[workloads]\ngrant_check_interval = {CHECK_INTERVAL}\n"))
        agent.enroll()
        agent.start()
        wait_until(agent.lease_live, 30, "a live lease")
    except BaseException:
        if agent is not None:
            print(f"--- agent log ---\n{agent.log()[-4000:]}")
            agent.stop()
        server.stop()
        raise
    try:
        yield World(server=server, agent=agent, base=base, scripts=scripts)
    finally:
        agent.stop()
        server.stop()


def test_two_approvals_then_custos_run_works(world: World) -> None:
    aid, files = world.model("two", seed=11)
    world.set_policy("two", approvals=2)
    host = world.agent.name
    verify = ("--", sys.executable, str(world.scripts / "verify.py"), json.dumps(files))

    res = world.agent.run("--model", "two", "--artifact", aid, *verify)
    assert res.returncode != 0 and f"no active access grant for host {host}" in res.stderr, res.stderr

    g = world.request("two", hosts=(host,))
    assert g.state == "pending" and g.needed == 2 and list(g.artifact_ids) == [aid]
    g = world.approve(g.id, "sec2")
    assert g.state == "pending" and list(g.counted) == ["sec2"]  # one of two
    res = world.agent.run("--model", "two", "--artifact", aid, *verify)
    assert res.returncode != 0 and "no active access grant" in res.stderr, res.stderr
    g = world.approve(g.id, "sec3")
    assert g.state == "active" and sorted(g.counted) == ["sec2", "sec3"]

    res = world.agent.run("--model", "two", "--artifact", aid, *verify)
    assert res.returncode == 7, res.stderr  # the workload's own exit code
    assert "MATCH" in res.stdout.split(), res.stdout
    # The grant was for this host: the security team's own pull is still refused.
    pulled = world.server.cli("pull", aid, str(world.base / "pull-two"))
    assert pulled.returncode != 0 and "no active access grant for principal" in pulled.stderr, pulled.stderr


def test_revoking_the_grant_stops_the_running_workload(world: World) -> None:
    aid, _ = world.model("rev", seed=12)
    g = world.grant("rev", hosts=(world.agent.name,))
    started = world.run_detached("rev", aid)
    assert world.workload(started["workload_id"])["grant_id"] == g.id

    world.revoke(g.id)
    t0 = time.monotonic()
    w = world.stopped(started)
    print(f"access: revoke -> workload stopped in {time.monotonic() - t0:.2f} s "
          f"(grant check every {CHECK_INTERVAL} s)")
    assert w["stopped"] == f"access grant {g.id[:16]} revoked", w
    res = world.agent.run("--model", "rev", "--artifact", aid, "--", "true")
    assert res.returncode != 0 and "no active access grant" in res.stderr, res.stderr


def test_on_expiry_run_lets_the_workload_run_without_new_unwraps(world: World) -> None:
    aid, _ = world.model("letrun", seed=13)
    world.set_policy("letrun", on_expiry="run")
    g = world.grant("letrun", hosts=(world.agent.name,))
    started = world.run_detached("letrun", aid)
    world.revoke(g.id)
    wait_until(lambda: any(e.get("msg", "").startswith("access grant ended; its policy lets the workload run")
                           and e.get("grant_id") == g.id for e in world.agent.log_events()),
               STOP_WITHIN, "the agent to see the revocation")
    w = world.workload(started["workload_id"])
    assert w["state"] == "running" and _pid_alive(started["pid"]), w
    res = world.agent.run("--model", "letrun", "--artifact", aid, "--", "true")
    assert res.returncode != 0 and "no active access grant" in res.stderr, res.stderr


def test_expiry_is_exact_and_stops_the_workload_unless_extended(world: World) -> None:
    """Three grants of the shortest lifetime: one for this host (its workload must stop at
    not_after), one for the security team's pulls (refused one second after not_after), one for
    this host extended before it ends (its workload keeps running)."""
    host = world.agent.name
    aid, _ = world.model("exp", seed=14)
    aid_ext, _ = world.model("ext", seed=15)
    run_g = world.grant("exp", hosts=(host,), duration_s=MIN_GRANT_S)
    pull_g = world.grant("exp", principal="dev-security-team", duration_s=MIN_GRANT_S)
    ext_g = world.grant("ext", hosts=(host,), duration_s=MIN_GRANT_S)
    started = world.run_detached("exp", aid)
    kept = world.run_detached("ext", aid_ext)
    world.server.cli("pull", aid, str(world.base / "pull-exp-1"), check=True)

    ext = world.request("ext", hosts=(host,), duration_s=2 * 3600, extends=ext_g.id)
    assert world.approve(ext.id, "sec2").state == "applied"
    extended = world.get(ext_g.id)
    assert extended.state == "active" and extended.not_after_unix_ns > ext_g.not_after_unix_ns

    # Just before the end the workload still runs; just after, it is stopped.
    last = max(run_g.not_after_unix_ns, pull_g.not_after_unix_ns)
    time.sleep(max(0.0, (run_g.not_after_unix_ns - time.time_ns()) / 1e9 - 2))
    assert world.workload(started["workload_id"])["state"] == "running"
    w = world.stopped(started, timeout=(run_g.not_after_unix_ns - time.time_ns()) / 1e9 + STOP_WITHIN)
    assert w["stopped"] == f"access grant {run_g.id[:16]} expired", w
    assert w["ended_unix_ns"] >= run_g.not_after_unix_ns, w  # not before its end

    # One second after not_after: no new pull, no new run.
    time.sleep(max(0.0, (last - time.time_ns()) / 1e9 + 1))
    refused = world.server.cli("pull", aid, str(world.base / "pull-exp-2"))
    assert refused.returncode != 0 and "no active access grant" in refused.stderr, refused.stderr
    assert not (world.base / "pull-exp-2").exists()
    res = world.agent.run("--model", "exp", "--artifact", aid, "--", "true")
    assert res.returncode != 0 and "no active access grant" in res.stderr, res.stderr
    assert world.get(run_g.id).state == "expired"

    # The extended grant's workload is still running, its new end known to the agent.
    time.sleep(2 * CHECK_INTERVAL)
    w = world.workload(kept["workload_id"])
    assert w["state"] == "running" and _pid_alive(kept["pid"]), w
    assert w["grant_not_after_unix_ns"] == extended.not_after_unix_ns, w


def test_a_halt_revokes_the_grant_and_a_lift_does_not_restore_it(world: World) -> None:
    aid, _ = world.model("hm", seed=16)
    host = world.agent.name
    g = world.grant("hm", hosts=(host,))
    started = world.run_detached("hm", aid)

    halt = world.server.propose("halt", "hm")
    world.server.sign(halt, 1, 2, 3)
    w = world.stopped(started, timeout=30)
    assert "halt" in (w["stopped"] or ""), w
    assert world.get(g.id).state == "revoked"

    lift = world.server.propose("lift", "hm")
    world.server.sign(lift, 2, 4, 5)
    wait_until(lambda: _order_state(world.server, lift) == "complete", 60, "the lift to complete")
    assert world.get(g.id).state == "revoked"  # not restored
    res = wait_until(lambda: (r := world.agent.run("--model", "hm", "--artifact", aid, "--", "true"))
                     and "no active access grant" in r.stderr and r, 30, "the agent to see the lift")
    assert res.returncode != 0 and "no active access grant" in res.stderr, res.stderr

    world.grant("hm", hosts=(host,))  # a new grant: runs again
    res = world.agent.run("--model", "hm", "--artifact", aid, "--", "true")
    assert res.returncode == 0, res.stderr


def _order_state(server: DevServer, oid: str) -> str:
    return str(json.loads(server.cli("order", "status", oid, "-o", "json", check=True).stdout)["state"])
