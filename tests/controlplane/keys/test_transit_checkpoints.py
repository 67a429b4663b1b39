"""Audit checkpoints signed by an ed25519 key in OpenBao Transit, verified with the key
Transit publishes — and what happens when Transit dies (kill -9) with changes still coming.

The published key is made the way docs/audit.md tells an operator to: read
``transit/keys/audit-checkpoints``, take the raw public key of the signing version, write
it as a PEM. Nothing here trusts the control plane's word for its own key.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prometheus_client import CollectorRegistry, generate_latest

from custos.controlplane.audit import SYSTEM, AuditLog, LocalCheckpointSigner
from custos.controlplane.keys import KeyConflict, LocalKeyProvider, VaultTransitProvider
from custos.controlplane.keys.health import KeyHealthCollector
from custos.controlplane.keys.transit_signer import TransitCheckpointSigner, public_key_pem
from custos.controlplane.keys.vault_auth import TokenFileAuth
from custos.controlplane.server import open_checkpoint_signer
from custos.controlplane.store.sqlite import SQLiteStore
from custos.core.audit_chain import CheckpointPolicy, sign_checkpoint, verify_log
from custos.core.canonical import decode_canonical
from custos.errors import BackendUnavailable, IntegrityError, InvalidInput, Unauthorized
from tests.controlplane.keys.vault_setup import AuthSetup, Raft, prepare, start_raft, wait_until
from tests.servers.openbao import OpenBaoDevServer

pytestmark = pytest.mark.backend

KEY = "audit-checkpoints"
POLICY = CheckpointPolicy(max_events=5, max_age_s=300)


def published_key(root: hvac.Client, name: str = KEY, version: int | None = None) -> Ed25519PublicKey:
    """What an operator publishes (docs/audit.md): Transit's raw public key of the version, as a key."""
    data = root.secrets.transit.read_key(name)["data"]
    raw = base64.b64decode(data["keys"][str(version or data["latest_version"])]["public_key"])
    pem = public_key_pem(Ed25519PublicKey.from_public_bytes(raw))  # what `--key FILE` reads
    key = serialization.load_pem_public_key(pem)
    assert isinstance(key, Ed25519PublicKey)
    return key


async def log_of(audit: AuditLog) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    return await audit.stored_events(), [(b, s) for _, b, s in await audit.checkpoints()]


async def grow(audit: AuditLog, n: int) -> None:
    for i in range(n):
        await audit.record(SYSTEM, "Test", f"thing/{i}", "ok")


@pytest.fixture(scope="module")
def bao(openbao_dev: OpenBaoDevServer, tmp_path_factory: pytest.TempPathFactory) -> AuthSetup:
    setup = prepare(openbao_dev.address, openbao_dev.root_token, tmp_path_factory.mktemp("ckpt"),
                    ttl="60s", max_ttl="120s", role="ckpt-tests")
    setup.root.secrets.transit.create_key(KEY, key_type="ed25519")
    return setup


@pytest.fixture
def cp_provider(bao: AuthSetup, monkeypatch: pytest.MonkeyPatch) -> Iterator[VaultTransitProvider]:
    """A provider logged in by AppRole with only the control-plane policy."""
    provider = bao.provider("approle", monkeypatch)
    yield provider
    provider.close()


async def test_transit_signed_checkpoints_verify_with_the_published_key(
        bao: AuthSetup, cp_provider: VaultTransitProvider, tmp_path: Path) -> None:
    audit = AuditLog(SQLiteStore(tmp_path / "db"), TransitCheckpointSigner(cp_provider.session), policy=POLICY)
    await grow(audit, 23)
    assert await audit.checkpoint() == 23
    events, checkpoints = await log_of(audit)
    assert len(checkpoints) >= 5  # one at least every 5 events, each signed in Transit
    published = published_key(bao.root)
    assert verify_log(events, checkpoints, published)
    assert not verify_log(events, checkpoints, Ed25519PrivateKey.generate().public_key())
    assert audit.public_key_raw == published.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


async def test_a_local_signer_signs_exactly_what_the_core_signs(tmp_path: Path) -> None:
    """The body the audit log builds for any signer is the core's checkpoint body, byte for byte."""
    private = Ed25519PrivateKey.generate()
    audit = AuditLog(SQLiteStore(tmp_path / "db"), LocalCheckpointSigner(private), policy=POLICY)
    await grow(audit, 12)
    await audit.checkpoint()
    for _, body, signature in await audit.checkpoints():
        fields = decode_canonical(body)
        assert sign_checkpoint(private, seq=fields["seq"], head_hash=fields["hash"], time_ns=fields["time_ns"],
                               prev_seq=fields["prev_seq"], prev=fields["prev"]) == (body, signature)


