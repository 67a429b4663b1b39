"""OpenBao set up as production runs it for the control plane: the repository's policies, a
token with only the control-plane policy, AppRole and JWT auth — each issuing tokens with a
short TTL — and the ``[keys]`` tables that point a control plane at each of them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest

from custos.controlplane.keys import VaultTransitProvider
from custos.controlplane.server import open_key_provider
from tests import ROOT
from tests.controlplane.keys.conftest import require_bao
from tests.servers.openbao import JwtIssuer, OpenBaoRaftServer, RaftInit, load_policies, setup_approle, setup_jwt

POLICY_DIR = ROOT / "vault-policies"
ROLES = ("custos-controlplane", "custos-breakglass", "custos-auditor")
CP = "custos-controlplane"
SUBJECT = "system:serviceaccount:custos:controlplane"
METHODS = ("token", "token_file", "approle", "jwt")


def write_secret(path: Path, text: str) -> Path:
    """Replace ``path`` atomically (rename), as Vault Agent and the kubelet do."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


@dataclass
class AuthSetup:
    """One OpenBao with the policies loaded and auth roles issuing ``ttl`` / ``max_ttl`` tokens."""

    address: str
    root: hvac.Client
    workdir: Path
    issuer: JwtIssuer
    role: str
    role_id: str
    ttl: str
    max_ttl: str

    def token(self, *, ttl: str | None = None, policies: tuple[str, ...] = (CP,)) -> str:
        """A renewable token with only ``policies`` (no default policy)."""
        answer = self.root.auth.token.create(policies=list(policies), no_default_policy=True, ttl=ttl or self.ttl,
                                             renewable=True)
        return str(answer["auth"]["client_token"])

    def secret_id(self) -> str:
        return str(self.root.auth.approle.generate_secret_id(self.role)["data"]["secret_id"])

    def jwt(self, lifetime_s: int = 600) -> str:
        return self.issuer.token(SUBJECT, lifetime_s=lifetime_s)

    def keys_table(self, method: str, monkeypatch: pytest.MonkeyPatch, name: str = "") -> dict[str, Any]:
        """The ``[keys]`` table of a control plane authenticating with ``method`` (files under workdir)."""
        base: dict[str, Any] = {"provider": "vault", "url": self.address, "health_interval": 1}
        tag = f"{method}-{name or time.monotonic_ns()}"
        if method == "token":
            monkeypatch.setenv("CUSTOS_VAULT_TOKEN", self.token())
            return {**base, "auth": "token"}
        if method == "token_file":
            return {**base, "token_file": str(write_secret(self.workdir / f"{tag}.token", self.token()))}
        if method == "approle":
            sid = write_secret(self.workdir / f"{tag}.secret-id", self.secret_id())
            return {**base, "auth": "approle", "role_id": self.role_id, "secret_id_file": str(sid)}
        assert method == "jwt"
        jwt = write_secret(self.workdir / f"{tag}.jwt", self.jwt())
        return {**base, "auth": "jwt", "role": self.role, "jwt_file": str(jwt)}

    def provider(self, method: str, monkeypatch: pytest.MonkeyPatch, name: str = "") -> VaultTransitProvider:
        provider = open_key_provider(self.keys_table(method, monkeypatch, name))
        assert isinstance(provider, VaultTransitProvider)
        return provider

    def revoke(self, token: str) -> None:
        self.root.auth.token.revoke(token)


def prepare(address: str, root_token: str, workdir: Path, *, ttl: str, max_ttl: str,
            role: str = "controlplane") -> AuthSetup:
    """Load the policies and create the AppRole and JWT roles ``role`` (idempotent)."""
    root = hvac.Client(url=address, token=root_token)
    load_policies(root, POLICY_DIR, ROLES)
    if "transit/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("transit", path="transit")
    role_id, _ = setup_approle(root, role=role, policies=[CP], token_ttl=ttl, token_max_ttl=max_ttl)
    issuer = JwtIssuer()
    setup_jwt(root, issuer, role=role, subject=SUBJECT, policies=[CP], token_ttl=ttl, token_max_ttl=max_ttl)
    workdir.mkdir(parents=True, exist_ok=True)
    return AuthSetup(address, root, workdir, issuer, role, role_id, ttl, max_ttl)


def wait_until(what: str, predicate: Callable[[], object], timeout: float = 60.0, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


@dataclass
class Raft:
    """A production-shaped OpenBao (raft storage, Shamir unseal) that a test can kill -9 and bring back."""

    server: OpenBaoRaftServer
    init: RaftInit

    @property
    def root_token(self) -> str:
        return self.init.root_token

    def kill(self) -> None:
        self.server.kill()

    def restart(self) -> None:
        """Start it again on the same ports and unseal it, as an operator would."""
        self.server.start()
        self.server.unseal(self.init.keys[:3])
        self.server.wait_active()


def start_raft(workdir: Path) -> Raft:
    """A fresh raft OpenBao, initialised, unsealed, with Transit at ``transit``."""
    server = OpenBaoRaftServer(workdir, binary=require_bao())
    server.start()
    init = server.initialize(shares=5, threshold=3)
    server.unseal(init.keys[:3])
    server.wait_active()
    hvac.Client(url=server.address, token=init.root_token).sys.enable_secrets_engine("transit", path="transit")
    return Raft(server, init)
