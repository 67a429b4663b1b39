"""A halt while Vault is dead: OpenBao (raft storage) is killed with SIGKILL under a running
control plane, kept down longer than the control plane's token TTL, and brought back.

What must hold, as the operator sees it on the worst day:
- the control plane says it is not ready (``/readyz`` 503; the key provider's health);
- a halt signed meanwhile is recorded and executing, and unwraps of the model are refused at
  once (the Store says halted, no Vault needed);
- the failed suspension is audited, and retried until Vault is back: then the key is
  suspended with no one doing anything, by a token obtained after the old one died;
- the order does not complete while its key is not suspended.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from custos.controlplane.keys import VaultTransitProvider
from custos.controlplane.keys.transit_signer import public_key_pem
from tests.controlplane.keys.test_transit_checkpoints import KEY, published_key
from tests.controlplane.keys.vault_setup import prepare, start_raft, wait_until
from tests.servers.custos import DevServer
from tests.servers.ports import free_port

pytestmark = [pytest.mark.backend, pytest.mark.slow]

MODEL = "outage-model"
TTL_S = 10


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def events(server: DevServer, action: str) -> list[str]:
    listed = json.loads(server.cli("audit", "list", "-o", "json", check=True).stdout)
    return [e["result"] for e in listed if e["action"] == action]


def test_a_halt_while_vault_is_dead_is_recorded_refuses_unwraps_and_suspends_when_vault_is_back(
        tmp_path: Path) -> None:
    raft = start_raft(tmp_path / "bao")
    server: DevServer | None = None
    try:
        bao = prepare(raft.server.address, raft.root_token, tmp_path / "auth", ttl=f"{TTL_S}s",
                      max_ttl=f"{2 * TTL_S}s")
        bao.root.secrets.transit.create_key(KEY, key_type="ed25519")
        pinned = tmp_path / "audit-checkpoints.pub"  # published, so the key is known while Vault is down
        pinned.write_bytes(public_key_pem(published_key(bao.root)))
        (tmp_path / "secret-id").write_text(bao.secret_id())
        probe_port = free_port()
        cfg = tmp_path / "cp.toml"
        cfg.write_text(f"""
[server]
probe_listen = "127.0.0.1:{probe_port}"
[keys]
provider = "vault"
url = "{bao.address}"
auth = "approle"
role_id = "{bao.role_id}"
secret_id_file = "{tmp_path / 'secret-id'}"
health_interval = 1
checkpoint_key = "{KEY}"
checkpoint_public_key_file = "{pinned}"
""")
        server = DevServer(tmp_path / "cp", extra=["--config", str(cfg)]).start()
        server.cli("model", "register", MODEL, "--training-flops", "3e26", check=True)
        weights = tmp_path / "weights"
        weights.mkdir()
        (weights / "model.safetensors").write_bytes(random.Random(3).randbytes(1 << 16))
        art = json.loads(server.cli("push", MODEL, str(weights), "--state-dir", str(tmp_path / "st"), "-o", "json",
                                    check=True).stdout)
        server.grant(MODEL)
        server.cli("pull", art["id"], str(tmp_path / "pull-before"), check=True)
        wait_until("ready", lambda: readyz(probe_port) == 200)

        raft.kill()
        killed = time.monotonic()
        wait_until("/readyz to fail", lambda: readyz(probe_port) == 503)

        oid = server.propose("halt", MODEL)
        assert server.sign(oid, 1, 2, 3)["state"] == "executing"
        refused = server.cli("pull", art["id"], str(tmp_path / "pull-during"))
        assert refused.returncode == 6 and "halted" in refused.stderr.lower(), refused.stderr
        assert "Traceback" not in refused.stderr and not (tmp_path / "pull-during").exists()
        wait_until("the failed suspension in the audit log",
                   lambda: any("BackendUnavailable" in r for r in events(server, "SuspendKey")))
        status = json.loads(server.cli("order", "status", oid, "-o", "json", check=True).stdout)
        assert status["state"] == "executing"

        # Down longer than the token's TTL: the token the control plane held is dead when Vault returns.
        time.sleep(max(0.0, killed + TTL_S + 2 - time.monotonic()))
        raft.restart()
        root = VaultTransitProvider(url=raft.server.address, token=raft.root_token)
        try:
            wait_until("the key to be suspended after Vault is back", lambda: root.state(MODEL).suspended,
                       timeout=60)
        finally:
            root.close()
        wait_until("the retried suspension in the audit log",
                   lambda: any(r.startswith("ok") for r in events(server, "SuspendKey")))
        wait_until("ready again", lambda: readyz(probe_port) == 200)
        assert server.cli("pull", art["id"], str(tmp_path / "pull-after")).returncode == 6
        log = (server.data_dir / "server.log").read_text(errors="replace")
        assert "Traceback" not in log
        assert log.count("Vault login (approle)") >= 2  # a new token after the old one died
    finally:
        if server is not None:
            server.stop()
        raft.server.stop()
