"""Who can reach a model's weights (custos.controlplane.access_who), against the ground
truth: active grants, supervised runs and plaintext copies reported by agents, and the ACL
policies of a real OpenBao (the shipped vault-policies/*.hcl and made-up ones). Then the
gauge, the over-the-cap alert and the break-glass incident."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hvac
import pytest

from custos.controlplane.access_who import AccessWho
from custos.controlplane.keys import LocalKeyProvider, VaultTransitProvider
from custos.controlplane.periodic import spaced
from custos.controlplane.rules.config import parse_rules_config
from custos.core.access import AccessPolicy, AccessRequest
from custos.errors import InvalidInput, Unauthorized
from custos.v1 import custody_pb2
from tests import ROOT
from tests.controlplane.access_helper import APPROVERS, REQUESTER, grant
from tests.controlplane.incidents.conftest import SEC, Plane, tree, weights
from tests.controlplane.keys.conftest import require_bao
from tests.servers.openbao import OpenBaoDevServer, load_policies
from tests.servers.ports import free_port

SHIPPED = ("custos-controlplane", "custos-breakglass", "custos-auditor")
MADE_UP = {
    # reaches every custos- key: appears
    "ops-decrypt": 'path "transit/decrypt/custos-*" {\n  capabilities = ["update"]\n}\n',
    # one segment wildcard on the operation: appears for custos-wm only
    "plus-wm": 'path "transit/+/custos-wm" { capabilities = ["create"] }\n',
    # other keys, other mounts, read-only, denied: none appears
    "other-path": 'path "transit/decrypt/other-*" { capabilities = ["update"] }\n'
                  'path "transit-other/decrypt/custos-*" { capabilities = ["update"] }\n'
                  'path "secret/*" { capabilities = ["create", "update"] }\n',
    "read-only": 'path "transit/decrypt/custos-*" { capabilities = ["read", "list"] }\n',
    "denied": 'path "transit/decrypt/custos-*" { capabilities = ["update"] }\n'
              'path "transit/decrypt/custos-wm" { capabilities = ["deny"] }\n',
    # what `custos access who` needs to read policies (docs/access.md)
    "custos-policy-reader": 'path "sys/policies/acl" { capabilities = ["list"] }\n'
                            'path "sys/policies/acl/*" { capabilities = ["read"] }\n',
}


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    server = OpenBaoDevServer(tmp_path_factory.mktemp("openbao-who"), binary=require_bao())
    server.start()
    try:
        root = hvac.Client(url=server.address, token=server.root_token)
        root.sys.enable_secrets_engine("transit", path="transit")
        load_policies(root, ROOT / "vault-policies", SHIPPED)
        for name, text in MADE_UP.items():
            root.sys.create_or_update_policy(name, text)

        def token(*policies: str) -> str:
            return str(root.auth.token.create(policies=list(policies), no_default_policy=True,
                                              ttl="1h")["auth"]["client_token"])

        work = server.workdir
        (work / "cp-token").write_text(token("custos-controlplane", "custos-policy-reader"))
        (work / "cp-token").chmod(0o600)
        yield {"server": server, "token": token, "token_file": str(work / "cp-token")}
    finally:
        server.stop()


def provider(bao: dict[str, Any], *policies: str) -> VaultTransitProvider:
    p = VaultTransitProvider(url=bao["server"].address, token=bao["token"](*policies))
    p.policy_cache_s = 0
    return p


def names(found: Any) -> set[str]:
    return {r.policy for r in found.reach}


def test_vault_policies_that_reach_a_key(bao: dict[str, Any]) -> None:
    with provider(bao, "custos-controlplane", "custos-policy-reader") as p:
        wm, other = p.key_policies("wm"), p.key_policies("other-model")
    # the control plane's own policy is a holder; break-glass (suspend/resume only) and the
    # auditor (key metadata) are not; the root policy always is.
    assert names(wm) == {"custos-controlplane", "ops-decrypt", "plus-wm", "root"}
    assert names(other) == {"custos-controlplane", "ops-decrypt", "denied", "root"}
    assert wm.problems == ()
    cp = next(r for r in wm.reach if r.policy == "custos-controlplane")
    assert cp.operations == {"decrypt": "transit/decrypt/custos-*", "datakey": "transit/datakey/plaintext/custos-*"}
    assert 'custos-controlplane: path "transit/decrypt/custos-*" (decrypt)' in cp.describe()


def test_policies_unreadable_without_the_reader_policy(bao: dict[str, Any]) -> None:
    # The shipped control-plane policy may read policies; a token without that rule may not.
    with provider(bao, "custos-breakglass") as p, pytest.raises(Unauthorized, match="list policies"):
        p.key_policies("wm")
    with provider(bao, "custos-controlplane") as p:
        assert "custos-controlplane" in names(p.key_policies("wm"))


def test_local_keys_have_no_policies(tmp_path: Path) -> None:
    with LocalKeyProvider(tmp_path / "keys.json", dev_only=True) as p:
        found = p.key_policies("wm")
    assert found.reach == () and found.problems[0].startswith("local dev keys: no Vault policies")


# -- against a control plane ----------------------------------------------------------------


@pytest.fixture
def planes(tmp_path: Path) -> Iterator[list[Plane]]:
    started: list[Plane] = []
    yield started
    for p in started:
        p.stop()


def start(planes: list[Plane], tmp: Path, **kw: Any) -> Plane:
    p = Plane(tmp / f"plane{len(planes)}", **kw).start()
    planes.append(p)
    return p


def inventory(host_files: dict[str, bytes], procs: list[custody_pb2.ProcessRecord]) -> custody_pb2.Inventory:
    return custody_pb2.Inventory(full=True, processes=procs, files=[
        custody_pb2.FileRecord(path=p, size=len(b), sha256=hashlib.sha256(b).hexdigest(), form="plaintext")
        for p, b in host_files.items()])


def test_who_matches_the_ground_truth(bao: dict[str, Any], planes: list[Plane], tmp_path: Path) -> None:
    plane = start(planes, tmp_path, keys={"provider": "vault", "url": bao["server"].address,
                                          "token_file": bao["token_file"]})
    plane.model("wm", hosts=["gpu-*"], paths=["/models/*"])
    plane.model("bystander")
    aid = plane.push("wm", weights(tmp_path / "w", 5))
    g1 = plane.run(grant(plane.cp.access, "wm", principal="alice"))
    g2 = plane.run(grant(plane.cp.access, "wm", hosts=["gpu-1", "gpu-2"]))
    plane.run(grant(plane.cp.access, "wm", principal="bob", duration_s=600))
    revoked = plane.run(grant(plane.cp.access, "wm", principal="carol"))
    plane.run(plane.cp.access.revoke(SEC, revoked["id"], "no longer needed"))
    # gpu-1 runs a supervised workload on a verified pull; gpu-3 holds a copy outside any grant
    gpu1 = plane.enroll("gpu-1")
    plane.pull(gpu1, aid, tmp_path / "pulled")
    files = tree(tmp_path / "pulled", "/models/wm")
    proc = custody_pb2.ProcessRecord(pid=4242, user="train", cmdline="python train.py", paths=sorted(files),
                                     how="supervised", workload_id="wl-1")
    plane.run(plane.cp.custody.ingest("gpu-1", inventory(files, [proc])))
    plane.enroll("gpu-3")
    plane.report("gpu-3", tree(tmp_path / "w", "/scratch/copy"))
    plane.cp.access.clock = plane.clock
    plane.advance(0.2)  # bob's 10-minute grant has expired

    who = AccessWho(access=plane.cp.access, registry=plane.cp.registry, keys=plane.cp.keys, cap=4, clock=plane.clock)
    plane.cp.keys.policy_cache_s = 0  # type: ignore[attr-defined]
    resp = plane.run(who.who("wm"))
    by_kind: dict[str, set[tuple[str, str]]] = {}
    for h in resp.holders:
        by_kind.setdefault(h.kind, set()).add((h.principal, h.host))
    assert by_kind["grant"] == {("alice", ""), ("", "gpu-1"), ("", "gpu-2")}  # not bob (expired), not carol
    assert by_kind["workload"] == {("", "gpu-1")}
    assert by_kind["plaintext-copy"] == {("", "gpu-1"), ("", "gpu-3")}
    assert {h.detail.split(":")[0] for h in resp.holders if h.kind == "vault-policy"} == \
        {"custos-controlplane", "ops-decrypt", "plus-wm", "root"}
    grants = {h.grant_id: h for h in resp.holders if h.kind == "grant"}
    assert {g1["id"], g2["id"]} < set(grants) and len(grants) == 3  # and the one plane.pull took for gpu-1
    assert grants[g1["id"]].until_unix_ns == plane.run(plane.cp.access.get(g1["id"]))["not_after_ns"]
    # alice; gpu-1, gpu-2, gpu-3; four policies
    assert resp.principals == 8 and resp.cap == 4 and list(resp.problems) == []
    assert plane.run(who.who("bystander")).principals == 4  # the policies only

    # a halted model: the key is suspended, no policy decrypts; the grants are revoked
    plane.order("halt", ["wm"])
    halted = plane.run(who.who("wm"))
    assert {h.kind for h in halted.holders} == {"workload", "plaintext-copy"}
    assert "suspended" in halted.problems[0]


def test_vault_unreachable_is_a_problem_line(planes: list[Plane], tmp_path: Path) -> None:
    plane = start(planes, tmp_path)
    plane.model("wm")
    down = VaultTransitProvider(url=f"http://127.0.0.1:{free_port()}", token="s.none", timeout=2, check_interval=60)
    try:
        who = AccessWho(access=plane.cp.access, registry=plane.cp.registry, keys=down)
        resp = plane.run(who.who("wm"))
    finally:
        down.close()
    assert resp.principals == 0 and resp.holders == []
    assert len(resp.problems) == 1 and resp.problems[0].startswith("Vault policies not read: Vault unreachable")
    local = plane.run(AccessWho(access=plane.cp.access, registry=plane.cp.registry, keys=plane.cp.keys).who("wm"))
    assert local.problems[0].startswith("local dev keys: no Vault policies")


def scrape(plane: Plane) -> dict[str, float]:
    assert plane.rt.metrics is not None
    plane.run(plane.rt.metrics.refresh())
    text = urllib.request.urlopen(f"http://127.0.0.1:{plane.rt.metrics.port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(custos_access_holders\{[^}]*\}) (\S+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_gauge_and_alert_over_the_cap(planes: list[Plane], tmp_path: Path) -> None:
    plane = start(planes, tmp_path, rules={"access_holders_over_cap": {"cap": 2}},
                  metrics={"listen": "127.0.0.1:0"})
    plane.model("wm")
    plane.model("small")
    plane.push("wm", weights(tmp_path / "w", 7))
    plane.push("small", weights(tmp_path / "s", 8))
    for who in ("alice", "bob"):
        plane.run(grant(plane.cp.access, "wm", principal=who))
    plane.run(grant(plane.cp.access, "small", principal="alice"))
    counter = AccessWho(access=plane.cp.access, registry=plane.cp.registry, keys=plane.cp.keys, clock=plane.clock)
    assert plane.run(counter.refresh()) == {"small": 1, "wm": 2}
    plane.round()
    assert plane.alerts("access-holders-over-cap") == [], "at the cap is not over it"
    assert scrape(plane) == {'custos_access_holders{model="small"}': 1.0, 'custos_access_holders{model="wm"}': 2.0}

    plane.run(grant(plane.cp.access, "wm", principal="carol"))
    plane.run(counter.refresh())
    plane.round()
    plane.round()  # the same set of holders: still one alert
    [alert] = plane.alerts("access-holders-over-cap")
    assert alert["model"] == "wm" and alert["severity"] == "medium"
    assert "3 principals, hosts and Vault policies can reach the weights of wm, above the cap of 2" in alert["detail"]
    assert "principal:carol" in alert["detail"]
    assert scrape(plane)['custos_access_holders{model="wm"}'] == 3.0
    [incident] = plane.incidents()
    assert incident["model"]["name"] == "wm"


def test_no_cap_no_alert(planes: list[Plane], tmp_path: Path) -> None:
    plane = start(planes, tmp_path)
    plane.model("wm")
    plane.push("wm", weights(tmp_path / "w", 9))
    for who in ("alice", "bob", "carol"):
        plane.run(grant(plane.cp.access, "wm", principal=who))
    plane.run(AccessWho(access=plane.cp.access, registry=plane.cp.registry, keys=plane.cp.keys).refresh())
    plane.round()
    assert plane.alerts("access-holders-over-cap") == []


def test_break_glass_raises_a_high_severity_incident(planes: list[Plane], tmp_path: Path) -> None:
    plane = start(planes, tmp_path)
    plane.model("wm", hosts=["gpu-*"])
    plane.model("strict")
    plane.push("wm", weights(tmp_path / "w", 10))
    plane.push("strict", weights(tmp_path / "s", 11))
    plane.run(plane.cp.access.set_policy(SEC, "strict", AccessPolicy(break_glass=False)))
    key = plane.run(APPROVERS.ensure(plane.cp.access, REQUESTER.principal))

    def attempt(model: str) -> str:
        rec = plane.run(plane.cp.access.request(REQUESTER, model=model, hosts=["gpu-7"], duration_s=1800,
                                                reason="incident response: the on-call lost access"))
        sig = AccessRequest.decode(rec["body"].encode()).sign(key)
        try:
            plane.run(plane.cp.access.break_glass(REQUESTER, rec["id"], sig))
        except Exception as exc:  # noqa: BLE001 - the refusal is what this case is about
            assert "does not allow break-glass" in str(exc)
        return str(rec["id"])

    refused = attempt("strict")
    plane.round()
    assert plane.alerts("access-break-glass") == [], "a refused break-glass is audited, not an incident"
    used = attempt("wm")
    plane.round()
    plane.round()
    [alert] = plane.alerts("access-break-glass")
    assert alert["severity"] == "high" and alert["model"] == "wm" and alert["host"] == "gpu-7"
    assert alert["principal"] == REQUESTER.principal
    assert f"activated access grant {used[:16]} on model wm for gpu-7 without a second approver" in alert["detail"]
    assert "incident response" in alert["detail"] and refused[:16] not in alert["detail"]
    [incident] = plane.incidents()
    assert incident["severity"] == "high" and incident["model"]["name"] == "wm"
    assert incident["category"] == "c3"


@pytest.mark.parametrize(("raw", "cap", "every"), [
    ({}, 0, 30.0),
    ({"access_holders_over_cap": {"cap": 5}}, 5, 30.0),
    ({"access_holders_over_cap": {"cap": 0, "interval_s": 120}}, 0, 120.0),
])
def test_cap_config(raw: dict[str, Any], cap: int, every: float) -> None:
    cfg = parse_rules_config(raw)
    assert (cfg.access_holders_cap, cfg.access_holders_interval_s) == (cap, every)


@pytest.mark.parametrize("raw", [{"cap": -1}, {"cap": "3"}, {"limit": 3}, {"interval_s": 0}])
def test_bad_cap_config(raw: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match=r"access_holders_over_cap"):
        parse_rules_config({"access_holders_over_cap": raw})


@pytest.mark.parametrize(("interval", "took", "duty", "want"), [
    (30.0, 0.0, 0.05, 30.0), (30.0, 1.0, 0.05, 30.0), (30.0, 2.0, 0.05, 38.0),
    (30.0, 10.0, 0.05, 190.0), (1.0, 0.5, 0.5, 1.0), (1.0, 3.0, 0.5, 3.0)])
def test_a_round_that_grows_with_the_fleet_is_spaced_out(interval: float, took: float, duty: float,
                                                        want: float) -> None:
    assert spaced(interval, took, duty) == pytest.approx(want)


async def test_a_slow_refresh_backs_off_instead_of_holding_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh reads every copy record: at a large fleet it takes long, and the loop must
    then run it at most DUTY of the time, not every ``interval_s``."""
    who = AccessWho(access=None, registry=SimpleNamespace(store=None), keys=None,  # type: ignore[arg-type]
                    interval_s=0.01)
    rounds: list[float] = []

    async def slow() -> dict[str, int]:
        rounds.append(time.monotonic())
        await asyncio.sleep(0.05)
        return {}

    monkeypatch.setattr(who, "refresh", slow)
    stop = asyncio.Event()
    task = asyncio.create_task(who.run(stop))
    await asyncio.sleep(1.5)
    stop.set()
    await task
    # every 0.01 s it would be ~25 rounds; spaced to 5 % of the time, at most two
    assert 1 <= len(rounds) <= 2