async def test_the_published_key_survives_a_rotation_of_the_transit_key(bao: AuthSetup, tmp_path: Path) -> None:
    name = f"audit-rot-{uuid.uuid4().hex[:8]}"  # a key of its own (root session: the policy names one key)
    bao.root.secrets.transit.create_key(name, key_type="ed25519")
    published = published_key(bao.root, name)
    root_keys = VaultTransitProvider(url=bao.address, token=bao.root.token)
    signer = TransitCheckpointSigner(root_keys.session, key=name, pinned=published)
    audit = AuditLog(SQLiteStore(tmp_path / "db"), signer, policy=POLICY)
    await grow(audit, 6)
    bao.root.secrets.transit.rotate_key(name)  # an operator rotates it under the running control plane
    await grow(audit, 6)
    await audit.checkpoint()
    assert verify_log(*await log_of(audit), published)  # still the version the published key names
    # A restart that would now sign with the new version is refused, not silently re-keyed.
    with pytest.raises(IntegrityError, match="not the pinned"):
        TransitCheckpointSigner(root_keys.session, key=name, pinned=published)
    TransitCheckpointSigner(root_keys.session, key=name, pinned=published, key_version=1)
    root_keys.close()


# -- a checkpoint key that is not one: refused at start, clearly ------------------------------


def _aes(root: hvac.Client, name: str) -> dict[str, Any]:
    root.secrets.transit.create_key(name, key_type="aes256-gcm96")
    return {}


def _derived(root: hvac.Client, name: str) -> dict[str, Any]:
    root.secrets.transit.create_key(name, key_type="ed25519", derived=True)
    return {}


def _missing(root: hvac.Client, name: str) -> dict[str, Any]:
    return {}


def _other_pinned(root: hvac.Client, name: str) -> dict[str, Any]:
    root.secrets.transit.create_key(name, key_type="ed25519")
    return {"pinned": Ed25519PrivateKey.generate().public_key()}


MISUSES: list[tuple[Callable[[hvac.Client, str], dict[str, Any]], type[Exception], str]] = [
    (_aes, KeyConflict, "non-derived ed25519"),
    (_derived, KeyConflict, "derived"),
    (_missing, KeyConflict, "create it"),
    (_other_pinned, IntegrityError, "not the pinned"),
]


@pytest.mark.parametrize(("make", "error", "message"), MISUSES, ids=[m.__name__.strip("_") for m, _, _ in MISUSES])
def test_a_key_that_is_not_a_checkpoint_key_is_refused(bao: AuthSetup, make: Callable[[hvac.Client, str], Any],
                                                       error: type[Exception], message: str) -> None:
    name = f"audit-bad-{uuid.uuid4().hex[:8]}"
    extra = make(bao.root, name)
    with VaultTransitProvider(url=bao.address, token=bao.root.token) as root_keys:
        with pytest.raises(error, match=message):
            TransitCheckpointSigner(root_keys.session, key=name, **extra)


BAD_SIGNER_TABLES: list[tuple[dict[str, Any], str]] = [
    ({"checkpoint_key": "custos-audit"}, "outside key_prefix"),
    ({"checkpoint_key": "audit-x", "key_prefix": "audit-"}, "outside key_prefix"),
    ({"checkpoint_key": 7}, "outside key_prefix"),
    ({"checkpoint_key": "audit-checkpoints", "checkpoint_public_key_file": "/nonexistent/pub.pem"}, "cannot read"),
]


@pytest.mark.parametrize(("table", "message"), BAD_SIGNER_TABLES, ids=[m for _, m in BAD_SIGNER_TABLES])
def test_a_bad_checkpoint_table_is_a_clear_error(bao: AuthSetup, cp_provider: VaultTransitProvider,
                                                 table: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=message):
        open_checkpoint_signer(table, cp_provider, None, dev=False)


def test_the_checkpoint_key_needs_the_vault_provider(tmp_path: Path) -> None:
    with LocalKeyProvider(tmp_path / "k.json", dev_only=True) as local:
        with pytest.raises(InvalidInput, match="provider"):
            open_checkpoint_signer({"checkpoint_key": KEY}, local, tmp_path / "a.key", dev=True)
        assert isinstance(open_checkpoint_signer({}, local, tmp_path / "a.key", dev=True), LocalCheckpointSigner)


def test_a_pinned_key_file_that_is_not_ed25519_is_refused(cp_provider: VaultTransitProvider, tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for content in (pem, b"not a key"):
        (tmp_path / "pub.pem").write_bytes(content)
        with pytest.raises(InvalidInput, match="not an Ed25519"):
            open_checkpoint_signer({"checkpoint_key": KEY, "checkpoint_public_key_file": str(tmp_path / "pub.pem")},
                                   cp_provider, None, dev=False)


# -- the policy: sign with that key, nothing more ------------------------------------------

SIGN_B64 = base64.b64encode(b"x").decode()
CP_DENIED: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", f"/v1/transit/keys/{KEY}/rotate", {}),
    ("POST", f"/v1/transit/keys/{KEY}/config", {"deletion_allowed": True}),
    ("DELETE", f"/v1/transit/keys/{KEY}", None),
    ("POST", f"/v1/transit/keys/{KEY}", {"type": "ed25519"}),
    ("POST", f"/v1/transit/sign/{KEY}", {"input": SIGN_B64, "prehashed": True}),
    ("POST", f"/v1/transit/sign/{KEY}", {"batch_input": [{"input": SIGN_B64}]}),
    ("POST", f"/v1/transit/sign/{KEY}/sha2-512", {"input": SIGN_B64}),
    ("POST", f"/v1/transit/verify/{KEY}", {"input": SIGN_B64, "signature": "vault:v1:AAAA"}),
    ("GET", f"/v1/transit/export/signing-key/{KEY}", None),
    ("GET", f"/v1/transit/backup/{KEY}", None),
    ("POST", "/v1/transit/sign/custos-anything", {"input": SIGN_B64}),
    ("POST", "/v1/transit/sign/other-key", {"input": SIGN_B64}),
]


