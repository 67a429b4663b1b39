"""A reconnect storm: 2,000 hosts open their custody streams at once against one control plane.

What every agent does after a control-plane restart. 2,000 distinct hosts are
enrolled through the API (AddHost + Enroll with a fresh key and CSR each),
then each opens its own mTLS channel and stream at the same moment. Every
stream must get its lease, stay open until all 2,000 are open together, get a
heartbeat answered, and end cleanly: none may be CANCELLED or refused.
"""

from __future__ import annotations

import asyncio
import collections
import resource
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from custos.v1 import custody_pb2, custody_pb2_grpc
from tests.servers.agentsim import enroll_fleet
from tests.servers.custos import DevServer

pytestmark = pytest.mark.slow

HOSTS = 2000
# AddHost and Enroll are audited mutations on one hash chain: a little
# concurrency keeps the chain busy, more only adds conflicts and retries.
ENROLL_CONCURRENCY = 2


@pytest.fixture(scope="module")
def storm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 3 * HOSTS + 512  # both ends of 2,000 connections live in this process and the server
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.fail(f"open-file limit {hard} is below the {need} this test needs", pytrace=False)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))  # the server inherits it
    server = DevServer(tmp_path_factory.mktemp("storm")).start()
    yield server
    server.stop()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _pem(server: DevServer) -> tuple[bytes, bytes, bytes]:
    """(CA, security-team key, security-team certificate) of the dev server."""
    certs = Path(server.env["CUSTOS_CERT_DIR"])
    return (Path(server.env["CUSTOS_CA"]).read_bytes(), (certs / "security-team.key").read_bytes(),
            (certs / "security-team.pem").read_bytes())


async def test_two_thousand_streams_at_once_none_cancelled(storm_server: DevServer) -> None:
    pem = _pem(storm_server)
    identities = await enroll_fleet(storm_server.env, HOSTS, prefix="storm", concurrency=ENROLL_CONCURRENCY)
    ca = pem[0]
    addr = storm_server.env["CUSTOS_ADDR"]
    all_open = asyncio.Event()
    opened = 0

    async def agent(key: bytes, cert: bytes) -> str:
        nonlocal opened
        ch = grpc.aio.secure_channel(addr, grpc.ssl_channel_credentials(ca, key, cert))
        try:
            call = custody_pb2_grpc.CustodyStub(ch).Stream()
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("msg") != "lease":
                return f"no lease: {first!r}"
            opened += 1
            if opened == HOSTS:
                all_open.set()
            await all_open.wait()  # every stream is open at this point
            await call.write(custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat(sent_unix_ns=1)))
            second = await call.read()
            if second is grpc.aio.EOF or second.WhichOneof("msg") != "lease":
                return f"heartbeat not answered: {second!r}"
            if second.lease.expires_unix_ns < first.lease.expires_unix_ns:
                return "the renewed lease expires earlier"
            await call.done_writing()
            return "ok"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        finally:
            await ch.close()

    outcomes = collections.Counter(await asyncio.wait_for(
        asyncio.gather(*[agent(k, c) for k, c in identities]), timeout=120))
    assert outcomes == {"ok": HOSTS}, outcomes
    assert "CANCELLED" not in outcomes
