"""Vault auth that lasts, against a real OpenBao: every way of logging in, and the attacks of
a bad day on the token — revoked, rotated under the control plane by an Agent or the kubelet,
refused — with a key change (what a halt does) right after each.

The line each test holds: a key change either works with a fresh token, or fails with a
clear Custos error while ``health()`` (what ``/readyz`` serves) says why. Never a silent
success that changed nothing, never a raw hvac exception.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custos.controlplane.keys import VaultTransitProvider
from custos.controlplane.keys.vault_session import VaultSession
from custos.controlplane.server import open_key_provider
from custos.errors import CustosError, FailedPrecondition, InvalidInput, Unauthorized
from tests.controlplane.keys.vault_setup import CP, METHODS, ROLES, AuthSetup, prepare, write_secret
from tests.servers.openbao import JwtIssuer, OpenBaoDevServer
from tests.servers.ports import free_port

pytestmark = pytest.mark.backend


@pytest.fixture(scope="module")
def bao(openbao_dev: OpenBaoDevServer, tmp_path_factory: pytest.TempPathFactory) -> AuthSetup:
    return prepare(openbao_dev.address, openbao_dev.root_token, tmp_path_factory.mktemp("auth"),
                   ttl="60s", max_ttl="120s", role="auth-tests")


@pytest.fixture
def key() -> str:
    return f"auth-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def open_provider(bao: AuthSetup, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., VaultTransitProvider]]:
    made: list[VaultTransitProvider] = []

    def make(method: str, table: dict[str, Any] | None = None) -> VaultTransitProvider:
        provider = open_key_provider(table) if table else bao.provider(method, monkeypatch)
        assert isinstance(provider, VaultTransitProvider)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


def current_token(provider: VaultTransitProvider) -> str:
    return str(provider.session.client().token)


def halt_works(provider: VaultTransitProvider, key: str) -> None:
    assert provider.suspend(key).suspended
    assert not provider.resume(key).suspended


@pytest.mark.parametrize("method", METHODS)
def test_each_auth_method_logs_in_and_changes_keys(open_provider: Callable[..., VaultTransitProvider],
                                                   method: str, key: str) -> None:
    provider = open_provider(method)
    assert provider.ensure_key(key).exists
    halt_works(provider, key)
    health = provider.health()
    assert health.ok and method in health.detail and health.token_ttl_s is not None
    assert provider.ready()


# -- a token that dies under the control plane, and how each method gets a new one ------------


def _revoke(bao: AuthSetup, provider: VaultTransitProvider, *_: Any) -> None:
    bao.revoke(current_token(provider))


def _agent_rewrites_token_file(bao: AuthSetup, provider: VaultTransitProvider, table: dict[str, Any]) -> None:
    old = current_token(provider)
    write_secret(Path(table["token_file"]), bao.token())
    bao.revoke(old)


def _kubelet_rotates_jwt(bao: AuthSetup, provider: VaultTransitProvider, table: dict[str, Any]) -> None:
    # The JWT the control plane first logged in with is no longer accepted (another issuer key
    # would be refused); only the new file's JWT logs in.
    write_secret(Path(table["jwt_file"]), bao.jwt())
    bao.revoke(current_token(provider))


def _secret_id_rotated(bao: AuthSetup, provider: VaultTransitProvider, table: dict[str, Any]) -> None:
    old_secret = Path(table["secret_id_file"]).read_text()
    write_secret(Path(table["secret_id_file"]), bao.secret_id())
    bao.root.auth.approle.destroy_secret_id(bao.role, old_secret)
    bao.revoke(current_token(provider))


DEATHS = [
    ("approle", _revoke),
    ("jwt", _revoke),
    ("approle", _secret_id_rotated),
    ("jwt", _kubelet_rotates_jwt),
    ("token_file", _agent_rewrites_token_file),
]


@pytest.mark.parametrize(("method", "death"), DEATHS, ids=[f"{m}-{d.__name__.strip('_')}" for m, d in DEATHS])
def test_a_dead_token_is_replaced_before_the_next_key_change(
        bao: AuthSetup, monkeypatch: pytest.MonkeyPatch, open_provider: Callable[..., VaultTransitProvider],
        method: str, death: Callable[..., None], key: str) -> None:
    table = bao.keys_table(method, monkeypatch)
    provider = open_provider(method, table)
    provider.ensure_key(key)
    before = current_token(provider)
    death(bao, provider, table)
    halt_works(provider, key)  # the very next request, not after a background round
    assert current_token(provider) != before
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=bao.address, token=before).auth.token.lookup_self()
    assert provider.health().ok


# -- a token that cannot be had: a clear error, and not ready ---------------------------------


def _static_revoked(bao: AuthSetup, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    table = bao.keys_table("token", monkeypatch)
    return table


def _wrong_secret_id(bao: AuthSetup, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    table = bao.keys_table("approle", monkeypatch)
    write_secret(Path(table["secret_id_file"]), str(uuid.uuid4()))
    return table


def _jwt_of_another_issuer(bao: AuthSetup, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    table = bao.keys_table("jwt", monkeypatch)
    write_secret(Path(table["jwt_file"]), JwtIssuer(issuer=bao.issuer.issuer).token("system:serviceaccount:x:y"))
    return table


def _missing_token_file(bao: AuthSetup, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return {**bao.keys_table("token_file", monkeypatch), "token_file": str(bao.workdir / "no-such-token")}


def _token_without_policy(bao: AuthSetup, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    table = bao.keys_table("token_file", monkeypatch)
    write_secret(Path(table["token_file"]), str(uuid.uuid4()))  # not a token Vault ever issued
    return table


def _auth_not_mounted(bao: AuthSetup, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return {**bao.keys_table("approle", monkeypatch), "auth_mount": "approle-nowhere"}


REFUSALS = [_static_revoked, _wrong_secret_id, _jwt_of_another_issuer, _missing_token_file,
            _token_without_policy, _auth_not_mounted]


@pytest.mark.parametrize("refusal", REFUSALS, ids=[r.__name__.strip("_") for r in REFUSALS])
def test_a_token_that_cannot_be_had_fails_loudly(
        bao: AuthSetup, monkeypatch: pytest.MonkeyPatch, open_provider: Callable[..., VaultTransitProvider],
        refusal: Callable[..., dict[str, Any]], key: str) -> None:
    bao.root.secrets.transit.create_key(f"custos-{key}")
    table = refusal(bao, monkeypatch)
    provider = open_provider(table.get("auth", "token_file"), table)
    if refusal is _static_revoked:
        provider.ensure_key(key)
        bao.revoke(current_token(provider))
    with pytest.raises((Unauthorized, FailedPrecondition)) as caught:
        provider.suspend(key)
    assert any(word in str(caught.value) for word in ("Vault", "Transit"))
    health = provider.health()
    assert not health.ok and not provider.ready()
    assert health.detail and "Traceback" not in health.detail
    # Nothing changed behind the error.
    assert bao.root.secrets.transit.read_key(f"custos-{key}")["data"]["min_encryption_version"] == 0


def test_tokens_of_each_role_may_keep_themselves_alive(bao: AuthSetup) -> None:
    """Every role's policy lets its token read its TTL and renew itself (what the session needs)."""
    for role in ROLES:
        client = hvac.Client(url=bao.address, token=bao.token(policies=(role,)))
        assert client.auth.token.lookup_self()["data"]["policies"] == [role]
        assert client.auth.token.renew_self()["auth"]["lease_duration"] > 0
        with pytest.raises(hvac.exceptions.Forbidden):
            client.auth.token.create(policies=[role])


