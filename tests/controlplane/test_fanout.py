"""Two control-plane replicas on one real etcd: an order executed through one
reaches an agent connected to the other (the Store's watch), and that agent's
ack completes it. Also: enrollment is one-time, and a removed host is refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from custos.core.orders import Order
from custos.v1 import custody_pb2
from tests.servers.agentsim import enroll
from tests.servers.custos import DevServer


def test_order_reaches_agents_of_every_replica(tmp_path: Path, etcd_server) -> None:  # type: ignore[no-untyped-def]
    store = f"etcd://{etcd_server.endpoint}/fanout-{int(time.time() * 1000)}"
    shared = tmp_path / "shared"
    a = DevServer(shared, store=store).start()
    env_a = dict(a.env)
    b = DevServer(shared, store=store).start()
    try:
        a.env = env_a
        a.cli("model", "register", "m", "--training-flops", "3e26", check=True)
        w = tmp_path / "w"
        w.mkdir()
        (w / "x.safetensors").write_bytes(b"\x01" * 4096)
        a.cli("push", "m", str(w), check=True)

        host = enroll(env_a, "gpu-b1")
        host.open_stream(b.env["CUSTOS_ADDR"])  # connected to replica B
        lease = host.next_of("lease")
        assert lease.ttl_seconds > 0
        # The host reports the file: a copy on a host of the model.
        host.send(custody_pb2.AgentMessage(inventory=custody_pb2.Inventory(full=True, files=[
            custody_pb2.FileRecord(path="/data/m/x.safetensors", size=4096, form="plaintext",
                                   sha256=__import__("hashlib").sha256(b"\x01" * 4096).hexdigest())])))

        out = a.cli("order", "propose", "--action", "halt", "--model", "m", "--reason", "fan-out test",
                    "-o", "json", role="executive", check=True).stdout
        oid = json.loads(out)["id"]
        for i in (1, 2, 3):
            a.cli("order", "sign", oid, "--key", str(shared / "signers" / f"exec{i}.key"), role="executive",
                  check=True)  # through replica A
        signed = host.next_of("order", timeout=20)
        assert Order.decode(signed.body).id == oid and len(signed.signatures) >= 3
        host.send(custody_pb2.AgentMessage(ack=custody_pb2.OrderAck(
            order_id=oid, verified=True, outcome="halted", paths_wiped=["/data/m"],
            received_unix_ns=time.time_ns(), done_unix_ns=time.time_ns())))
        deadline = time.monotonic() + 20
        state = ""
        while time.monotonic() < deadline and state != "complete":
            state = json.loads(a.cli("order", "status", oid, "-o", "json", check=True).stdout)["state"]
            time.sleep(0.2)
        assert state == "complete"
        report = json.loads(a.cli("order", "report", oid, "-o", "json", check=True).stdout)
        rows = {h["host"]: h for h in report["hosts"]}
        assert rows["gpu-b1"]["acked"] and rows["gpu-b1"]["outcome"] == "halted"
        copy = [c for c in report["copies"] if c["host"] == "gpu-b1"]
        assert copy and copy[0]["state"] == "wiped"
        host.close()
    finally:
        b.stop()
        a.stop()


def test_enrollment_is_one_time_and_removal_is_final(tmp_path: Path) -> None:
    srv = DevServer(tmp_path / "d").start()
    try:
        host = enroll(srv.env, "gpu-r1")
        host.open_stream(srv.env["CUSTOS_ADDR"])
        host.next_of("lease")
        # Reusing the token fails.
        from custos.v1 import custody_pb2_grpc

        ch = grpc.secure_channel(srv.env["CUSTOS_ENROLL_ADDR"], grpc.ssl_channel_credentials(host.ca))
        with pytest.raises(grpc.RpcError) as err:
            custody_pb2_grpc.EnrollmentStub(ch).Enroll(custody_pb2.EnrollRequest(
                name="gpu-r1", token="guess", csr_pem=b"x"), timeout=10)
        assert err.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
        srv.cli("host", "remove", "gpu-r1", check=True)
        notice = host.next_of("notice")
        assert "removed" in notice
        host.close()
        again = type(host)(name=host.name, cert=host.cert, key=host.key, ca=host.ca, signer_set=b"")
        again.open_stream(srv.env["CUSTOS_ADDR"])
        with pytest.raises(ConnectionError):
            again.next_of("lease", timeout=10)
        assert again.error is not None and again.error.code() == grpc.StatusCode.PERMISSION_DENIED
        hosts = json.loads(srv.cli("hosts", "-o", "json", check=True).stdout)
        assert hosts[0]["state"] == "removed" and hosts[0]["lease_state"] == "revoked"
    finally:
        srv.stop()
