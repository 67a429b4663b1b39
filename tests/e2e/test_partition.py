"""A silent partition, not a clean kill: two agent processes, each in its own network
namespace joined to this host by a veth pair, and one control plane listening where
the namespaces reach it (the veth's host side; one agent knows it by a DNS name
with two addresses, the first dead). One link is cut by pointing both ends'
neighbour entries at a MAC address nobody has: frames are dropped both ways, nothing
is reset, no error is seen on either side; the stream just goes quiet.

That agent fails closed on its own lease deadline; the control plane lets its hung
stream go (keepalive), lets its lease lapse and reports it unreachable; a halt issued
meanwhile completes with its copies `fail-closed`. Healing the link brings it back:
the control plane holds its lease until it acks the halt it missed, so it acks it
first, then gets a live lease. The other agent sees none of it.

Traffic goes only to loopback and to the namespaces (they have no default route).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tests.e2e.conftest as e2e
from tests.e2e.conftest import LEASE_TTL, AgentProc, make_weights, server_config, unique, wait_until
from tests.servers.custos import DevServer
from tests.servers.netns import NetNs, require_netns
from tests.servers.ports import free_port

pytestmark = pytest.mark.slow

SLACK = 6.0  # fail-closed within the TTL, plus the stop grace, process start-up and polling

HOLD = """
import mmap, os, time
d = os.environ["CUSTOS_ARTIFACT_DIR"]
with open(os.path.join(d, "model-00001.safetensors"), "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
print("mapped", flush=True)
time.sleep(300)
"""


@dataclass
class Partitioned:
    server: DevServer
    artifact: str
    hold: Path
    agents: dict[str, tuple[AgentProc, NetNs]]


def start_in(ns: NetNs, agent: AgentProc, addr: str) -> AgentProc:
    """Point ``agent`` at the control plane through its namespace's link, and start it there."""
    cfg = agent.config.read_text()
    # The dev server's certificate names localhost; the link reaches it by another name.
    agent.config.write_text(cfg.replace(f'addr = "{agent.server.env["CUSTOS_ADDR"]}"',
                                        f'addr = "{addr}"\nserver_name = "localhost"'))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(e2e, "CUSTOS", ns.wrap(e2e.CUSTOS))
        return agent.start()


@pytest.fixture
def partitioned(tmp_path: Path) -> Iterator[Partitioned]:
    require_netns()
    port = free_port()
    # Every address of this host, so the veths' host sides too (the namespaces have no other way in).
    server = DevServer(tmp_path / "cp", port=port, extra=["--config", str(server_config(tmp_path / "cp.toml")),
                                                          "--listen", f"0.0.0.0:{port}"])
    made: list[tuple[AgentProc, NetNs]] = []
    try:
        server.start()
        server.cli("model", "register", "m", "--training-flops", "3e26", check=True)
        pushed = json.loads(server.cli("push", "m", str(make_weights(tmp_path / "w", 5)), "-o", "json",
                                       check=True).stdout)
        hold = tmp_path / "hold.py"
        hold.write_text(HOLD)
        for letter in "xy":
            ns = NetNs().create()
            agent = AgentProc(tmp_path / letter, unique(f"part-{letter}"), server)
            made.append((agent, ns))
            agent.enroll()  # from this host, over loopback
            addr = f"{ns.host_ip}:{port}"
            if letter == "y":
                # A DNS name with two addresses, the first one dead (refused inside the namespace).
                ns.resolve({"cp.custos.test": ["127.0.0.2", ns.host_ip]})
                addr = f"cp.custos.test:{port}"
            start_in(ns, agent, addr)
        for agent, _ in made:
            wait_until(agent.lease_live, 30, f"{agent.name} to hold a live lease through its link")
        server.grant("m", hosts=[a.name for a, _ in made], duration_s=4 * 3600)  # m is covered
        yield Partitioned(server=server, artifact=pushed["id"], hold=hold,
                          agents={a.name: (a, ns) for a, ns in made})
    except BaseException:
        for agent, _ in made:
            print(f"--- agent {agent.name} ---\n{agent.log()[-4000:]}")
        print(f"--- control plane ---\n{server.log()}")
        raise
    finally:
        for agent, ns in made:
            agent.stop()
            ns.delete()
        server.stop()


def report(server: DevServer, oid: str) -> dict[str, Any]:
    return dict(json.loads(server.cli("order", "report", oid, "-o", "json", check=True).stdout))


def lease_state(server: DevServer, host: str) -> str:
    hosts = json.loads(server.cli("hosts", "-o", "json", check=True).stdout)
    return str(next(h for h in hosts if h["name"] == host)["lease_state"])


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_silently_cut_link_fails_closed_completes_the_halt_and_heals(partitioned: Partitioned) -> None:
    srv = partitioned.server
    (x, x_ns), (y, _) = partitioned.agents.values()
    runs = {}
    for ag in (x, y):
        res = ag.run("--model", "m", "--artifact", partitioned.artifact, "--detach", "-o", "json", "--",
                     sys.executable, str(partitioned.hold))
        assert res.returncode == 0, res.stderr
        runs[ag.name] = json.loads(res.stdout)

    def copies_of(host: str) -> list[dict[str, Any]]:
        out = json.loads(srv.cli("copies", "m", "-o", "json", check=True).stdout)["copies"]
        return [c for c in out if c["host"] == host]

    for ag in (x, y):
        wait_until(lambda ag=ag: any(c["location"] == f"{ag.name}:{runs[ag.name]['pid']}"  # type: ignore[misc]
                                     for c in copies_of(ag.name)), 30, f"{ag.name}'s workload as a loaded copy")

    x_ns.cut()
    t_cut = time.monotonic()

    # The cut-off agent fails closed on its own lease deadline: its workload stopped, its plaintext wiped.
    run = runs[x.name]
    wait_until(lambda: not _pid_alive(run["pid"]) and not Path(run["artifact_dir"]).exists(),
               LEASE_TTL + SLACK, "the cut-off agent to fail closed")
    t_closed = time.monotonic()
    s = x.status()
    assert s["failed_closed"].startswith("custody lease expired at"), s
    wait_until(lambda: not x.status()["connected"], LEASE_TTL + SLACK, "the cut-off agent to drop its hung stream")
    assert y.lease_live() and _pid_alive(runs[y.name]["pid"])  # the other link is untouched

    # The control plane: the lease lapses; a halt issued now completes with the host fail-closed.
    wait_until(lambda: lease_state(srv, x.name) == "lapsed", 30, "the cut-off host's lease to lapse")
    halt = srv.propose("halt", "m")
    srv.sign(halt, 1, 2, 3)
    t_quorum = time.monotonic()
    wait_until(lambda: report(srv, halt)["state"] == "complete", 60, "the halt to complete without the cut-off host")
    t_complete = time.monotonic()
    rep = report(srv, halt)
    rows = {h["host"]: h for h in rep["hosts"]}
    assert not rows[x.name]["acked"] and rows[x.name]["outcome"] == "unreachable", rows[x.name]
    assert rows[y.name]["acked"] and rows[y.name]["outcome"] == "halted", rows[y.name]
    assert runs[y.name]["pid"] in rows[y.name]["pids_stopped"]
    x_states = {c["state"] for c in rep["copies"] if c["host"] == x.name}
    assert x_states and x_states <= {"fail-closed", "gone"} and "fail-closed" in x_states, rep["copies"]
    assert {c["state"] for c in rep["copies"] if c["host"] == y.name} <= {"wiped", "stopped", "gone"}

    # Healed: the agent acks the halt it missed (its lease is held until it does), then is live again.
    x_ns.heal()
    t_heal = time.monotonic()
    wait_until(x.lease_live, 60, "the healed agent to get a live lease")
    print(f"partition: cut -> failed closed {t_closed - t_cut:.2f} s (TTL {LEASE_TTL} s); quorum -> complete "
          f"{t_complete - t_quorum:.2f} s ({t_quorum - t_cut:.2f} s after the cut); heal -> live lease "
          f"{time.monotonic() - t_heal:.2f} s")
    row = next(h for h in report(srv, halt)["hosts"] if h["host"] == x.name)
    assert row["acked"] and row["verified"] and row["outcome"] == "halted", row
    refused = x.run("--model", "m", "--artifact", partitioned.artifact, "--", "true")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr  # halted: no run, live lease or not
    assert any("holds the lease until this host acks" in e.get("msg", "") for e in x.log_events())
