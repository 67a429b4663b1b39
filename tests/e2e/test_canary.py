"""Canary shards end to end: a real control plane and real agents (run as root).

`custos canary plant` makes an agent write decoys under its scan root; `custos canary
list` shows them planted; they are no copy and raise no unregistered-weights alert; a
process that opens one (`cat`) becomes a HIGH incident within 5 s whose alert names its
pid — although the rules here run only every 30 s (canary alerts correlate at once). With
the guard in inotify mode (degraded) an open is still an incident, without a pid.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from custos.cli.incidents import incident_json
from custos.v1 import incidents_pb2, incidents_pb2_grpc
from tests.e2e.conftest import AgentProc, make_weights, unique, wait_until
from tests.servers.custos import DevServer

pytestmark = pytest.mark.slow

BOUND_S = 5.0  # the bound: canary open -> high incident


@dataclass
class World:
    server: DevServer
    fan: AgentProc  # guard: fanotify (root)
    ino: AgentProc  # guard: inotify (degraded)

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.server.cli(*args, "-o", "json", check=True).stdout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.fail("the canary end-to-end test needs root (fanotify)", pytrace=False)
    base = tmp_path_factory.mktemp("canary")
    cfg = base / "cp.toml"
    cfg.write_text("[custody]\nlease_ttl = 5\nsweep_interval = 0.5\n[rules]\ninterval_s = 30\n")
    server = DevServer(base / "cp", extra=["--config", str(cfg)]).start()
    agents: list[AgentProc] = []
    try:
        server.cli("model", "register", "llama-ft", "--training-flops", "3e26", check=True)
        server.cli("push", "llama-ft", str(make_weights(base / "weights", seed=7)), check=True)
        fan = AgentProc(base / "fan", unique("gpu-fan"), server)
        ino = AgentProc(base / "ino", unique("gpu-ino"), server)
        agents = [fan, ino]
        for ag, mode in ((fan, "fanotify"), (ino, "inotify")):
            # The inotify agent also plants one canary from its own config, at start.
            paths = json.dumps([str(ag.root / "hub" / "from-config")] if ag is ino else [])
            with ag.config.open("a") as f:
                f.write(f'\n[canary]\nmax_bytes = {128 << 20}\npaths = {paths}\n\n[guard]\nmode = "{mode}"\n')
            ag.enroll()
            ag.start()
        for ag in agents:
            wait_until(ag.lease_live, 30, f"{ag.name}'s lease")
        yield World(server, fan, ino)
    finally:
        for ag in agents:
            ag.stop()
        server.stop()


def plant(w: World, ag: AgentProc, sub: str) -> dict[str, Any]:
    path = ag.root / "hub" / sub
    c = w.cli_json("canary", "plant", "--host", ag.name, "--path", str(path), "--model", "llama-ft",
                   "--wait", "30")
    assert c["state"] == "planted", c
    return dict(c)


def incidents_with(w: World, host: str, rule: str) -> list[dict[str, Any]]:
    """Incidents of ``host`` holding an alert of ``rule``, read over gRPC (polling the CLI would
    add its start-up time to the bound measured)."""
    env = w.server.env
    d = Path(env["CUSTOS_CERT_DIR"])
    creds = grpc.ssl_channel_credentials(Path(env["CUSTOS_CA"]).read_bytes(), (d / "security-team.key").read_bytes(),
                                         (d / "security-team.pem").read_bytes())
    with grpc.secure_channel(env["CUSTOS_ADDR"], creds) as ch:
        got = incidents_pb2_grpc.IncidentsStub(ch).ListIncidents(incidents_pb2.ListIncidentsRequest(), timeout=10)
    return [incident_json(i) for i in got.incidents
            if host in i.hosts and any(a.rule == rule for a in i.alerts)]


def test_a_planted_canary_is_listed_no_copy_and_no_alert(world: World) -> None:
    w, ag = world, world.fan
    c = plant(w, ag, "llama-ft-v2")
    shards = [f for f in c["files"] if f["path"].endswith(".safetensors")]
    assert shards and {Path(f["path"]).name for f in c["files"]} >= {"config.json", "tokenizer.json"}
    for f in c["files"]:
        assert Path(f["path"]).stat().st_size == f["size"]
    listed = {x["id"]: x for x in w.cli_json("canary", "list", "--host", ag.name)}
    assert listed[c["id"]]["state"] == "planted" and listed[c["id"]]["files"] == c["files"]
    # A real unregistered weight file planted after the canary: once its alert is in, the agent's
    # reports since the canary have been ingested — and none of them made the decoys anything.
    (ag.root / "hub" / "stray.safetensors").write_bytes(random.Random(1).randbytes(64 << 10))
    wait_until(lambda: any("stray.safetensors" in a["detail"] for a in
                           w.cli_json("alerts", "--host", ag.name)), 30, "the stray file's alert")
    decoys = {f["path"] for f in c["files"]}
    alerts = w.cli_json("alerts", "--host", ag.name)
    assert not [a for a in alerts if any(p in a["detail"] for p in decoys)], alerts
    copies = w.cli_json("copies", "llama-ft")["copies"]
    assert not [x for x in copies if c["path"] in x.get("location", "")], copies
    assert ag.status()["inventory"]["files"] >= 1


def test_cat_of_a_canary_is_a_high_incident_within_5_s_naming_the_pid(world: World) -> None:
    w, ag = world, world.fan
    c = plant(w, ag, "opened")
    shard = next(f["path"] for f in c["files"] if f["path"].endswith(".safetensors"))
    # No wait: an agent reports a canary planted only once its guard watches the decoys.
    t0 = time.monotonic()
    cat = subprocess.run(["cat", shard], stdout=subprocess.DEVNULL, check=True)
    assert cat.returncode == 0
    found = wait_until(lambda: [i for i in incidents_with(w, ag.name, "canary-opened")
                                if any(a["rule"] == "canary-opened" and "cat" in a["detail"] and c["id"] in a["detail"]
                                       for a in i["alerts"])], BOUND_S + 10, "a canary incident")
    took = time.monotonic() - t0
    inc = found[0]
    alert = next(a for a in inc["alerts"] if a["rule"] == "canary-opened" and c["id"] in a["detail"])
    assert inc["severity"] == "high" and alert["severity"] == "high"
    assert "pid " in alert["detail"] and "pid 0" not in alert["detail"] and shard in alert["detail"]
    print(f"canary open (fanotify) -> high incident: {took:.2f} s")
    assert took < BOUND_S, f"canary open -> incident took {took:.2f} s"
    # The agent's own scans (every second here) never open a decoy: no alert naming the agent.
    time.sleep(1.5)
    agent_pid = ag.proc.pid if ag.proc else -1
    mine = [a for a in w.cli_json("alerts", "--host", ag.name)
            if a["rule"] == "canary-opened" and f"pid {agent_pid}," in a["detail"]]
    assert mine == []


def test_inotify_fallback_an_open_is_still_an_incident_without_pid(world: World) -> None:
    w, ag = world, world.ino
    assert "inotify" in ag.status()["guard"]["mode"]
    c = plant(w, ag, "degraded")
    shard = next(f["path"] for f in c["files"] if f["path"].endswith(".safetensors"))
    time.sleep(1.0)
    quiet = [a for a in w.cli_json("alerts", "--host", ag.name) if a["rule"] == "canary-opened"]
    assert quiet == [], "the agent's own planting and scans must not look like an open"
    t0 = time.monotonic()
    subprocess.run(["head", "-c", "64", shard], stdout=subprocess.DEVNULL, check=True)
    found = wait_until(lambda: incidents_with(w, ag.name, "canary-opened"), BOUND_S + 10, "a canary incident")
    took = time.monotonic() - t0
    alert = next(a for a in found[0]["alerts"] if a["rule"] == "canary-opened")
    assert found[0]["severity"] == "high" and "no pid" in alert["detail"] and shard in alert["detail"]
    print(f"canary open (inotify) -> high incident: {took:.2f} s")
    assert took < BOUND_S, f"canary open -> incident took {took:.2f} s"
    hosts = {h["name"]: h for h in w.cli_json("hosts")}
    # The canary of its own config: reported with its id from host and path, planted, never "opened"
    # by the agent itself although its scans and its inotify watches began around the same time.
    own = [x for x in w.cli_json("canary", "list", "--host", ag.name) if x["origin"] == "agent-config"]
    assert [(x["path"], x["state"]) for x in own] == [(str(ag.root / "hub" / "from-config"), "planted")]
    assert not [a for a in w.cli_json("alerts", "--host", ag.name)
                if a["rule"] == "canary-opened" and own[0]["id"] in a["detail"]]
    assert "degraded" in hosts[ag.name].get("guard", "") or "inotify" in hosts[ag.name].get("guard", "")
