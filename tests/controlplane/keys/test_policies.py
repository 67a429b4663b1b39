"""The vault-policies/*.hcl files, loaded into a real OpenBao and exercised.

For each policy: a token holding only that policy (no ``default`` policy) does what the
role needs through the real provider, and a representative set of other requests is
denied by the server with 403.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hvac
import hvac.exceptions
import pytest

from custos.controlplane.keys import VaultTransitProvider
from custos.errors import Unauthorized
from tests import ROOT
from tests.controlplane.keys.conftest import root_client
from tests.servers.openbao import OpenBaoDevServer

POLICY_DIR = ROOT / "vault-policies"
ROLES = ("custos-controlplane", "custos-breakglass", "custos-auditor")
CTX = b"artifact:policy-test"
B64_CTX = base64.b64encode(CTX).decode()
B64_KEY = base64.b64encode(bytes(32)).decode()


@dataclass(frozen=True)
class Setup:
    server: OpenBaoDevServer
    tokens: dict[str, str]
    key: str  # a custos- key with one wrapped data key, made by root
    wrapped: str
    foreign_key: str  # a key in the same mount without the custos- prefix


@pytest.fixture(scope="module")
def setup(openbao_dev: OpenBaoDevServer) -> Iterator[Setup]:
    root = root_client(openbao_dev)
    for role in ROLES:
        root.sys.create_or_update_policy(role, (POLICY_DIR / f"{role}.hcl").read_text())
    if "transit-other/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("transit", path="transit-other")
    root.secrets.transit.create_key("custos-policy-key", key_type="aes256-gcm96")
    root.secrets.transit.create_key("custos-policy-key", mount_point="transit-other")
    root.secrets.transit.create_key("unrelated-key")
    wrapped = root.adapter.post(
        "/v1/transit/datakey/wrapped/custos-policy-key", json={"associated_data": B64_CTX}
    )["data"]["ciphertext"]
    tokens = {
        role: root.auth.token.create(policies=[role], no_default_policy=True, ttl="30m")["auth"][
            "client_token"
        ]
        for role in ROLES
    }
    yield Setup(openbao_dev, tokens, "custos-policy-key", wrapped, "unrelated-key")


def _client(setup: Setup, role: str) -> hvac.Client:
    return hvac.Client(url=setup.server.address, token=setup.tokens[role])


def _provider(setup: Setup, role: str, **kwargs: Any) -> VaultTransitProvider:
    return VaultTransitProvider(url=setup.server.address, token=setup.tokens[role], **kwargs)


def _denied(
    client: hvac.Client, method: str, path: str, body: dict[str, Any] | None = None
) -> None:
    with pytest.raises(hvac.exceptions.Forbidden):
        client.adapter.request(method, path, json=body)


# Requests no Custos role may make (the key exists and the call is otherwise valid).
COMMON_DENIED: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/transit/export/encryption-key/custos-policy-key", None),
    ("GET", "/v1/transit/export/encryption-key/custos-policy-key/1", None),
    ("GET", "/v1/transit/backup/custos-policy-key", None),
    ("POST", "/v1/transit/keys/custos-policy-key/trim", {"min_available_version": 1}),
    ("POST", "/v1/transit/keys/custos-policy-key/config", {"exportable": True}),
    ("POST", "/v1/transit/keys/custos-policy-key/config", {"allow_plaintext_backup": True}),
    ("POST", "/v1/transit/keys/custos-policy-key/import", {"ciphertext": "AAAA"}),
    ("POST", "/v1/transit/datakey/wrapped/custos-policy-key", {}),
    ("POST", "/v1/transit/rewrap/custos-policy-key", {"ciphertext": "vault:v1:AAAA"}),
    ("POST", "/v1/transit/hmac/custos-policy-key", {"input": B64_KEY}),
    ("GET", "/v1/transit/keys/unrelated-key", None),
    ("POST", "/v1/transit/decrypt/unrelated-key", {"ciphertext": "vault:v1:AAAA"}),
    ("POST", "/v1/transit/keys/unrelated-key/rotate", {}),
    ("POST", "/v1/transit/keys/other-new-key", {"type": "aes256-gcm96"}),
    ("GET", "/v1/transit-other/keys/custos-policy-key", None),
    ("POST", "/v1/transit-other/decrypt/custos-policy-key", {"ciphertext": "vault:v1:AAAA"}),
    ("GET", "/v1/secret/data/anything", None),
    ("POST", "/v1/secret/data/anything", {"data": {"a": "b"}}),
    (
        "PUT",
        "/v1/sys/policy/custos-controlplane",
        {"policy": 'path "*" { capabilities = ["sudo"] }'},
    ),
    ("PUT", "/v1/sys/policies/acl/escalate", {"policy": 'path "*" { capabilities = ["read"] }'}),
    ("POST", "/v1/sys/mounts/new-transit", {"type": "transit"}),
    ("GET", "/v1/sys/mounts", None),
    ("DELETE", "/v1/sys/mounts/transit", None),
    ("POST", "/v1/auth/token/create", {"policies": ["custos-controlplane"]}),
    ("PUT", "/v1/sys/audit/file", {"type": "file", "options": {"file_path": "/dev/null"}}),
    ("POST", "/v1/sys/seal", {}),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("request_", COMMON_DENIED, ids=lambda r: f"{r[0]} {r[1]}")
def test_no_role_can(setup: Setup, role: str, request_: tuple[str, str, Any]) -> None:
    _denied(_client(setup, role), *request_)


# -- control plane -------------------------------------------------------------------------


def test_controlplane_runs_the_whole_key_lifecycle(setup: Setup) -> None:
    with _provider(setup, "custos-controlplane") as provider:
        name = "policy-lifecycle"
        assert provider.ensure_key(name).latest_version == 1
        assert provider.ensure_key(name).latest_version == 1
        data_key = provider.generate_data_key(name, CTX)
        assert provider.unwrap(name, data_key.wrapped, CTX) == data_key.plaintext
        assert provider.rotate(name).latest_version == 2
        rewrapped = provider.rewrap(name, data_key.wrapped, CTX)
        assert rewrapped.startswith("vault:v2:")
        assert provider.suspend(name).suspended
        assert not provider.resume(name).suspended
        assert provider.unwrap(name, rewrapped, CTX) == data_key.plaintext
        provider.destroy(name)
        assert not provider.state(name).exists


def test_controlplane_unwraps_keys_made_elsewhere(setup: Setup) -> None:
    with _provider(setup, "custos-controlplane") as provider:
        assert len(provider.unwrap("policy-key", setup.wrapped, CTX)) == 32


CONTROLPLANE_DENIED: list[tuple[str, str, dict[str, Any] | None]] = [
    # Only non-derived, non-exportable aes256-gcm96 keys may be created.
    ("POST", "/v1/transit/keys/custos-new-rsa", {"type": "rsa-2048"}),
    ("POST", "/v1/transit/keys/custos-new-exp", {"type": "aes256-gcm96", "exportable": True}),
    ("POST", "/v1/transit/keys/custos-new-der", {"type": "aes256-gcm96", "derived": True}),
    # encrypt may not auto-create a key (no "create" capability on encrypt).
    ("POST", "/v1/transit/encrypt/custos-auto-created", {"plaintext": B64_KEY}),
    # Data keys and decryption take no derivation context, nonce or batch.
    ("POST", "/v1/transit/datakey/plaintext/custos-policy-key", {"nonce": "AAAAAAAAAAAAAAAA"}),
    ("POST", "/v1/transit/decrypt/custos-policy-key", {"batch_input": []}),
    ("LIST", "/v1/transit/keys", None),
    ("GET", "/v1/sys/audit", None),
]


@pytest.mark.parametrize("request_", CONTROLPLANE_DENIED, ids=lambda r: f"{r[0]} {r[1]} {r[2]}")
def test_controlplane_cannot(setup: Setup, request_: tuple[str, str, Any]) -> None:
    _denied(_client(setup, "custos-controlplane"), *request_)


def test_controlplane_cannot_use_keys_without_the_prefix(setup: Setup) -> None:
    with _provider(setup, "custos-controlplane", key_prefix="other-") as provider:
        for operation in (
            lambda: provider.ensure_key("x"),
            lambda: provider.state("x"),
            lambda: provider.generate_data_key("x", CTX),
        ):
            with pytest.raises(Unauthorized):
                operation()


# -- break-glass operator --------------------------------------------------------------------


def test_breakglass_reads_state_and_suspends_and_resumes(setup: Setup) -> None:
    root = VaultTransitProvider(url=setup.server.address, token=setup.server.root_token)
    name = "policy-breakglass"
    root.ensure_key(name)
    data_key = root.generate_data_key(name, CTX)

    with _provider(setup, "custos-breakglass") as operator:
        assert operator.state(name).exists
        assert operator.suspend(name).suspended
        assert root.state(name).suspended
        with pytest.raises(Unauthorized):
            operator.unwrap(name, data_key.wrapped, CTX)
        assert not operator.resume(name).suspended
        for operation in (
            lambda: operator.unwrap(name, data_key.wrapped, CTX),
            lambda: operator.generate_data_key(name, CTX),
            lambda: operator.rewrap(name, data_key.wrapped, CTX),
            lambda: operator.destroy(name),
            lambda: operator.ensure_key("policy-breakglass-new"),
        ):
            with pytest.raises(Unauthorized):
                operation()
    assert root.state(name).exists
    assert root.unwrap(name, data_key.wrapped, CTX) == data_key.plaintext
    root.close()


BREAKGLASS_DENIED: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/transit/decrypt/custos-policy-key", {"ciphertext": "vault:v1:AAAA"}),
    ("POST", "/v1/transit/datakey/plaintext/custos-policy-key", {}),
    ("POST", "/v1/transit/encrypt/custos-policy-key", {"plaintext": B64_KEY}),
    ("POST", "/v1/transit/keys/custos-policy-key/config", {"deletion_allowed": True}),
    ("DELETE", "/v1/transit/keys/custos-policy-key", None),
    ("DELETE", "/v1/transit/keys/custos-policy-key/soft-delete", None),
    ("POST", "/v1/transit/keys/custos-breakglass-new", {"type": "aes256-gcm96"}),
    ("LIST", "/v1/transit/keys", None),
]


@pytest.mark.parametrize("request_", BREAKGLASS_DENIED, ids=lambda r: f"{r[0]} {r[1]} {r[2]}")
def test_breakglass_cannot(setup: Setup, request_: tuple[str, str, Any]) -> None:
    _denied(_client(setup, "custos-breakglass"), *request_)


# -- auditor -----------------------------------------------------------------------------------


def test_auditor_reads_key_metadata_and_audit_devices(setup: Setup) -> None:
    client = _client(setup, "custos-auditor")
    key = client.secrets.transit.read_key(setup.key)["data"]
    assert key["type"] == "aes256-gcm96"
    assert "keys" in key  # version -> creation time; no key material is ever returned
    names = client.secrets.transit.list_keys()["data"]["keys"]
    assert setup.key in names
    assert isinstance(client.sys.list_enabled_audit_devices()["data"], dict)
    with _provider(setup, "custos-auditor") as provider:
        assert provider.state("policy-key").latest_version >= 1


AUDITOR_DENIED: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/transit/decrypt/custos-policy-key", {"ciphertext": "vault:v1:AAAA"}),
    ("POST", "/v1/transit/datakey/plaintext/custos-policy-key", {}),
    ("POST", "/v1/transit/encrypt/custos-policy-key", {"plaintext": B64_KEY}),
    ("POST", "/v1/transit/keys/custos-policy-key/rotate", {}),
    ("POST", "/v1/transit/keys/custos-policy-key/config", {"min_decryption_version": 1}),
    ("DELETE", "/v1/transit/keys/custos-policy-key", None),
    ("POST", "/v1/transit/keys/custos-auditor-new", {"type": "aes256-gcm96"}),
    ("DELETE", "/v1/sys/audit/file", None),
]


@pytest.mark.parametrize("request_", AUDITOR_DENIED, ids=lambda r: f"{r[0]} {r[1]} {r[2]}")
def test_auditor_cannot(setup: Setup, request_: tuple[str, str, Any]) -> None:
    _denied(_client(setup, "custos-auditor"), *request_)


def test_auditor_cannot_unwrap_or_suspend(setup: Setup) -> None:
    with _provider(setup, "custos-auditor") as provider:
        for operation in (
            lambda: provider.unwrap("policy-key", setup.wrapped, CTX),
            lambda: provider.suspend("policy-key"),
            lambda: provider.generate_data_key("policy-key", CTX),
        ):
            with pytest.raises(Unauthorized):
                operation()


def test_a_bad_token_is_unauthorized(setup: Setup) -> None:
    with VaultTransitProvider(url=setup.server.address, token="not-a-token") as provider:
        with pytest.raises(Unauthorized):
            provider.state("policy-key")
