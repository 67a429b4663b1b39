"""Revocation reaches every replica within seconds: two `custos server` processes on one real
etcd, real agent processes and protocol-level agents (tests/servers/agentsim.py).

- `custos host revoke H` through one replica closes H's open stream on the other replica
  (a stream that sends no heartbeat, so only the revocation watch can close it), and every
  RPC with H's certificate is refused by both; a real agent connected to the other replica
  fails closed at once (its lease TTL is 30 s here) and stops reconnecting; a host on the
  same replica is untouched, and H re-added and re-enrolled streams again.
- A person's certificate (`custos host revoke --cert FILE`), revoked through one replica
  while the other is killed -9, is refused by the first on a connection opened before,
  and by the second as soon as it is back; every other certificate still works.
- Bad requests to revoke: a clear error, nothing revoked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from custos.controlplane import authz
from custos.controlplane.pki import CertificateAuthority
from custos.core.hosts import cert_fingerprint
from custos.v1 import custody_pb2, custody_pb2_grpc
from tests.controlplane.test_authz_matrix import call_raw, channel
from tests.e2e.conftest import AgentProc, unique, wait_until
from tests.servers.agentsim import SimHost, enroll
from tests.servers.custos import DevServer

pytestmark = pytest.mark.slow

AGENT_RPCS = sorted(path for path, roles in authz.POLICY.items() if authz.AGENT in roles)
REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
FIGURES: dict[str, float] = {}  # measured latencies, printed for the record (not asserted)


@pytest.fixture
def replicas(tmp_path: Path, etcd_server) -> Iterator[tuple[DevServer, DevServer, Path]]:  # type: ignore[no-untyped-def]
    """Replicas A and B on one etcd (a shared dev data dir: one CA, one audit key)."""
    store = f"etcd://{etcd_server.endpoint}/revoke-{int(time.time() * 1000)}"
    shared = tmp_path / "shared"
    shared.mkdir()
    config = shared / "cp.toml"
    config.write_text("[custody]\nlease_ttl = 30\nsweep_interval = 0.5\n")
    a = DevServer(shared, store=store, extra=["--config", str(config)]).start()
    env_a = dict(a.env)
    b = DevServer(shared, store=store, extra=["--config", str(config)]).start()
    a.env = env_a
    yield a, b, shared
    b.stop()
    a.stop()
    if FIGURES:
        print("\nrevocation figures (s):", json.dumps({k: round(v, 3) for k, v in FIGURES.items()}))


def _refusals(server: DevServer, cert: bytes, key: bytes) -> dict[str, tuple[grpc.StatusCode, str]]:
    """Every agent RPC with this certificate that is NOT refused as not accepted."""
    with channel(server, cert, key) as ch:
        seen = {path: call_raw(ch, path, timeout=5) for path in AGENT_RPCS}
    return {p: (c, d) for p, (c, d) in seen.items()
            if (c not in REFUSED or "not accepted" not in d) and c != grpc.StatusCode.UNIMPLEMENTED}  # served to no one


def _closed(host: SimHost) -> str:
    """The notice that ended ``host``'s stream (fails if it stays open)."""
    notice = host.next_of("notice", timeout=20)
    with pytest.raises(ConnectionError):
        host.next_of("lease", timeout=10)
    return str(notice)


def test_a_revoked_host_is_cut_off_on_every_replica(tmp_path: Path,
                                                    replicas: tuple[DevServer, DevServer, Path]) -> None:
    a, b, _ = replicas
    x = enroll(a.env, unique("revoked"))
    z = enroll(a.env, unique("revoked-fp"))
    y = enroll(a.env, unique("bystander"))
    real = AgentProc(tmp_path / "agent", unique("real"), b)
    real.enroll()
    real.start()
    try:
        for host, server in ((x, b), (z, a), (y, b)):
            host.open_stream(server.env["CUSTOS_ADDR"])
            assert host.next_of("lease").ttl_seconds == 30
        wait_until(real.lease_live, 30, "the real agent's first lease")

        t0 = time.monotonic()
        a.cli("host", "revoke", x.name, "--reason", "key copied off the host", check=True)  # through A
        notice = _closed(x)  # its stream on B
        FIGURES["stream closed on the other replica"] = time.monotonic() - t0
        assert "not accepted" in notice and "key copied off the host" in notice
        assert wait_until(lambda: _refusals(a, x.cert, x.key) == {} and _refusals(b, x.cert, x.key) == {}, 15,
                          "every RPC refused on both replicas")
        FIGURES["every RPC refused on both"] = time.monotonic() - t0

        # By fingerprint, through B, of a host streaming to A: the same.
        t0 = time.monotonic()
        out = json.loads(b.cli("host", "revoke", "--fingerprint", cert_fingerprint(z.cert), "-o", "json",
                               check=True).stdout)
        assert out["host"]["name"] == z.name and out["host"]["state"] == "revoked" and len(out["revoked"]) == 1
        assert "not accepted" in _closed(z)
        FIGURES["stream closed, by fingerprint"] = time.monotonic() - t0

        # The real agent on B, revoked through A, fails closed at once and stops reconnecting.
        t0 = time.monotonic()
        a.cli("host", "revoke", real.name, check=True)
        wait_until(lambda: real.status()["failed_closed"] is not None, 15, "the real agent to fail closed")
        FIGURES["real agent failed closed"] = time.monotonic() - t0
        assert real.status()["lease"]["state"] == "removed"
        assert "removed" in (real.run("--model", "m", "--", "true").stderr or "")

        # Untouched: a host on the same replica.
        y.send(custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat(sent_unix_ns=time.time_ns())))
        assert y.next_of("lease").expires_unix_ns > 0

        hosts = {h["name"]: h for h in json.loads(a.cli("hosts", "-o", "json", check=True).stdout)}
        assert {hosts[n]["state"] for n in (x.name, z.name, real.name)} == {"revoked"}
        assert hosts[y.name]["state"] == "enrolled"
        events = json.loads(a.cli("audit", "list", "-o", "json", role="auditor", check=True).stdout)
        assert {e["object"] for e in events if e["action"] == "RevokeCertificate"} >= {
            f"host/{x.name}", f"host/{z.name}", f"host/{real.name}"}

        # Re-added and re-enrolled, x streams again: the old revocation closes nothing new.
        x.close()
        a.cli("host", "remove", x.name, check=True)
        x2 = enroll(a.env, x.name)
        x2.open_stream(b.env["CUSTOS_ADDR"])
        x2.next_of("lease")
        time.sleep(5)  # a few revocation polls and watch events on B
        x2.send(custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat(sent_unix_ns=time.time_ns())))
        assert x2.next_of("lease").expires_unix_ns > 0
        x2.close()
    finally:
        for h in (x, z, y):
            h.close()
        real.stop()


