"""Certificate renewal: this host's certificate is replaced well before it expires, with a
fresh key that never leaves the host.

:class:`CertificateRenewal` waits until two thirds of the current certificate's
lifetime have passed (a few percent earlier at random, so a fleet enrolled together
does not renew at once), writes a new key (``agent.key.renew``, 0600) before its CSR
leaves, calls ``Custody.RenewCertificate`` over the custody stream's channel (so with
the certificate the control plane knows, and to whichever replica the stream reached)
and swaps the returned certificate in (custos.agent.enroll.install_renewed). The
stream's next connection presents the new certificate; the control plane accepts the
old one until it expires, and then closes a stream still open with it, which makes
the agent reconnect.

A failed attempt is retried every second to every minute, as the time left allows.
A key written before a crash is sent again: if the control plane certified it and the
reply was lost, it certifies it again; no other key may renew with the old
certificate. A certificate that expires unrenewed is refused by the control plane:
the lease lapses and the agent fails closed, like any host cut off (promise 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from cryptography import x509

from custos.agent.enroll import RENEW_KEY, check_issued, csr_for, install_renewed, make_key_and_csr
from custos.agent.stream import rpc_error
from custos.errors import CustosError, FailedPrecondition
from custos.fs.private import write_private
from custos.v1 import custody_pb2, custody_pb2_grpc

log = logging.getLogger("custos.agent.renew")

RENEW_AT = 2 / 3  # of the certificate's lifetime
JITTER = 0.05  # up to this fraction of the lifetime earlier
RETRY_MIN, RETRY_MAX = 1.0, 60.0
CHECK_EVERY = 60.0  # re-read the certificate at least this often (a re-enrollment replaces it)


def renewal_due(cert: x509.Certificate, *, jitter: float = 0.0) -> float:
    """When (unix seconds) to renew ``cert``: at ``RENEW_AT`` of its lifetime, ``jitter`` (a
    fraction of the lifetime) earlier."""
    start = cert.not_valid_before_utc.timestamp()
    life = cert.not_valid_after_utc.timestamp() - start
    return start + life * (RENEW_AT - jitter)


class CertificateRenewal:
    """Renews the enrolled identity in ``identity_dir``; run :meth:`run` as one task.

    ``channel()`` gives the custody stream's channel while it is connected, else None.
    """

    def __init__(self, *, identity_dir: Path, name: str, channel: Callable[[], grpc.aio.Channel | None],
                 call_timeout: float = 30.0, rng: random.Random | None = None) -> None:
        self.dir = identity_dir
        self.name = name
        self._channel = channel
        self.call_timeout = call_timeout
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self.renewals = 0
        self.last_error: str | None = None

    def _current(self) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate((self.dir / "agent.pem").read_bytes())
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"cannot read {self.dir / 'agent.pem'}: {exc}") from None

    async def run(self, stop: asyncio.Event) -> None:
        jitter = self._rng.uniform(0, JITTER)
        while not stop.is_set():
            try:
                cert = self._current()
            except FailedPrecondition as exc:
                self.last_error = str(exc)
                await _wait(stop, 5.0)
                continue
            now = time.time()
            expires = cert.not_valid_after_utc.timestamp()
            # A key left by an interrupted renewal: ask again now, with that key.
            due = now if (self.dir / RENEW_KEY).exists() else renewal_due(cert, jitter=jitter)
            if now < due:
                await _wait(stop, min(due - now, CHECK_EVERY))
                continue
            channel = self._channel()
            if channel is None:
                await _wait(stop, RETRY_MIN)  # not connected: the stream is reconnecting
                continue
            try:
                await self.renew_once(channel)
                jitter = self._rng.uniform(0, JITTER)
                continue
            except (CustosError, OSError) as exc:
                self.last_error = str(exc)
                left = expires - time.time()
                log.log(logging.WARNING if left > 0 else logging.ERROR,
                        "certificate renewal failed; retrying" if left > 0 else
                        "certificate expired unrenewed: this host fails closed until it is enrolled again",
                        extra={"fields": {"error": str(exc), "expires_in_s": round(left, 1)}})
                await _wait(stop, min(RETRY_MAX, max(RETRY_MIN, left / 20)) * self._rng.uniform(0.8, 1.2))

    async def renew_once(self, channel: grpc.aio.Channel) -> str:
        """One renewal over ``channel``; the new certificate's fingerprint. Raises CustosError
        (refused, unreachable, not our certificate), OSError (the identity directory)."""
        pending = self.dir / RENEW_KEY
        if pending.exists():
            key_pem = pending.read_bytes()
            csr_pem = csr_for(key_pem, self.name)
        else:
            key_pem, csr_pem = make_key_and_csr(self.name)
            write_private(pending, key_pem)  # on disk before the CSR leaves
        try:
            resp = await custody_pb2_grpc.CustodyStub(channel).RenewCertificate(
                custody_pb2.RenewCertificateRequest(csr_pem=csr_pem), timeout=self.call_timeout)
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc, "renewing this host's certificate") from None
        cert_pem = bytes(resp.certificate_pem)
        check_issued(cert_pem, key_pem, self.name)
        fp = install_renewed(self.dir, cert_pem)
        self.renewals += 1
        self.last_error = None
        log.info("certificate renewed; the next connection uses it", extra={"fields": {
            "cert_sha256": fp[:16], "not_after_unix_ns": int(resp.not_after_unix_ns)}})
        return fp


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
