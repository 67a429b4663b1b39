"""A protocol-level stand-in for a host agent: enroll through the real
enrollment listener and hold a real custody stream. Used where a test needs
many hosts or exact control over what an "agent" sends (multi-replica fan-out,
injected orders); the real daemon is tested in tests/e2e/."""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from custos.agent.enroll import make_key_and_csr
from custos.v1 import custody_pb2, custody_pb2_grpc


def _channel(addr: str, ca: bytes, cert: bytes | None = None, key: bytes | None = None) -> grpc.Channel:
    return grpc.secure_channel(addr, grpc.ssl_channel_credentials(ca, key, cert))


@dataclass
class SimHost:
    name: str
    cert: bytes
    key: bytes
    ca: bytes
    signer_set: bytes
    inbox: queue.Queue[Any] = field(default_factory=queue.Queue)
    outbox: queue.Queue[Any] = field(default_factory=queue.Queue)
    thread: threading.Thread | None = None
    error: BaseException | None = None

    def open_stream(self, addr: str) -> None:
        """Connect to the custody stream (in a thread); messages land in ``inbox``."""
        def requests() -> Any:
            while True:
                item = self.outbox.get()
                if item is None:
                    return
                yield item

        def run() -> None:
            ch = _channel(addr, self.ca, self.cert, self.key)
            try:
                stub = custody_pb2_grpc.CustodyStub(ch)
                for msg in stub.Stream(requests()):
                    self.inbox.put(msg)
            except grpc.RpcError as exc:
                self.error = exc
            finally:
                ch.close()
                self.inbox.put(None)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def send(self, msg: custody_pb2.AgentMessage) -> None:
        self.outbox.put(msg)

    def close(self) -> None:
        self.outbox.put(None)
        if self.thread is not None:
            self.thread.join(10)

    def next_of(self, kind: str, timeout: float = 15.0) -> Any:
        """The next ControlMessage carrying ``kind`` (lease, order, notice)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind} message within {timeout}s")
            msg = self.inbox.get(timeout=left)
            if msg is None:
                raise ConnectionError(f"stream closed: {self.error}")
            if msg.WhichOneof("msg") == kind:
                return getattr(msg, kind)


def enroll(env: dict[str, str], name: str) -> SimHost:
    """AddHost as the dev security team, then Enroll with a fresh key and CSR."""
    ca = Path(env["CUSTOS_CA"]).read_bytes()
    d = Path(env["CUSTOS_CERT_DIR"])
    admin = _channel(env["CUSTOS_ADDR"], ca, (d / "security-team.pem").read_bytes(),
                     (d / "security-team.key").read_bytes())
    token = custody_pb2_grpc.CustodyStub(admin).AddHost(custody_pb2.AddHostRequest(name=name), timeout=10)
    admin.close()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    enroll_ch = grpc.secure_channel(env["CUSTOS_ENROLL_ADDR"], grpc.ssl_channel_credentials(ca))
    resp = custody_pb2_grpc.EnrollmentStub(enroll_ch).Enroll(custody_pb2.EnrollRequest(
        name=name, token=token.enrollment_token, csr_pem=csr.public_bytes(serialization.Encoding.PEM)), timeout=10)
    enroll_ch.close()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return SimHost(name=name, cert=resp.certificate_pem, key=key_pem, ca=resp.ca_pem, signer_set=resp.signer_set)


async def enroll_fleet(env: dict[str, str], n: int, *, prefix: str, concurrency: int = 2) -> list[tuple[bytes, bytes]]:
    """Add and enroll ``n`` hosts PREFIX-00000... as the dev security team; their (key, certificate)
    PEMs. Audited mutations share one hash chain, so more concurrency only adds retries."""
    certs = Path(env["CUSTOS_CERT_DIR"])
    ca = Path(env["CUSTOS_CA"]).read_bytes()  # noqa: ASYNC240 - small local files, once
    admin = grpc.aio.secure_channel(env["CUSTOS_ADDR"], grpc.ssl_channel_credentials(
        ca, (certs / "security-team.key").read_bytes(), (certs / "security-team.pem").read_bytes()))
    enroll_ch = grpc.aio.secure_channel(env["CUSTOS_ENROLL_ADDR"], grpc.ssl_channel_credentials(ca))
    custody = custody_pb2_grpc.CustodyStub(admin)
    enrollment = custody_pb2_grpc.EnrollmentStub(enroll_ch)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> tuple[bytes, bytes]:
        name = f"{prefix}-{i:05d}"
        key, csr = make_key_and_csr(name)
        async with sem:
            added = await custody.AddHost(custody_pb2.AddHostRequest(name=name), timeout=60)
            got = await enrollment.Enroll(custody_pb2.EnrollRequest(
                name=name, token=added.enrollment_token, csr_pem=csr), timeout=60)
        return key, bytes(got.certificate_pem)

    try:
        return list(await asyncio.gather(*[one(i) for i in range(n)]))
    finally:
        await admin.close()
        await enroll_ch.close()
