"""Tokens with a 10-second TTL and a 20-second max TTL, and a halt 30 seconds after start.

By then every first token is dead: renewable ones were renewed (or, past their max TTL,
replaced by a new login), a token file was re-read. A control plane that read its token
once would suspend nothing — the halt would be recorded and the model's Transit key left
usable. Everything starts at once and waits out the same 30 seconds.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.controlplane.keys import VaultTransitProvider
from custos.controlplane.keys.transit_signer import public_key_pem
from tests.controlplane.keys.test_transit_checkpoints import KEY, published_key
from tests.controlplane.keys.vault_setup import METHODS, AuthSetup, prepare, wait_until
from tests.servers.custos import DevServer
from tests.servers.openbao import OpenBaoDevServer

pytestmark = [pytest.mark.backend, pytest.mark.slow]

LIFETIME_S = 30.0
MODEL = "ttl-model"


@dataclass
class Started:
    t0: float
    bao: AuthSetup
    providers: dict[str, VaultTransitProvider]
    first_tokens: dict[str, str]
    server: DevServer
    workdir: Path

    def wait_out(self) -> None:
        """Sleep until LIFETIME_S after everything started (waiting, not a timing assert)."""
        time.sleep(max(0.0, self.t0 + LIFETIME_S - time.monotonic()))


@pytest.fixture(scope="module")
def started(openbao_dev: OpenBaoDevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    d = tmp_path_factory.mktemp("lifetime")
    bao = prepare(openbao_dev.address, openbao_dev.root_token, d / "auth", ttl="10s", max_ttl="20s",
                  role="lifetime")
    bao.root.secrets.transit.create_key(KEY, key_type="ed25519")  # a no-op if another module made it
    monkeypatch = pytest.MonkeyPatch()
    t0 = time.monotonic()
    providers = {m: bao.provider(m, monkeypatch, name="lifetime") for m in METHODS}
    monkeypatch.undo()
    for provider in providers.values():
        provider.ensure_key("lifetime")
    first = {m: str(p.session.client().token) for m, p in providers.items()}

    sid = d / "secret-id"
    sid.write_text(bao.secret_id())
    cfg = d / "cp.toml"
    cfg.write_text(f"""
[audit]
checkpoint_interval = 2
[keys]
provider = "vault"
url = "{bao.address}"
auth = "approle"
role_id = "{bao.role_id}"
secret_id_file = "{sid}"
health_interval = 1
checkpoint_key = "{KEY}"
""")
    server = DevServer(d / "cp", extra=["--config", str(cfg)]).start()
    try:
        server.cli("model", "register", MODEL, "--training-flops", "3e26", check=True)
        weights = d / "weights"
        weights.mkdir()
        (weights / "model.safetensors").write_bytes(random.Random(7).randbytes(1 << 16))
        server.cli("push", MODEL, str(weights), "--state-dir", str(d / "push-state"), check=True)
        yield Started(t0, bao, providers, first, server, d)
    finally:
        server.stop()
        for provider in providers.values():
            provider.close()


@pytest.mark.parametrize("method", METHODS)
def test_every_auth_method_still_suspends_keys_three_ttls_later(started: Started, method: str) -> None:
    started.wait_out()
    provider = started.providers[method]
    assert provider.suspend("lifetime").suspended
    assert not provider.resume("lifetime").suspended
    assert provider.health().ok, provider.health().detail
    if method in ("approle", "jwt"):
        # Past the 20-second max TTL: only a new login can have kept it working.
        assert provider.session.client().token != started.first_tokens[method]


def test_a_halt_thirty_seconds_after_start_suspends_the_key(started: Started) -> None:
    started.wait_out()
    server = started.server
    oid = server.propose("halt", MODEL)
    server.sign(oid, 1, 2, 3)
    root = VaultTransitProvider(url=started.bao.address, token=started.bao.root.token)
    try:
        wait_until("the model's Transit key to be suspended", lambda: root.state(MODEL).suspended, timeout=60)
    finally:
        root.close()
    log = server.log()
    assert "Traceback" not in log and "Vault login (approle)" in log

    # The checkpoints of those 30 seconds were signed in Transit, across the re-logins, and
    # `custos audit verify` checks them against the published key — not a key on the host.
    pem = started.workdir / "audit-checkpoints.pub"
    pem.write_bytes(public_key_pem(published_key(started.bao.root)))
    ok = server.cli("audit", "verify", "--key", str(pem), "--state", str(started.workdir / "st-1"), "-o", "json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["checkpoints"] >= 2
    # dev.env's CUSTOS_AUDIT_PUBKEY names the same key: a plain `custos audit verify` agrees.
    plain = server.cli("audit", "verify", "--state", str(started.workdir / "st-3"))
    assert plain.returncode == 0, plain.stdout + plain.stderr
    other = started.workdir / "other.pub"
    other.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    bad = server.cli("audit", "verify", "--key", str(other), "--state", str(started.workdir / "st-2"))
    assert bad.returncode == 7 and "bad signature" in (bad.stdout + bad.stderr)