@pytest.mark.parametrize("request_", CP_DENIED, ids=lambda r: f"{r[0]} {r[1]} {sorted(r[2] or {})}")
def test_the_control_plane_may_only_sign_with_the_checkpoint_key(bao: AuthSetup,
                                                                 request_: tuple[str, str, Any]) -> None:
    client = hvac.Client(url=bao.address, token=bao.token())
    assert client.adapter.post(f"/v1/transit/sign/{KEY}", json={"input": SIGN_B64})["data"]["signature"]
    method, path, body = request_
    with pytest.raises(hvac.exceptions.Forbidden):
        client.adapter.request(method, path, json=body)


def test_other_roles_may_not_sign_checkpoints_and_the_auditor_reads_the_key(bao: AuthSetup) -> None:
    for role in ("custos-breakglass", "custos-auditor"):
        client = hvac.Client(url=bao.address, token=bao.token(policies=(role,)))
        with pytest.raises(hvac.exceptions.Forbidden):
            client.adapter.post(f"/v1/transit/sign/{KEY}", json={"input": SIGN_B64})
    auditor = hvac.Client(url=bao.address, token=bao.token(policies=("custos-auditor",)))
    assert auditor.secrets.transit.read_key(KEY)["data"]["type"] == "ed25519"


# -- Transit killed with changes still coming ------------------------------------------------


@pytest.fixture(scope="module")
def raft(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Raft]:
    raft = start_raft(tmp_path_factory.mktemp("ckpt-raft"))
    try:
        yield raft
    finally:
        raft.server.stop()


@pytest.mark.slow
async def test_with_transit_killed_changes_are_recorded_and_a_checkpoint_covers_them_later(
        raft: Raft, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup = prepare(raft.server.address, raft.root_token, tmp_path / "auth", ttl="30s", max_ttl="60s")
    setup.root.secrets.transit.create_key(KEY, key_type="ed25519")
    published = published_key(setup.root)
    provider = setup.provider("approle", monkeypatch)
    try:
        provider.ensure_key("outage-model")
        audit = AuditLog(SQLiteStore(tmp_path / "db"), TransitCheckpointSigner(provider.session), policy=POLICY)
        await grow(audit, 3)
        assert await audit.checkpoint() == 3
        assert provider.health().ok
        metrics = CollectorRegistry()
        metrics.register(KeyHealthCollector(provider))
        assert 'custos_keys_ready{provider="vault"} 1.0' in generate_latest(metrics).decode()

        raft.kill()
        wait_until("not ready", lambda: not provider.health().ok)
        assert "unreachable" in provider.health().detail
        assert 'custos_keys_ready{provider="vault"} 0.0' in generate_latest(metrics).decode()
        with pytest.raises(BackendUnavailable):
            provider.suspend("outage-model")  # a clear error, not a hang or a raw exception
        await grow(audit, 12)  # past max_events: recorded all the same
        with pytest.raises(BackendUnavailable):
            await audit.checkpoint()
        events, _ = await log_of(audit)
        assert len(events) == 15

        raft.restart()
        wait_until("ready again", lambda: provider.health().ok, timeout=60)
        assert 'custos_keys_ready{provider="vault"} 1.0' in generate_latest(metrics).decode()
        assert await audit.checkpoint() == 15
        assert verify_log(*await log_of(audit), published)
        assert provider.suspend("outage-model").suspended
    finally:
        provider.close()


def test_a_checkpoint_signer_waits_for_a_session_without_a_token(bao: AuthSetup, tmp_path: Path) -> None:
    """An Agent's token file not written yet at start: the signer is made, and signs once it is."""
    token_file = tmp_path / "token"
    with VaultTransitProvider(url=bao.address, auth=TokenFileAuth(token_file)) as keys:
        signer = TransitCheckpointSigner(keys.session)
        with pytest.raises(BackendUnavailable):
            signer.public_key()
        token_file.write_text(bao.token())
        assert signer.load() == published_key(bao.root)
        with pytest.raises(Unauthorized):
            TransitCheckpointSigner(keys.session, key="audit-not-granted").load()