# -- configuration: bad [keys] tables are clear errors ----------------------------------------

BAD_TABLES: list[tuple[dict[str, Any], str]] = [
    ({"auth": "kerberos"}, "auth must be one of"),
    ({"auth": "approle"}, "role_id"),
    ({"auth": "approle", "role_id": "r", "role_id_file": "/f"}, "exactly one of role_id and role_id_file"),
    ({"auth": "approle", "role_id": " r"}, "role_id"),
    ({"auth": "approle", "role_id": "r", "auth_mount": "../sys"}, "auth_mount"),
    ({"auth": "approle", "role_id": "r", "jwt_file": "/f"}, "jwt_file do(es) not apply"),
    ({"auth": "jwt", "role": "r"}, "role and jwt_file"),
    ({"auth": "jwt", "jwt_file": "/f"}, "role and jwt_file"),
    ({"auth": "jwt", "role": "r", "jwt_file": "/f", "secret_id_file": "/s"}, "secret_id_file do(es) not apply"),
    ({"auth": "token_file"}, "needs token_file"),
    ({"auth": "token", "token_file": "/f"}, "token_file do(es) not apply"),
    ({"auth": "token_file", "token_file": "/f", "health_interval": 0}, "health_interval"),
    ({"auth": "token_file", "token_file": "/f", "health_interval": "5"}, "health_interval"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_TABLES, ids=[m for _, m in BAD_TABLES])
def test_a_bad_keys_table_is_a_clear_error(extra: dict[str, Any], message: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUSTOS_VAULT_TOKEN", raising=False)
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_key_provider({"provider": "vault", "url": f"http://127.0.0.1:{free_port()}", **extra})


_FIELDS = ["auth", "token_file", "role_id", "role_id_file", "secret_id_file", "role", "jwt_file", "auth_mount",
           "health_interval", "mount", "key_prefix", "verify"]
_VALUES = st.one_of(st.sampled_from(["token", "token_file", "approle", "jwt", "", " ", "transit", "x/y", "../z"]),
                    st.text(max_size=8), st.integers(-2, 400), st.booleans(), st.floats(allow_nan=True),
                    st.none(), st.lists(st.text(max_size=2), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=6))
def test_any_keys_table_gives_a_lasting_session_or_a_clear_error(table: dict[str, Any], tmp_path: Path) -> None:
    """Whatever the table, open_key_provider returns a provider whose session uses the auth
    method the table names (or its default), or raises InvalidInput — never another error."""
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: no request leaves the machine
    try:
        provider = open_key_provider({"provider": "vault", "url": closed, **table})
    except InvalidInput as exc:
        assert str(exc)
        return
    try:
        assert isinstance(provider, VaultTransitProvider) and isinstance(provider.session, VaultSession)
        default = "token_file" if table.get("token_file") else "token"
        assert provider.session.auth.method == table.get("auth", default)
        with pytest.raises(CustosError):  # unreachable or unauthenticated, said as a Custos error
            provider.state("k")
        assert not provider.health().ok
    finally:
        provider.close()


def test_the_control_plane_policy_is_what_logs_in(bao: AuthSetup, open_provider: Callable[..., VaultTransitProvider],
                                                  key: str) -> None:
    """AppRole and JWT tokens carry the control-plane policy and nothing else (no default policy)."""
    for method in ("approle", "jwt"):
        provider = open_provider(method)
        provider.ensure_key(key)
        looked = hvac.Client(url=bao.address, token=current_token(provider)).auth.token.lookup_self()["data"]
        assert looked["policies"] == [CP]
