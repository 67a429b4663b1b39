"""Every RPC x every role, plus no certificate, a foreign CA, a role-less cert, and hostile requests."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor as FD
from grpc_health.v1 import health_pb2, health_pb2_grpc

from custos.controlplane import authz
from custos.controlplane.pki import ROLES, CertificateAuthority
from custos.v1 import audit_pb2, custody_pb2, incidents_pb2, keys_pb2, orders_pb2, registry_pb2
from tests.servers.custos import DevServer

SERVICES = [registry_pb2.DESCRIPTOR.services_by_name["Registry"],
            audit_pb2.DESCRIPTOR.services_by_name["Audit"],
            keys_pb2.DESCRIPTOR.services_by_name["Keys"],
            custody_pb2.DESCRIPTOR.services_by_name["Custody"],
            custody_pb2.DESCRIPTOR.services_by_name["Alerts"],
            orders_pb2.DESCRIPTOR.services_by_name["Orders"],
            incidents_pb2.DESCRIPTOR.services_by_name["Incidents"]]
ALL_METHODS = [(f"/{s.full_name}/{m.name}", m) for s in SERVICES for m in s.methods]
# Streaming RPCs are checked on their own below.
METHODS = [(p, m) for p, m in ALL_METHODS if not (m.client_streaming or m.server_streaming)]


def channel(server: DevServer, cert: bytes, key: bytes, ca: bytes | None = None) -> grpc.Channel:
    ca = ca or open(server.env["CUSTOS_CA"], "rb").read()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(server.env["CUSTOS_ADDR"], creds)


def role_channel(server: DevServer, role: str) -> grpc.Channel:
    d = server.env["CUSTOS_CERT_DIR"]
    return channel(server, open(f"{d}/{role}.pem", "rb").read(), open(f"{d}/{role}.key", "rb").read())


def call_raw(ch: grpc.Channel, path: str, raw: bytes = b"", timeout: float = 10) -> tuple[grpc.StatusCode, str]:
    """Call ``path`` with ``raw`` request bytes (b"": an empty message of any type); status, details."""
    try:
        ch.unary_unary(path)(raw, timeout=timeout)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""  # type: ignore[attr-defined]


def call_detail(ch: grpc.Channel, path: str, method) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    return call_raw(ch, path)


def call(ch: grpc.Channel, path: str, method) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    return call_detail(ch, path, method)[0]


def test_every_rpc_has_a_policy_row() -> None:
    missing = [p for p, _ in ALL_METHODS if p not in authz.POLICY]
    assert missing == []


def test_unknown_method_is_denied_for_every_role() -> None:
    for role in ROLES:
        assert not authz.is_allowed("/custos.v1.Registry/DropEverything", role)


@pytest.mark.parametrize("role", ROLES)
def test_role_matrix(dev_server: DevServer, role: str) -> None:
    ch = role_channel(dev_server, role)
    for path, method in METHODS:
        code, detail = call_detail(ch, path, method)
        if authz.is_allowed(path, role):
            # Past the role table; a later check (e.g. "agent host not enrolled") may still refuse.
            assert code != grpc.StatusCode.UNAUTHENTICATED and "may not call" not in detail, \
                f"{role} should be allowed {path}, got {code} {detail}"
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED and "may not call" in detail, \
                f"{role} should be denied {path}, got {code}"
    # The custody stream: only agents get past the table.
    stream = ch.stream_stream("/custos.v1.Custody/Stream",
                              request_serializer=custody_pb2.AgentMessage.SerializeToString,
                              response_deserializer=custody_pb2.ControlMessage.FromString)
    try:
        list(stream(iter([custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat())]), timeout=10))
        code, detail = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, detail = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
    if role == "agent":
        # Allowed by role, refused because the dev agent certificate is no enrolled host.
        assert code == grpc.StatusCode.PERMISSION_DENIED and "not enrolled" in detail, (code, detail)
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED and "may not call" in detail, (code, detail)
    # Health is open to every authenticated role; an agent certificate must also be an
    # enrolled host's, and the dev one is none (tests/controlplane/test_removed_host.py).

    try:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        code, detail = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, detail = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
    if role == "agent":
        assert code == grpc.StatusCode.PERMISSION_DENIED and "not enrolled" in detail, (code, detail)
    else:
        assert code == grpc.StatusCode.OK and resp.status == health_pb2.HealthCheckResponse.SERVING
    ch.close()


def test_denied_mutation_is_audited(dev_server: DevServer) -> None:
    ch = role_channel(dev_server, "auditor")
    code = call(ch, "/custos.v1.Registry/RegisterModel",
                registry_pb2.DESCRIPTOR.services_by_name["Registry"].methods_by_name["RegisterModel"])
    assert code == grpc.StatusCode.PERMISSION_DENIED
    res = dev_server.cli("audit", "list", "-o", "json", role="auditor", check=True)

    events = json.loads(res.stdout)
    assert any(e["action"] == "RegisterModel" and e["result"] == "denied"
               and e["principal"] == "dev-auditor" for e in events)


def test_no_client_certificate_is_refused(dev_server: DevServer) -> None:
    ca = open(dev_server.env["CUSTOS_CA"], "rb").read()
    ch = grpc.secure_channel(dev_server.env["CUSTOS_ADDR"], grpc.ssl_channel_credentials(ca))
    path, method = METHODS[1]
    assert call(ch, path, method) == grpc.StatusCode.UNAVAILABLE


def test_plaintext_connection_is_refused(dev_server: DevServer) -> None:
    ch = grpc.insecure_channel(dev_server.env["CUSTOS_ADDR"])
    path, method = METHODS[1]
    assert call(ch, path, method) == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(dev_server: DevServer) -> None:
    rogue = CertificateAuthority.create("rogue CA")
    cert, key = rogue.issue(common_name="mallory", role="admin")
    ch = channel(dev_server, cert, key)
    for path, method in METHODS[:3]:
        assert call(ch, path, method) == grpc.StatusCode.UNAVAILABLE


def test_certificate_without_role_is_unauthenticated(dev_server: DevServer) -> None:

    d = Path(dev_server.env["CUSTOS_DATA_DIR"]) / "tls"
    ca = CertificateAuthority.load(d / "ca.pem", d / "ca.key")
    cert, key = ca.issue(common_name="no-role", role=None)
    ch = channel(dev_server, cert, key)
    path, method = METHODS[1]
    assert call(ch, path, method) == grpc.StatusCode.UNAUTHENTICATED


# -- hostile requests: a clear refusal, never INTERNAL or UNKNOWN --------------------------

HOSTILE_STRINGS = ["\x00", "a\x00b", "x" * 100_000, "\u202e", "../../etc/passwd", "/abs", "\ufeff", " ",
                   "e\u0301", "\U0001f600", "A" * 300]
HOSTILE_BYTES = [b"\xff\xfe", b"[" * 5000, b'{"a":' * 3000, b'"\\ud800"', b'[{"key_id":"\\ud800","sig":"00"}]',
                 b'{"digest":"sha256","files":[{"path":"\\udc80","sha256":"' + b"0" * 64 + b'","size":1}],'
                 b'"version":1}', b"0" * 5000, b"null"]
CALLER_ROLES = ["security-team", "executive", "admin", "auditor"]


def _allowed_role(path: str) -> str | None:
    return next((r for r in CALLER_ROLES if authz.is_allowed(path, r)), None)


def _hostile(method, value: str | bytes):  # type: ignore[no-untyped-def]
    """A request of ``method``'s type with ``value`` in every string (or bytes) field, repeated
    fields and map keys and values included."""
    req = message_factory.GetMessageClass(method.input_type)()
    want = FD.TYPE_STRING if isinstance(value, str) else FD.TYPE_BYTES
    for f in req.DESCRIPTOR.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            k, v = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            if k.type == want and v.type == want:
                getattr(req, f.name)[value] = value
        elif f.type == want:
            if f.is_repeated:
                getattr(req, f.name).append(value)
            else:
                setattr(req, f.name, value)
    return req


def test_undecodable_requests_are_invalid_argument(dev_server: DevServer) -> None:
    """Corrupt wire bytes, and a string field that is not UTF-8 (an encoded surrogate): the
    caller is authenticated and authorized first, then told the request does not decode."""
    wrong = {}
    for path, method in METHODS:
        role = _allowed_role(path)
        if role is None:
            continue
        first = method.input_type.fields_by_number.get(1)
        raws = [b"\xff\xff\xff"]
        if first is not None and first.type == FD.TYPE_STRING:
            raws.append(b"\x0a\x03\xed\xa0\x80")  # field 1 = the UTF-8 bytes of U+D800
        ch = role_channel(dev_server, role)
        for raw in raws:
            code, detail = call_raw(ch, path, raw)
            if code != grpc.StatusCode.INVALID_ARGUMENT or "does not decode" not in detail:
                wrong[(path, raw)] = (code, detail[:100])
        ch.close()
    assert wrong == {}
    ch = role_channel(dev_server, "auditor")
    assert call_raw(ch, "/custos.v1.Registry/RegisterModel", b"\xff\xff\xff")[0] == grpc.StatusCode.PERMISSION_DENIED
    ch.close()


def test_hostile_field_values_never_crash_the_server(dev_server: DevServer) -> None:
    """Every unary RPC, by a role allowed to call it, with NUL, bidi controls, 100 kB strings,
    deep JSON, lone surrogate escapes in JSON bytes, ... in every field: refused or served,
    never INTERNAL, never UNKNOWN (a reply whose details overflow the header limit)."""
    crashed = {}
    for path, method in METHODS:
        role = _allowed_role(path)
        if role is None:
            continue
        ch = role_channel(dev_server, role)
        for value in [*HOSTILE_STRINGS, *HOSTILE_BYTES]:
            req = _hostile(method, value)
            stub = ch.unary_unary(path, request_serializer=type(req).SerializeToString)
            try:
                stub(req, timeout=20)
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):  # type: ignore[attr-defined]
                    crashed[(path, repr(value[:24]))] = (exc.code(), (exc.details() or "")[:100])  # type: ignore[attr-defined]
        ch.close()
    assert crashed == {}
