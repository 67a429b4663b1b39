"""Replica failover: agents and the CLI know several control-plane addresses.

The end-to-end case: two `custos server` replicas on one real etcd, three real agent
processes that know both (as `addr = "A,B"`, as `addrs = [A, B]`, and with A named by
DNS), every stream on replica A. A halt reaches quorum through A; the moment every
agent is halting (its workload has the SIGTERM), A is killed with SIGKILL. The agents
move to B, the orders and acks in flight survive the move (the halt in progress runs
to its end; its ack goes out on the new stream, before any lease if B holds it back),
every ack arrives, and the report is complete. The CLI, told "A,B", keeps working.

Then the pieces, against real gRPC servers: the CLI's channel passes over a dead
replica of each kind (refused, silent, unresolvable) but never repeats a call that
reached one; the agent's config takes one address, a comma list or a list, and
refuses bad ones with one clear line.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from custos.agent.config import config_from_dict
from custos.client import registry
from custos.client.connection import ClientConfig, FailoverChannel, parse_addrs
from custos.client.session import Client
from custos.controlplane.pki import ensure_dev_pki
from custos.errors import BackendUnavailable, InvalidInput
from custos.v1 import registry_pb2, registry_pb2_grpc
from tests.e2e.conftest import AgentProc, make_weights, unique, wait_until
from tests.servers.custos import DevServer
from tests.servers.ports import free_port

STUBBORN = """
import mmap, os, signal, sys, time
d = os.environ["CUSTOS_ARTIFACT_DIR"]
marker = sys.argv[1]
# Ignore SIGTERM (the agent's halt then waits out its grace and kills): the marker says
# the agent has the order and is halting.
signal.signal(signal.SIGTERM, lambda *_: open(marker, "w").close())
with open(os.path.join(d, "model-00001.safetensors"), "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
print("mapped", flush=True)
while True:
    time.sleep(1)
"""
STOP_GRACE = 4  # the agents' halts outlast the kill of their replica
LEASE_TTL = 12


def last_stream_addr(agent: AgentProc) -> str:
    ups = [e for e in agent.log_events() if e.get("msg") == "custody stream up"]
    return str(ups[-1]["addr"]) if ups else ""


@pytest.mark.slow
def test_kill9_of_the_replica_holding_the_streams_after_quorum_loses_no_ack(
        tmp_path: Path, etcd_server: Any) -> None:
    store = f"etcd://{etcd_server.endpoint}/failover-{int(time.time() * 1000)}"
    shared = tmp_path / "shared"
    # A lease outlasting a halt (as in production: 30 s against a 10 s grace), so only an ack
    # or a passed deadline may settle a host.
    (tmp_path / "cp.toml").write_text(f"[custody]\nlease_ttl = {LEASE_TTL}\nsweep_interval = 0.5\n")
    cfg = ["--config", str(tmp_path / "cp.toml")]
    a = DevServer(shared, store=store, extra=cfg).start()
    env_a = dict(a.env)
    b = DevServer(shared, store=store, extra=cfg).start()
    addr_a, addr_b = env_a["CUSTOS_ADDR"], b.env["CUSTOS_ADDR"]
    # The CLI knows both replicas, A first (dev.env is B's now: the same PKI and signers).
    b.env = {**env_a, "CUSTOS_ADDR": f"{addr_a},{addr_b}"}
    agents: list[AgentProc] = []
    try:
        b.cli("model", "register", "m", "--training-flops", "3e26", check=True)
        aid = json.loads(b.cli("push", "m", str(make_weights(tmp_path / "w", 3)), "-o", "json",
                               check=True).stdout)["id"]
        port_a = addr_a.rsplit(":", 1)[1]
        forms = [f'addr = "{addr_a},{addr_b}"', f'addrs = ["{addr_a}", "{addr_b}"]',
                 f'addrs = ["localhost:{port_a}", "{addr_b}"]']  # A by DNS name
        for i, form in enumerate(forms):
            ag = AgentProc(tmp_path / f"g{i}", unique(f"fo-{i}"), b)
            text = ag.config.read_text().replace(f'addr = "{addr_a},{addr_b}"', form)
            ag.config.write_text(text.replace("stop_grace = 1", f"stop_grace = {STOP_GRACE}"))
            ag.enroll()
            agents.append(ag.start())
        for ag in agents:
            wait_until(ag.lease_live, 30, f"{ag.name} to hold a live lease")
        assert [last_stream_addr(ag) for ag in agents] == [addr_a, addr_a, f"localhost:{port_a}"]
        b.grant("m", hosts=[ag.name for ag in agents], duration_s=4 * 3600)  # m is covered

        stubborn = tmp_path / "stubborn.py"
        stubborn.write_text(STUBBORN)
        pids, markers = {}, {}
        for ag in agents:
            markers[ag.name] = tmp_path / f"{ag.name}.sigterm"
            res = ag.run("--model", "m", "--artifact", aid, "--detach", "-o", "json", "--",
                         sys.executable, str(stubborn), str(markers[ag.name]))
            assert res.returncode == 0, res.stderr
            pids[ag.name] = json.loads(res.stdout)["pid"]
        wait_until(lambda: {c["location"] for c in json.loads(b.cli("copies", "m", "-o", "json", check=True)
                                                              .stdout)["copies"]}
                   >= {f"{n}:{p}" for n, p in pids.items()}, 30, "every workload as a loaded copy")

        halt = b.propose("halt", "m")
        b.sign(halt, 1, 2, 3)  # quorum through A
        wait_until(lambda: all(m.exists() for m in markers.values()), 20, "every agent to start halting")
        t_kill = time.monotonic()
        a.kill9()  # the replica holding every stream, mid-halt on every agent

        wait_until(lambda: json.loads(b.cli("order", "status", halt, "-o", "json", check=True).stdout)["state"]
                   == "complete", 60, "the halt to complete on replica B")
        elapsed = time.monotonic() - t_kill
        report = json.loads(b.cli("order", "report", halt, "-o", "json", check=True).stdout)
        rows = {h["host"]: h for h in report["hosts"]}
        for ag in agents:
            row = rows[ag.name]
            assert row["acked"] and row["verified"] and row["outcome"] == "halted", row
            assert pids[ag.name] in row["pids_stopped"], row  # the evidence of the halt A never saw
            assert row["paths_wiped"], row
        states = {(c["host"], c["location_kind"], c["state"]) for c in report["copies"]}
        assert all(s in ("wiped", "stopped", "gone", "key-suspended") for _, _, s in states), states
        text = b.cli("order", "report", halt, check=True).stdout
        assert "state: **complete**" in text and "hosts without an ack: none" in text
        for ag in agents:
            wait_until(lambda ag=ag: last_stream_addr(ag) == addr_b and ag.lease_live(),  # type: ignore[misc]
                       30, f"{ag.name} to hold a live lease from B")
        held = sum(any("holds the lease until this host acks" in e.get("msg", "") for e in ag.log_events())
                   for ag in agents)
        print(f"failover: kill -9 of A -> halt complete on B in {elapsed:.2f} s; "
              f"{held} of 3 agents acked before B gave them a lease")
    except BaseException:
        for ag in agents:
            print(f"--- agent {ag.name} ---\n{ag.log()[-3000:]}")
        print(f"--- control plane ---\n{b.log()}")
        raise
    finally:
        for ag in agents:
            ag.stop()
        b.stop()
        a.stop()


# -- the CLI's channel over replicas, against real gRPC servers ---------------------------------------


class Registry(registry_pb2_grpc.RegistryServicer):
    """GetModel answers with this replica's name, or aborts UNAVAILABLE when told to (a call
    that reached it, then failed)."""

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.calls = 0

    def GetModel(self, request: registry_pb2.GetModelRequest,
                 context: grpc.ServicerContext) -> registry_pb2.GetModelResponse:
        self.calls += 1
        if self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name}: store unavailable")
        return registry_pb2.GetModelResponse(model=registry_pb2.Model(name=self.name))


class Replicas:
    def __init__(self, pki_dir: Path) -> None:
        self.pki = ensure_dev_pki(pki_dir)
        self.servers: list[grpc.Server] = []

    def serve(self, servicer: Registry) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        registry_pb2_grpc.add_RegistryServicer_to_server(servicer, server)
        creds = grpc.ssl_server_credentials([(self.pki.server_key.read_bytes(), self.pki.server_cert.read_bytes())],
                                            root_certificates=self.pki.ca_cert.read_bytes(),
                                            require_client_auth=True)
        port = server.add_secure_port("127.0.0.1:0", creds)
        server.start()
        self.servers.append(server)
        return f"127.0.0.1:{port}"

    def config(self, *addrs: str) -> ClientConfig:
        return ClientConfig(addr=",".join(addrs), ca=self.pki.ca_cert, cert=self.pki.client_cert("security-team"),
                            key=self.pki.client_key("security-team"))

    def close(self) -> None:
        for s in self.servers:
            s.stop(grace=None)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    r = Replicas(tmp_path_factory.mktemp("replicas"))
    yield r
    r.close()


@pytest.fixture
def silent() -> Iterator[str]:
    """A TCP port that accepts connections (the kernel's backlog) and never says a word."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"127.0.0.1:{s.getsockname()[1]}"
    s.close()


DEAD = {
    "refused": lambda silent: f"127.0.0.1:{free_port()}",
    "silent": lambda silent: silent,
    "unresolvable": lambda silent: "no-such-replica.invalid:7443",
}


@pytest.mark.parametrize("kind", sorted(DEAD))
def test_the_cli_passes_over_a_dead_replica(replicas: Replicas, silent: str, kind: str) -> None:
    live = Registry("live")
    dead = DEAD[kind](silent)
    cfg = replicas.config(dead, replicas.serve(live))
    with Client(config=cfg, timeout=10) as client:
        assert isinstance(client.channel, FailoverChannel)
        client.channel.connect_timeout = 1.0  # a silent replica costs this long, once
        assert registry.get_model(client, "m").name == "live"
        assert client.addr == cfg.addrs[1]
        assert registry.get_model(client, "m").name == "live"  # and stays with the one that answered
    assert live.calls == 2


def test_every_replica_dead_is_one_clear_error_naming_them(replicas: Replicas, silent: str) -> None:
    cfg = replicas.config(f"127.0.0.1:{free_port()}", silent)
    with Client(config=cfg, timeout=2) as client, pytest.raises(BackendUnavailable) as info:
        client.channel.connect_timeout = 0.5
        registry.get_model(client, "m")
    msg = str(info.value)
    assert f"control plane at {cfg.addrs[0]}, {cfg.addrs[1]}" in msg and "\n" not in msg, msg


def test_a_call_that_reached_a_replica_is_never_repeated_on_another(replicas: Replicas) -> None:
    first, second = Registry("first", fail=True), Registry("second")
    with Client(config=replicas.config(replicas.serve(first), replicas.serve(second)), timeout=10) as client:
        with pytest.raises(BackendUnavailable, match="first: store unavailable"):
            registry.get_model(client, "m")
    assert (first.calls, second.calls) == (1, 0)  # it may have taken effect on the first


@pytest.mark.parametrize(("value", "want"), [
    ("a:1", ("a:1",)),
    ("a:1,b:2", ("a:1", "b:2")),
    (" a:1 , b:2 ,a:1", ("a:1", "b:2")),
    (["a:1", "b:2,c:3"], ("a:1", "b:2", "c:3")),  # a repeated --addr, each maybe a list
])
def test_addresses_parse_in_order_without_duplicates(value: Any, want: tuple[str, ...]) -> None:
    assert parse_addrs(value) == want


@pytest.mark.parametrize("value", ["", "a:1,,b:2", "a:1,", "a b:1"])
def test_bad_address_lists_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="bad address"):
        parse_addrs(value)


