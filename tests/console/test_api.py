"""The console against a real dev control plane: its pages, a passkey joining the signer set,
passkey signatures on orders (and on the wrong order), the control plane's own policy per
role, and the real HTTPS listener."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from custos.client import orders
from custos.client.connection import ClientConfig
from custos.client.session import Client
from custos.client.signerkeys import load_private_key
from custos.console import tls
from custos.console.app import ConsoleApp
from custos.console.backend import ControlPlane, ControlPlaneConfig
from custos.console.server import ConsoleHTTPServer, serve_in_thread
from custos.core.signers import Signature, SignerSet, encode_signatures, sign_raw
from custos.core.webauthn import Assertion, unb64url
from tests.console.conftest import HOST, Page, make_app
from tests.console.softauth import ORIGIN, SoftPasskey
from tests.servers.custos import DevServer


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("console-cp")).start()
    yield server
    server.stop()


def cp_config(dev: DevServer, state: Path) -> ControlPlaneConfig:
    env = dev.env
    return ControlPlaneConfig(addrs=(env["CUSTOS_ADDR"],), ca=Path(env["CUSTOS_CA"]),
                              cert_dir=Path(env["CUSTOS_CERT_DIR"]), audit_key=Path(env["CUSTOS_AUDIT_PUBKEY"]),
                              audit_state=state / "audit-state.json")


@pytest.fixture(scope="module")
def world(dev: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("console-state")
    cp = ControlPlane(cp_config(dev, state))
    app = make_app(state, cp)
    alice, audrey = Page(app), Page(app)
    pk = SoftPasskey()
    assert alice.enroll(app.users.add_user("alice", "executive"), pk).status == 200
    assert audrey.enroll(app.users.add_user("audrey", "auditor"), SoftPasskey()).status == 200
    exec_client = Client(config=ClientConfig.from_env(addr=dev.env["CUSTOS_ADDR"], ca=dev.env["CUSTOS_CA"],
                                                      cert=str(Path(dev.env["CUSTOS_CERT_DIR"]) / "executive.pem"),
                                                      key=str(Path(dev.env["CUSTOS_CERT_DIR"]) / "executive.key")))
    yield {"app": app, "alice": alice, "audrey": audrey, "pk": pk, "dev": dev, "client": exec_client}
    exec_client.close()
    cp.close()


def _dev_key(dev: DevServer, i: int) -> Any:
    return load_private_key(dev.data_dir / "signers" / f"exec{i}.key", None)


def _sign_fields(pk: SoftPasskey, digest_hex: str, **kw: Any) -> dict[str, str]:
    return pk.assertion(bytes.fromhex(digest_hex), **kw)


@pytest.fixture(scope="module")
def rotated(world: dict[str, Any]) -> dict[str, Any]:
    """Signer set v2 with alice's passkey, rotated through the console."""
    alice, pk, dev = world["alice"], world["pk"], world["dev"]
    cred = alice.get("/api/session").json()["credentials"][0]["id"]
    r = alice.post("/api/signers/rotations", {"credential_id": cred})
    assert r.status == 200, r.json()
    rot = r.json()
    rid = rot["id"]
    assert rot["version"] == 2 and rot["signable"]["digest_hex"] == rid
    new_bytes = alice.get(f"/api/signers/rotations/{rid}/set").body
    new = SignerSet.decode(new_bytes)
    assert new.id == rid and new.key_by_name("alice").keytype == "webauthn"  # type: ignore[union-attr]

    r = alice.post(f"/api/signers/rotations/{rid}/sign", _sign_fields(pk, rid))
    assert r.status == 200 and r.json()["new_valid"] == 1, r.json()
    # Pasted signatures are checked before they are kept.
    bad = [("not a signature list", "hello"),
           ("a signature over another object", encode_signatures([sign_raw(_dev_key(dev, 1), b"other")]).decode()),
           ("an unknown key", encode_signatures([Signature(key_id="ab" * 32, sig="00" * 64)]).decode())]
    for what, text in bad:
        r = alice.post(f"/api/signers/rotations/{rid}/signatures", {"text": text})
        assert r.status == 400, (what, r.json())
    for i in (1, 2, 3):
        text = encode_signatures([sign_raw(_dev_key(dev, i), new.signature_input())]).decode()
        assert alice.post(f"/api/signers/rotations/{rid}/signatures", {"text": text}).status == 200
    # Three of version 1's keys are below its rotate threshold (4): the control plane refuses.
    r = alice.post(f"/api/signers/rotations/{rid}/install")
    assert r.status == 400 and "3 of the 4 trusted-set keys" in r.json()["error"], r.json()
    assert SignerSet.decode(orders_signer_set(world)).version == 1
    text = encode_signatures([sign_raw(_dev_key(dev, 4), new.signature_input())]).decode()
    assert alice.post(f"/api/signers/rotations/{rid}/signatures", {"text": text}).json()["ready"]
    r = alice.post(f"/api/signers/rotations/{rid}/install")
    assert r.status == 200 and r.json()["set"]["version"] == 2, r.json()
    return {"set": new}


