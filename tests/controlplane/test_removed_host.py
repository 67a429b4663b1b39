"""Removed means refused: every RPC an agent certificate may call, once its host is removed
(or re-enrolled with a new certificate), is refused in the guard, and audited like any denial.

The table is ``authz.POLICY`` itself: a new RPC that lists the agent role is covered here
without a new line. Calls go out as raw bytes (an empty message is valid for every request
type), so the guard is reached whatever the method's cardinality or package.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from custos.controlplane import authz
from custos.v1 import custody_pb2, custody_pb2_grpc
from tests.controlplane.test_authz_matrix import call_raw, channel
from tests.servers.agentsim import SimHost, enroll
from tests.servers.custos import DevServer

AGENT_RPCS = sorted(path for path, roles in authz.POLICY.items() if authz.AGENT in roles)
REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def _security(server: DevServer) -> custody_pb2_grpc.CustodyStub:
    d = Path(server.env["CUSTOS_CERT_DIR"])
    ch = channel(server, (d / "security-team.pem").read_bytes(), (d / "security-team.key").read_bytes())
    return custody_pb2_grpc.CustodyStub(ch)


def _remove(server: DevServer, name: str) -> None:
    _security(server).RemoveHost(custody_pb2.RemoveHostRequest(name=name), timeout=10)


def _reenroll(server: DevServer, name: str) -> SimHost:
    """Remove ``name`` and enroll it again with a fresh key: its old certificate is stale."""
    _remove(server, name)
    return enroll(server.env, name)


def _pending(server: DevServer, name: str) -> None:
    """Remove ``name`` and add it again: a fresh token, not yet traded for a certificate."""
    _remove(server, name)
    _security(server).AddHost(custody_pb2.AddHostRequest(name=name), timeout=10)


@pytest.fixture(scope="module")
def served(dev_server: DevServer) -> dict[str, grpc.StatusCode]:
    """What each agent RPC gives an enrolled host: past the guard (any code but a refusal
    by the host check), or UNIMPLEMENTED for a row the server does not serve."""
    host = enroll(dev_server.env, "before-removal")
    with channel(dev_server, host.cert, host.key) as ch:
        seen = {path: call_raw(ch, path, timeout=3) for path in AGENT_RPCS}
    for path, (code, detail) in seen.items():
        assert "not accepted" not in detail and "not enrolled" not in detail, (path, code, detail)
    return {path: code for path, (code, _) in seen.items()}


@pytest.fixture
def stale(request: pytest.FixtureRequest, dev_server: DevServer) -> Iterator[SimHost]:
    """An agent identity the control plane must no longer accept, made the way ``request.param`` says."""
    name = f"stale-{request.param}"
    host = enroll(dev_server.env, name)
    with channel(dev_server, host.cert, host.key) as ch:
        assert call_raw(ch, "/custos.v1.Orders/GetSignerSet")[0] == grpc.StatusCode.OK
    {"removed": _remove, "reenrolled": _reenroll, "pending": _pending}[request.param](dev_server, name)
    yield host


@pytest.mark.parametrize("stale", ["removed", "reenrolled", "pending"], indirect=True)
def test_every_agent_rpc_refuses_a_stale_certificate(dev_server: DevServer, served: dict[str, grpc.StatusCode],
                                                     stale: SimHost) -> None:
    assert "/custos.v1.Registry/GetArtifact" in AGENT_RPCS and "/custos.v1.Orders/GetSignerSet" in AGENT_RPCS
    leaked = {}
    with channel(dev_server, stale.cert, stale.key) as ch:
        for path in AGENT_RPCS:
            code, detail = call_raw(ch, path)
            if served[path] == grpc.StatusCode.UNIMPLEMENTED:
                assert code == grpc.StatusCode.UNIMPLEMENTED, (path, code)  # served to no one
                continue
            if code not in REFUSED or "not accepted" not in detail:
                leaked[path] = (code, detail)
    assert leaked == {}


def test_refusals_of_changes_are_audited_under_the_host(dev_server: DevServer) -> None:
    host = enroll(dev_server.env, "audited-removal")
    _remove(dev_server, host.name)
    with channel(dev_server, host.cert, host.key) as ch:
        for path in ("/custos.v1.Registry/RecordCopy", "/custos.v1.Keys/UnwrapDataKey"):
            assert call_raw(ch, path)[0] == grpc.StatusCode.PERMISSION_DENIED
    events = json.loads(dev_server.cli("audit", "list", "-o", "json", role="auditor", check=True).stdout)
    mine = {(e["action"], e["result"]) for e in events if e["principal"] == host.name and e["role"] == "agent"}
    assert {("RecordCopy", "denied"), ("UnwrapDataKey", "denied")} <= mine, mine


def test_an_open_custody_stream_is_closed_on_removal(dev_server: DevServer) -> None:
    host = enroll(dev_server.env, "streaming-removal")
    host.open_stream(dev_server.env["CUSTOS_ADDR"])
    try:
        assert host.next_of("lease").expires_unix_ns > 0
        _remove(dev_server, host.name)
        assert "removed" in host.next_of("notice")
        with pytest.raises(ConnectionError):  # the server ended the stream
            host.next_of("lease")
    finally:
        host.close()
    # Reconnecting is refused at the door.
    host.inbox.queue.clear()
    host.open_stream(dev_server.env["CUSTOS_ADDR"])
    with pytest.raises(ConnectionError):
        host.next_of("lease")
    host.close()
    assert host.error is not None and host.error.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
