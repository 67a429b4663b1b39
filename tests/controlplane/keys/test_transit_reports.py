"""Completion reports signed by the ed25519 key "order-reports" in a real OpenBao Transit,
under the control plane's own policy: the key is created when absent, reports verify with
the public key Transit publishes, and the policy allows nothing else on that key. The
configuration switch between Transit and the dev-only local key is refused clearly when wrong.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custos.controlplane.keys import KeyConflict, LocalKeyProvider, VaultTransitProvider
from custos.controlplane.orders.report_signer import (
    DEFAULT_REPORT_KEY,
    DevReportSigner,
    TransitReportSigner,
    open_report_signer,
)
from custos.core.evidence import report_key_id, report_signature_input
from custos.errors import IntegrityError, InvalidInput
from tests.controlplane.keys.vault_setup import AuthSetup, prepare
from tests.servers.openbao import OpenBaoDevServer

pytestmark = pytest.mark.backend

KEY = DEFAULT_REPORT_KEY


@pytest.fixture(scope="module")
def bao(openbao_dev: OpenBaoDevServer, tmp_path_factory: pytest.TempPathFactory) -> AuthSetup:
    return prepare(openbao_dev.address, openbao_dev.root_token, tmp_path_factory.mktemp("reports"),
                   ttl="120s", max_ttl="240s", role="report-tests")


def published(root: hvac.Client, name: str = KEY) -> Ed25519PublicKey:
    data = root.secrets.transit.read_key(name)["data"]
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(data["keys"][str(data["latest_version"])]["public_key"]))


def _drop(root: hvac.Client, name: str = KEY) -> None:
    try:
        root.secrets.transit.read_key(name)
    except hvac.exceptions.InvalidPath:
        return
    root.secrets.transit.update_key_configuration(name, deletion_allowed=True)
    root.secrets.transit.delete_key(name)


def _ensure(root: hvac.Client) -> None:
    try:
        root.secrets.transit.read_key(KEY)
    except hvac.exceptions.InvalidPath:
        root.secrets.transit.create_key(KEY, key_type="ed25519")


@pytest.fixture
def cp(bao: AuthSetup) -> Iterator[VaultTransitProvider]:
    """A provider holding a token with only the control-plane policy."""
    with VaultTransitProvider(url=bao.address, token=bao.token()) as provider:
        yield provider


def test_the_control_plane_creates_the_key_and_its_reports_verify_with_the_published_key(
        bao: AuthSetup, cp: VaultTransitProvider) -> None:
    _drop(bao.root)
    signer = open_report_signer({"provider": "vault", "report_key": KEY}, cp, None, dev=False)
    assert isinstance(signer, TransitReportSigner)
    key = published(bao.root)  # created, as ed25519, under the control plane's own policy
    assert bao.root.secrets.transit.read_key(KEY)["data"]["type"] == "ed25519"
    assert signer.public_key() == key and signer.key_id() == report_key_id(key)
    assert signer.label == f"transit:transit/{KEY}:v1"
    message = report_signature_input(b'{"a report":1}')
    key.verify(asyncio.run(signer.sign(message)), message)
    pem = signer.public_key_pem()
    assert serialization.load_pem_public_key(pem) == key
    # A second replica (or a restart) reads the same key: nothing is created or changed.
    again = TransitReportSigner(cp.session)
    assert again.public_key() == key and published(bao.root) == key


def test_a_key_replaced_under_a_running_signer_is_refused(bao: AuthSetup, cp: VaultTransitProvider) -> None:
    _drop(bao.root)
    signer = TransitReportSigner(cp.session)
    _drop(bao.root)
    bao.root.secrets.transit.create_key(KEY, key_type="ed25519")  # someone swapped it
    with pytest.raises(IntegrityError, match="another key"):
        asyncio.run(signer.sign(b"custos.v1.order-report\x00{}"))


SIGN_B64 = base64.b64encode(b"x").decode()
DENIED: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", f"/v1/transit/keys/{KEY}/rotate", {}),
    ("POST", f"/v1/transit/keys/{KEY}/config", {"deletion_allowed": True}),
    ("POST", f"/v1/transit/keys/{KEY}/trim", {"min_available_version": 1}),
    ("DELETE", f"/v1/transit/keys/{KEY}", None),
    ("POST", f"/v1/transit/keys/{KEY}", {"type": "aes256-gcm96"}),
    ("POST", f"/v1/transit/keys/{KEY}", {"type": "ed25519", "exportable": True}),
    ("POST", f"/v1/transit/keys/{KEY}-2", {"type": "ed25519"}),
    ("POST", f"/v1/transit/sign/{KEY}", {"input": SIGN_B64, "prehashed": True}),
    ("POST", f"/v1/transit/sign/{KEY}", {"batch_input": [{"input": SIGN_B64}]}),
    ("POST", f"/v1/transit/sign/{KEY}/sha2-512", {"input": SIGN_B64}),
    ("GET", f"/v1/transit/export/signing-key/{KEY}", None),
    ("GET", f"/v1/transit/backup/{KEY}", None),
]


@pytest.mark.parametrize("request_", DENIED, ids=lambda r: f"{r[0]} {r[1]} {sorted(r[2] or {})}")
def test_the_policy_allows_signing_with_the_report_key_and_nothing_more(bao: AuthSetup,
                                                                       request_: tuple[str, str, Any]) -> None:
    _ensure(bao.root)
    client = hvac.Client(url=bao.address, token=bao.token())
    assert client.adapter.post(f"/v1/transit/sign/{KEY}", json={"input": SIGN_B64})["data"]["signature"]
    method, path, body = request_
    with pytest.raises(hvac.exceptions.Forbidden):
        client.adapter.request(method, path, json=body)
    assert published(bao.root) is not None


def test_other_roles_may_not_sign_reports(bao: AuthSetup) -> None:
    _ensure(bao.root)
    for role in ("custos-breakglass", "custos-auditor"):
        client = hvac.Client(url=bao.address, token=bao.token(policies=(role,)))
        with pytest.raises(hvac.exceptions.Forbidden):
            client.adapter.post(f"/v1/transit/sign/{KEY}", json={"input": SIGN_B64})


@pytest.mark.parametrize("kind", ["aes256-gcm96", "derived"])
def test_a_key_that_is_not_a_report_key_is_refused(bao: AuthSetup, kind: str) -> None:
    name = f"reports-bad-{uuid.uuid4().hex[:8]}"
    if kind == "derived":
        bao.root.secrets.transit.create_key(name, key_type="ed25519", derived=True)
    else:
        bao.root.secrets.transit.create_key(name, key_type=kind)
    with VaultTransitProvider(url=bao.address, token=bao.root.token) as root_keys:
        with pytest.raises(KeyConflict, match="non-derived ed25519"):
            TransitReportSigner(root_keys.session, key=name)


BAD_TABLES: list[tuple[dict[str, Any], str]] = [
    ({"report_key": "custos-reports"}, "outside key_prefix"),
    ({"report_key": "rep-x", "key_prefix": "rep-"}, "outside key_prefix"),
    ({"report_key": 7}, "outside key_prefix"),
]


@pytest.mark.parametrize(("table", "message"), BAD_TABLES, ids=[str(t) for t, _ in BAD_TABLES])
def test_a_bad_report_key_table_is_a_clear_error(cp: VaultTransitProvider, table: dict[str, Any],
                                                 message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        open_report_signer(table, cp, None, dev=False)


def test_the_local_key_is_dev_only_and_transit_needs_the_vault_provider(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    with LocalKeyProvider(tmp_path / "k.json", dev_only=True) as local:
        with pytest.raises(InvalidInput, match="provider"):
            open_report_signer({"report_key": KEY}, local, tmp_path / "r.key", dev=True)
        assert open_report_signer({}, local, None, dev=False) is None  # no key: signed reports refused
        signer = open_report_signer({}, local, tmp_path / "r.key", dev=False)
        assert isinstance(signer, DevReportSigner) and "DEVELOPMENT ONLY" in signer.label
        assert "DEVELOPMENT ONLY" in caplog.text
        assert (tmp_path / "r.key").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "r.pub").read_bytes() == signer.public_key_pem()
        # The same file again is the same key.
        again = DevReportSigner.from_file(tmp_path / "r.key")
        assert again.key_id() == signer.key_id()
        (tmp_path / "bad.key").write_bytes(b"not a key")
        with pytest.raises(InvalidInput, match="not a PEM"):
            DevReportSigner.from_file(tmp_path / "bad.key")
