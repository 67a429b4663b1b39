"""The control plane on a real 3-member etcd cluster loses nothing when a member dies.

kill -9 of the member the control plane talks to (the first endpoint of its store URL),
and separately of the cluster's leader, in the middle of artifact registrations and in
the middle of a halt: every registration is acknowledged and whole, the halt completes
with every host's ack — the order reaching hosts on a second replica through the
Store's watch, which resumes after the failover — and the audit chain verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from custos.cli.demo import generate_model
from custos.core.orders import Order
from custos.v1 import custody_pb2
from tests.controlplane.test_server_process import _check_consistent
from tests.e2e.conftest import wait_until
from tests.servers.agentsim import SimHost, enroll
from tests.servers.custos import DevServer
from tests.servers.etcd import EtcdCluster, find_binary

pytestmark = [pytest.mark.slow, pytest.mark.backend]


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    if find_binary("etcd") is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is required in CI and is missing", pytrace=False)
        pytest.skip("etcd not installed")
    with EtcdCluster(3) as c:
        yield c


def _plan(cluster: EtcdCluster, victim: str) -> tuple[str, int]:
    """Endpoints in the order the store URL lists them (the first is the member in use)
    and the member to kill: a follower in use, or the leader while a follower is in use."""
    lead = cluster.leader()
    follower, other = (i for i in range(3) if i != lead)
    order = [follower, other, lead]
    endpoints = ",".join(cluster.members[i].endpoint for i in order)
    return endpoints, follower if victim == "in-use" else lead


@pytest.mark.parametrize("victim", ["in-use", "leader"])
def test_kill_9_mid_registrations_loses_nothing(tmp_path: Path, cluster: EtcdCluster, victim: str) -> None:
    endpoints, dead = _plan(cluster, victim)
    prefix = f"reg-{victim}-{int(time.time() * 1000)}"
    srv = DevServer(tmp_path / "d", store=f"etcd://{endpoints}/{prefix}").start()
    try:
        srv.cli("model", "register", "crash", "--training-flops", "3e26", check=True)
        dirs = []
        for i in range(15):
            generate_model(tmp_path / f"w{i}", seed=300 + i, layers=2, width=16, shards=1)
            dirs.append(tmp_path / f"w{i}")
        done: list[str] = []
        failed: list[str] = []

        def worker(chunk: list[Path]) -> None:
            parent = None
            for d in chunk:
                args = ["artifact", "register", "crash", str(d), "-o", "json", "--timeout", "30"]
                if parent:
                    args += ["--parent", parent, "--relation", "fine-tune"]
                res = srv.cli(*args)
                if res.returncode != 0:
                    failed.append(res.stderr)
                    continue
                parent = json.loads(res.stdout)["id"]
                done.append(parent)

        threads = [threading.Thread(target=worker, args=(dirs[i::3],)) for i in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: len(done) >= 5, 60, "the first registrations")
        cluster.kill(dead)
        for t in threads:
            t.join()
        assert failed == [] and len(done) == 15  # not one registration refused across the failover
        assert "Traceback" not in srv.log()
        _check_consistent(srv, endpoints, prefix, done)
    finally:
        srv.stop()


def _hosts_with_copies(a: DevServer, b: DevServer, tmp_path: Path, n: int) -> tuple[list[SimHost], str]:
    """``n`` simulated hosts on replica B, each reporting a plaintext copy of model m."""
    a.cli("model", "register", "m", "--training-flops", "3e26", check=True)
    w = tmp_path / "w"
    w.mkdir()
    blob = b"\x07" * 4096
    (w / "x.safetensors").write_bytes(blob)
    a.cli("push", "m", str(w), check=True)
    hosts = []
    for i in range(n):
        h = enroll(a.env, f"gpu-f{i}")
        h.open_stream(b.env["CUSTOS_ADDR"])
        assert h.next_of("lease").ttl_seconds > 0
        h.send(custody_pb2.AgentMessage(inventory=custody_pb2.Inventory(full=True, files=[
            custody_pb2.FileRecord(path="/data/m/x.safetensors", size=len(blob), form="plaintext",
                                   sha256=hashlib.sha256(blob).hexdigest())])))
        hosts.append(h)

    def copies_on_hosts() -> bool:
        out = json.loads(a.cli("copies", "m", "-o", "json", check=True).stdout)
        return {c["host"] for c in out["copies"] if c["location_kind"] == "host-path"} == {h.name for h in hosts}

    wait_until(copies_on_hosts, 30, "every host's copy")
    return hosts, hashlib.sha256(blob).hexdigest()


def _ack(host: SimHost, oid: str) -> None:
    signed = host.next_of("order", timeout=60)
    assert Order.decode(signed.body).id == oid
    host.send(custody_pb2.AgentMessage(ack=custody_pb2.OrderAck(
        order_id=oid, verified=True, outcome="halted", paths_wiped=["/data/m"],
        received_unix_ns=time.time_ns(), done_unix_ns=time.time_ns())))


@pytest.mark.parametrize(("victim", "when"), [("in-use", "at quorum"), ("leader", "between acks")])
def test_kill_9_mid_halt_completes_with_every_ack(tmp_path: Path, cluster: EtcdCluster, victim: str,
                                                  when: str) -> None:
    endpoints, dead = _plan(cluster, victim)
    store = f"etcd://{endpoints}/halt-{victim.replace(' ', '-')}-{int(time.time() * 1000)}"
    shared = tmp_path / "shared"
    a = DevServer(shared, store=store).start()
    env_a = dict(a.env)
    b = DevServer(shared, store=store).start()  # the hosts' replica: orders reach it by the watch
    a.env = env_a
    hosts: list[SimHost] = []
    try:
        hosts, _ = _hosts_with_copies(a, b, tmp_path, 4)
        oid = a.propose("halt", "m")
        a.sign(oid, 1, 2)
        if when == "at quorum":  # the member dies while the last signature executes the order
            signer = threading.Thread(target=a.sign, args=(oid, 3))
            signer.start()
            time.sleep(0.3)
            cluster.kill(dead)
            signer.join()
            for h in hosts:
                _ack(h, oid)
        else:  # executed and fanned out; half the hosts have acked when the leader dies
            a.sign(oid, 3)
            _ack(hosts[0], oid)
            _ack(hosts[1], oid)
            cluster.kill(dead)
            _ack(hosts[2], oid)
            _ack(hosts[3], oid)

        def complete() -> bool:
            return json.loads(a.cli("order", "status", oid, "-o", "json", check=True).stdout)["state"] == "complete"

        wait_until(complete, 60, "the halt to complete")
        report = json.loads(a.cli("order", "report", oid, "-o", "json", check=True).stdout)
        rows = {h["host"]: h for h in report["hosts"]}
        assert all(rows[h.name]["acked"] and rows[h.name]["outcome"] == "halted" for h in hosts), rows
        states = {c["host"]: c["state"] for c in report["copies"] if c["host"].startswith("gpu-f")}
        assert states == {h.name: "wiped" for h in hosts}
        verified = json.loads(a.cli("audit", "verify", "-o", "json", check=True).stdout)
        assert verified["ok"], verified
        assert "Traceback" not in a.log() and "Traceback" not in b.log()
    finally:
        for h in hosts:
            h.close()
        b.stop()
        a.stop()