GOOD_CP = {"ca_file": "ca.pem"}
AGENT_CONFIGS = [
    ({"addr": "a:1"}, "a:1"),
    ({"addr": "a:1,b:2"}, "a:1,b:2"),
    ({"addrs": ["a:1", "[::1]:2", "a:1"]}, "a:1,[::1]:2"),
]
BAD_AGENT_CONFIGS = [
    ({"addr": "a:1", "addrs": ["b:2"]}, "not both"),
    ({"addrs": []}, "non-empty list"),
    ({"addrs": ["a:1", 7]}, "non-empty list of HOST:PORT"),
    ({"addrs": "a:1"}, "must be a list"),
    ({"addr": "a:1,no-port"}, "must be HOST:PORT, got 'no-port'"),
    ({"addrs": ["a:1", "b:x"]}, "must be HOST:PORT, got 'b:x'"),
    ({"addr": "a:1,,b:2"}, "bad address"),
    ({}, "control_plane.addr is required"),
]


@pytest.mark.parametrize(("cp", "addr"), AGENT_CONFIGS)
def test_agent_config_takes_one_address_a_comma_list_or_a_list(tmp_path: Path, cp: dict[str, Any],
                                                               addr: str) -> None:
    cfg = config_from_dict({"control_plane": {**GOOD_CP, **cp}, "scan": {"roots": ["r"]}},
                           path=tmp_path / "agent.toml")
    assert cfg.addr == addr and cfg.addrs == tuple(addr.split(","))


@pytest.mark.parametrize(("cp", "error"), BAD_AGENT_CONFIGS)
def test_agent_config_refuses_bad_addresses_in_one_line(tmp_path: Path, cp: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidInput) as info:
        config_from_dict({"control_plane": {**GOOD_CP, **cp}, "scan": {"roots": ["r"]}},
                         path=tmp_path / "agent.toml")
    assert error in str(info.value) and "\n" not in str(info.value)