def _person(shared: Path, name: str) -> tuple[bytes, bytes, Path]:
    ca = CertificateAuthority.load(shared / "tls" / "ca.pem", shared / "tls" / "ca.key")
    cert, key = ca.issue(common_name=name, role="security-team")
    path = shared / f"{name}.pem"
    path.write_bytes(cert)
    return cert, key, path


def _list_hosts(ch: grpc.Channel) -> tuple[grpc.StatusCode, str]:
    try:
        custody_pb2_grpc.CustodyStub(ch).ListHosts(custody_pb2.ListHostsRequest(), timeout=10)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""  # type: ignore[attr-defined]


def test_a_revoked_person_is_refused_by_every_replica(replicas: tuple[DevServer, DevServer, Path]) -> None:
    a, b, shared = replicas
    cert, key, path = _person(shared, "alice")
    open_a = channel(a, cert, key)  # opened before the revocation, reused after
    assert _list_hosts(open_a)[0] == grpc.StatusCode.OK
    with channel(b, cert, key) as ch:
        assert _list_hosts(ch)[0] == grpc.StatusCode.OK

    b.kill9()
    t0 = time.monotonic()
    out = json.loads(a.cli("host", "revoke", "--cert", str(path), "--reason", "laptop lost", "-o", "json",
                           check=True).stdout)
    assert out["host"] is None and [r["principal"] for r in out["revoked"]] == ["alice"]
    assert out["revoked"][0]["role"] == "security-team"
    code, detail = _list_hosts(open_a)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "revoked" in detail and "laptop lost" in detail
    FIGURES["person refused on the replica that revoked"] = time.monotonic() - t0

    b2 = DevServer(b.data_dir, store=b.store, port=b.port, extra=b.extra).start()
    a.env = dict(a.env)  # b2 rewrote the shared dev.env; A's address is unchanged
    try:
        with channel(b2, cert, key) as ch:
            code, detail = _list_hosts(ch)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "revoked" in detail
        for server in (a, b2):  # everyone else still works
            assert server.cli("hosts", check=True).returncode == 0
        again = json.loads(a.cli("host", "revoke", "--cert", str(path), "-o", "json", check=True).stdout)
        assert again["revoked"] == []  # final: revoking again changes nothing
        listed = json.loads(b2.cli("host", "revocations", "-o", "json", role="auditor", check=True).stdout)
        assert [r["reason"] for r in listed if r["principal"] == "alice"] == ["laptop lost"]
    finally:
        open_a.close()
        b2.stop()


def test_bad_revocations_are_refused_and_revoke_nothing(replicas: tuple[DevServer, DevServer, Path]) -> None:
    a, _, shared = replicas
    (shared / "junk.pem").write_bytes(b"not a certificate")
    cases = {
        (): 2,  # nothing named
        ("some-host", "--fingerprint", "ab" * 32): 2,  # two things named
        ("--fingerprint", "xyz"): 2,
        ("--fingerprint", "ab" * 31): 2,
        ("--cert", str(shared / "missing.pem")): 2,
        ("--cert", str(shared / "junk.pem")): 2,
        ("no-such-host",): 3,
        ("Bad_Name!",): 2,
        ("--fingerprint", "ab" * 32, "--reason", "x" * 501): 2,
        ("--fingerprint", "ab" * 32, "--reason", "two\nlines"): 2,
    }
    wrong = {}
    for args, code in cases.items():
        res = a.cli("host", "revoke", *args)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        if res.returncode != code or len(lines) != 1 or "Traceback" in res.stderr:
            wrong[args[:2]] = (res.returncode, res.stderr[-300:])
    assert wrong == {}
    # A role that may not revoke.
    res = a.cli("host", "revoke", "--fingerprint", "ab" * 32, role="auditor")
    assert res.returncode == 4 and "may not call" in res.stderr
    assert json.loads(a.cli("host", "revocations", "-o", "json", check=True).stdout) == []