def orders_signer_set(world: dict[str, Any]) -> bytes:
    from custos.client.signersets import get_signer_set

    return bytes(get_signer_set(world["client"]).signer_set)


def test_pages_answer_from_the_control_plane(world: dict[str, Any]) -> None:
    alice, audrey = world["alice"], world["audrey"]
    fleet = alice.get("/api/fleet")
    assert fleet.status == 200 and set(fleet.json()) == {"hosts", "models", "lineage"}
    assert alice.get("/api/orders").status == 200
    assert alice.get("/api/access").status == 200
    # The control plane's policy decides per role: executives do not read incidents, auditors do.
    r = alice.get("/api/incidents")
    assert r.status == 403 and r.json()["error"]
    assert audrey.get("/api/incidents").status == 200
    v = audrey.post("/api/audit/verify")
    assert v.status == 200 and v.json()["ok"], v.json()
    assert alice.get("/api/orders/" + "0" * 64).status == 404


def test_a_passkey_signs_an_order_and_only_that_order(world: dict[str, Any], rotated: dict[str, Any]) -> None:
    alice, pk, client = world["alice"], world["pk"], world["client"]
    dev: DevServer = world["dev"]
    dev.cli("model", "register", "m1", "--training-flops", "1e20", check=True)
    oid_a = dev.propose("halt", "m1")
    oid_b = dev.propose("halt", "m1")
    view = alice.get(f"/api/orders/{oid_a}").json()
    assert view["signable"]["digest_hex"] == oid_a and view["my_keys"][0]["name"] == "alice"
    key_id = view["my_keys"][0]["key_id"]

    vote_a = _sign_fields(pk, oid_a)
    # The console checks an assertion against the order it is posted for: A's vote on B is refused.
    r = alice.post(f"/api/orders/{oid_b}/sign", {"key_id": key_id, **vote_a})
    assert r.status == 422 and "not a valid signature of this order" in r.json()["error"], r.json()
    assert orders.get_order(client, oid_b).signed_by == []
    # ... and so does the control plane, when a compromised console attaches it anyway.
    wire = Assertion(*(unb64url(vote_a[k], k) for k in ("authenticator_data", "client_data_json",
                                                        "signature"))).encode()
    after = orders.attach(client, oid_b, [Signature(key_id=key_id, sig=wire)])
    assert key_id not in after.signed_by and after.state == "proposed", after  # recorded, never counted

    r = alice.post(f"/api/orders/{oid_a}/sign", {"key_id": key_id, **vote_a})
    assert r.status == 200 and r.json()["signatures"] == 1, r.json()
    assert key_id in orders.get_order(client, oid_a).signed_by
    # A replay of the same assertion: the counter did not move.
    r = alice.post(f"/api/orders/{oid_a}/sign", {"key_id": key_id, **vote_a})
    assert r.status == 422 and "counter" in r.json()["error"]
    # An auditor cannot sign, whatever the assertion.
    assert world["audrey"].post(f"/api/orders/{oid_a}/sign", {"key_id": key_id, **_sign_fields(pk, oid_a)}).status \
        == 403


def test_the_https_listener(world: dict[str, Any], tmp_path: Path) -> None:
    dev: DevServer = world["dev"]
    cert, key = tls.issue_dev_certificate(dev.data_dir / "tls" / "ca.pem", dev.data_dir / "tls" / "ca.key",
                                          tmp_path / "tls")
    server = ConsoleHTTPServer(("127.0.0.1", 0), None, tls.server_context(cert, key))
    port = server.port
    app: ConsoleApp = make_app(tmp_path / "state", origin=f"https://localhost:{port}")
    server.app = app
    serve_in_thread(server)
    try:
        ctx = ssl.create_default_context(cafile=str(dev.data_dir / "tls" / "ca.pem"))

        def call(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
                 ) -> tuple[int, dict[str, str], bytes]:
            c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            out = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
            c.close()
            return out

        status, headers, body = call("GET", "/")
        assert status == 200 and b"Custos console" in body
        assert "strict-transport-security" in headers and "content-security-policy" in headers
        status, _, body = call("POST", "/api/login/begin", b'{"user":"x"}',
                               {"Content-Type": "application/json", "Origin": "https://evil.test"})
        assert status == 403 and b"cross-origin" in body
        status, _, body = call("POST", "/api/login/begin", b'{"user":"x"}',
                               {"Content-Type": "application/json", "Origin": f"https://localhost:{port}"})
        assert status == 200 and json.loads(body)["public_key"]["rpId"] == "localhost"
        # A body over the limit is refused from its length, before it is read.
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                             server_hostname="localhost") as s:
            s.sendall(f"POST /api/login/begin HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: 70000\r\n"
                      f"Content-Type: application/json\r\nOrigin: https://localhost:{port}\r\n\r\n".encode())
            assert s.recv(100).startswith(b"HTTP/1.1 413")
        # Plain HTTP gets no HTTP answer: the console speaks TLS only.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            try:
                got = s.recv(100)
            except OSError:
                got = b""
            assert not got.startswith(b"HTTP/")
        assert tls.spki_sha256_b64(cert.read_bytes()) and ORIGIN
    finally:
        server.shutdown()
        server.server_close()
