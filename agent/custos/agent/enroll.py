"""Enrollment: trade a one-time token and a CSR for this host's client certificate.

The EC key is generated here and never leaves the host (written 0600 before
the CSR is sent). The enrollment listener is server-authenticated TLS only:
the agent verifies the control plane against the CA it was given and has no
client certificate yet. What enrollment stores, in STATE_DIR/identity/ (0700):

    agent.key         the host's private key (0600)
    agent.pem         its certificate (CN = host name, OU = agent)
    ca.pem            the CA that verifies the control plane
    client-ca.pem     the CA that signed agent.pem (as returned by the server)
    signer-set.bin    the signer set to pin for order verification (may be empty)
    enrollment.json   host name, fingerprint, lease TTL, enrollment time

Every file is written to a temporary name and renamed, the key last, so a
failed enrollment leaves the previous identity (if any) intact.

A renewal (custos.agent.renew) replaces ``agent.key`` and ``agent.pem`` with a
fresh pair: the new key is on disk as ``agent.key.renew`` before its CSR leaves,
the certificate is written as ``agent.pem.renew``, then both are renamed into
place. :func:`finish_renewal` completes (or drops) a swap a crash cut short, so
the key and certificate read for a connection are always a pair.

In development mode :func:`dev_enroll` first adds the host itself, with the
dev security-team certificate, then enrolls it the same way.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from custos.agent.config import AgentConfig
from custos.agent.stream import Credentials, open_channel, rpc_error
from custos.core.hosts import cert_fingerprint, validate_host_name
from custos.errors import Conflict, FailedPrecondition, IntegrityError, InvalidInput
from custos.fs.private import private_dir, write_private
from custos.v1 import custody_pb2, custody_pb2_grpc

log = logging.getLogger("custos.agent")

IDENTITY_DIR = "identity"
RENEW_KEY = "agent.key.renew"
RENEW_CERT = "agent.pem.renew"


@dataclass(frozen=True, slots=True)
class Identity:
    """An enrolled host identity on disk."""

    name: str
    directory: Path
    fingerprint: str
    lease_ttl: int
    signer_set: bytes

    @property
    def key_file(self) -> Path:
        return self.directory / "agent.key"

    @property
    def cert_file(self) -> Path:
        return self.directory / "agent.pem"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"


def make_key_and_csr(name: str) -> tuple[bytes, bytes]:
    """A fresh P-256 key (PKCS#8 PEM) and a CSR for CN=``name``. Raises InvalidInput."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr_for(key_pem, name)


def csr_for(key_pem: bytes, name: str) -> bytes:
    """A CSR (PEM) for CN=``name`` signed by ``key_pem``. Raises InvalidInput."""
    validate_host_name(name)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError:
        raise InvalidInput("unreadable private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInput("the host key must be an EC key")
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


async def request_certificate(enroll_addr: str, ca_pem: bytes, *, name: str, token: str, csr_pem: bytes,
                              server_name: str = "", call_timeout: float = 30.0) -> custody_pb2.EnrollResponse:
    """Call Enrollment.Enroll over server-authenticated TLS.

    Raises Unauthorized (bad, used or expired token), InvalidInput, FailedPrecondition,
    BackendUnavailable (cannot reach or verify the enrollment listener).
    """
    channel = open_channel(enroll_addr, grpc.ssl_channel_credentials(root_certificates=ca_pem), server_name)
    try:
        stub = custody_pb2_grpc.EnrollmentStub(channel)
        return await stub.Enroll(custody_pb2.EnrollRequest(name=name, token=token, csr_pem=csr_pem),
                                 timeout=call_timeout)
    except grpc.aio.AioRpcError as exc:
        raise rpc_error(exc, f"enrollment of {name!r} at {enroll_addr}") from None
    finally:
        await channel.close()


def check_issued(cert_pem: bytes, key_pem: bytes, name: str) -> None:
    """Raises IntegrityError unless ``cert_pem`` is for host ``name`` and carries ``key_pem``'s key."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError:
        raise IntegrityError("the control plane returned an unreadable certificate") from None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or cns[0].value != name:
        raise IntegrityError(f"the certificate returned is not for host {name!r}")
    ours = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    theirs = cert.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    if ours != theirs:
        raise IntegrityError("the certificate returned does not carry this host's key")


async def enroll(*, enroll_addr: str, ca_file: Path, name: str, token: str, state_dir: Path,
                 server_name: str = "", call_timeout: float = 30.0) -> Identity:
    """Enroll this host and store its identity under ``state_dir``.

    Raises InvalidInput (bad name, token or CA file), Unauthorized (refused token),
    BackendUnavailable, IntegrityError (a certificate that is not ours), FailedPrecondition.
    """
    validate_host_name(name)
    if not token or len(token) > 512:
        raise InvalidInput("an enrollment token is required (from `custos host add NAME`)")
    try:
        ca_pem = ca_file.read_bytes()  # noqa: ASYNC240 - a small local file, once
        x509.load_pem_x509_certificate(ca_pem)
    except OSError as exc:
        raise InvalidInput(f"cannot read CA certificate {ca_file}: {exc.strerror}") from None
    except ValueError:
        raise InvalidInput(f"{ca_file} is not a PEM certificate") from None
    ident_dir = private_dir(private_dir(state_dir) / IDENTITY_DIR)
    key_pem, csr_pem = make_key_and_csr(name)
    pending_key = ident_dir / "agent.key.pending"
    write_private(pending_key, key_pem)  # on disk (0600) before the CSR leaves
    try:
        resp = await request_certificate(enroll_addr, ca_pem, name=name, token=token, csr_pem=csr_pem,
                                         server_name=server_name, call_timeout=call_timeout)
        cert_pem = bytes(resp.certificate_pem)
        check_issued(cert_pem, key_pem, name)
        fp = cert_fingerprint(cert_pem)
        write_private(ident_dir / "ca.pem", ca_pem, mode=0o644)
        write_private(ident_dir / "client-ca.pem", bytes(resp.ca_pem), mode=0o644)
        write_private(ident_dir / "signer-set.bin", bytes(resp.signer_set))
        meta = {"name": name, "cert_sha256": fp, "lease_ttl_seconds": int(resp.lease_ttl_seconds),
                "enrolled_at_unix_ns": time.time_ns(), "enroll_addr": enroll_addr}
        write_private(ident_dir / "enrollment.json", json.dumps(meta, sort_keys=True).encode())
        for stale in (RENEW_KEY, RENEW_CERT):  # a renewal of the identity this one replaces
            (ident_dir / stale).unlink(missing_ok=True)
        # Certificate and key are swapped in last, key first: a reader holding
        # the old certificate then fails its handshake and retries.
        os.replace(pending_key, ident_dir / "agent.key")
        write_private(ident_dir / "agent.pem", cert_pem, mode=0o644)
    finally:
        pending_key.unlink(missing_ok=True)
    return Identity(name=name, directory=ident_dir, fingerprint=fp, lease_ttl=int(resp.lease_ttl_seconds),
                    signer_set=bytes(resp.signer_set))


def _pair(cert_pem: bytes, key_pem: bytes) -> bool:
    """Does the certificate carry this private key's public key?"""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError:
        return False
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki))


def _sync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install_renewed(ident_dir: Path, cert_pem: bytes) -> str:
    """Swap in a renewed certificate and its key (already on disk as ``agent.key.renew``);
    its fingerprint. A crash at any point leaves the old pair or the new one once
    :func:`finish_renewal` has run. Raises IntegrityError (not the pending key's), OSError."""
    key_pem = (ident_dir / RENEW_KEY).read_bytes()
    if not _pair(cert_pem, key_pem):
        raise IntegrityError("the renewed certificate does not carry the key this host sent")
    write_private(ident_dir / RENEW_CERT, cert_pem, mode=0o644)
    os.replace(ident_dir / RENEW_KEY, ident_dir / "agent.key")
    os.replace(ident_dir / RENEW_CERT, ident_dir / "agent.pem")
    _sync_dir(ident_dir)
    fp = cert_fingerprint(cert_pem)
    meta_path = ident_dir / "enrollment.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    meta.update(cert_sha256=fp, renewed_at_unix_ns=time.time_ns())
    write_private(meta_path, json.dumps(meta, sort_keys=True).encode())
    return fp


def finish_renewal(ident_dir: Path) -> None:
    """Complete a renewal a crash cut short, or drop its leftovers, so that ``agent.key`` and
    ``agent.pem`` are a pair. A lone ``agent.key.renew`` stays: the control plane may have
    certified it already, and the next renewal asks again with the same key. Raises OSError."""
    new_cert = ident_dir / RENEW_CERT
    if not new_cert.exists():
        return
    cert_pem = new_cert.read_bytes()
    new_key = ident_dir / RENEW_KEY
    if new_key.exists() and _pair(cert_pem, new_key.read_bytes()):
        os.replace(new_key, ident_dir / "agent.key")  # stopped before the key moved
        os.replace(new_cert, ident_dir / "agent.pem")
    elif (ident_dir / "agent.key").exists() and _pair(cert_pem, (ident_dir / "agent.key").read_bytes()):
        os.replace(new_cert, ident_dir / "agent.pem")  # stopped between the two renames
    else:
        new_cert.unlink()
    _sync_dir(ident_dir)
    log.warning("completed a certificate renewal that was interrupted", extra={"fields": {"dir": str(ident_dir)}})


def load_identity(state_dir: Path, name: str) -> Identity | None:
    """The enrolled identity for host ``name`` in ``state_dir``, or None if there is none.

    Raises FailedPrecondition (an identity for another host, unreadable files).
    """
    d = state_dir / IDENTITY_DIR
    meta_path = d / "enrollment.json"
    try:
        finish_renewal(d)
    except OSError as exc:
        raise FailedPrecondition(f"cannot complete the certificate renewal in {d}: {exc}") from None
    if not meta_path.exists() or not (d / "agent.pem").exists() or not (d / "agent.key").exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        cert_pem = (d / "agent.pem").read_bytes()
        signer_set = (d / "signer-set.bin").read_bytes() if (d / "signer-set.bin").exists() else b""
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"cannot read the identity in {d}: {exc}") from None
    if meta.get("name") != name:
        raise FailedPrecondition(f"{d} holds the identity of host {meta.get('name')!r}, not {name!r}: "
                                 "use another state_dir or enroll again")
    try:
        fp = cert_fingerprint(cert_pem)
    except InvalidInput:
        raise FailedPrecondition(f"{d / 'agent.pem'} is not a readable certificate") from None
    return Identity(name=name, directory=d, fingerprint=fp, lease_ttl=int(meta.get("lease_ttl_seconds", 0)),
                    signer_set=signer_set)


def read_credentials(*, ca_file: Path, cert_file: Path, key_file: Path) -> Credentials:
    """The mTLS material for one connection attempt: a certificate and the key it carries
    (completing a renewal a crash cut short). Raises FailedPrecondition (missing, unreadable,
    not a pair)."""
    def read() -> tuple[bytes, bytes, bytes]:
        return ca_file.read_bytes(), cert_file.read_bytes(), key_file.read_bytes()

    try:
        ca, cert, key = read()
        if not _pair(cert, key) and cert_file.name == "agent.pem":
            finish_renewal(cert_file.parent)  # a renewal a crash cut short
            ca, cert, key = read()
    except OSError as exc:
        raise FailedPrecondition(f"cannot read this host's identity ({exc.filename}: {exc.strerror}): "
                                 "enroll first with `custos agent enroll`") from None
    try:
        fp = cert_fingerprint(cert)
    except InvalidInput:
        raise FailedPrecondition(f"{cert_file} is not a readable certificate") from None
    if not _pair(cert, key):
        raise FailedPrecondition(f"{key_file} is not the key of {cert_file}: enroll again")
    return Credentials(ca_pem=ca, cert_pem=cert, key_pem=key, fingerprint=fp)


# -- dev mode -----------------------------------------------------------------------------------


async def dev_enroll(cfg: AgentConfig) -> Identity:
    """DEVELOPMENT ONLY: add this host with the dev security-team certificate, then enroll it.

    Raises Conflict (the host exists but this state dir has no identity for it),
    InvalidInput, BackendUnavailable, Unauthorized.
    """
    if cfg.dev_admin_cert is None or cfg.dev_admin_key is None:
        raise InvalidInput("dev enrollment needs the dev security-team certificate")
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cfg.ca_file.read_bytes(),
                                             private_key=cfg.dev_admin_key.read_bytes(),
                                             certificate_chain=cfg.dev_admin_cert.read_bytes())
    except OSError as exc:
        raise InvalidInput(f"cannot read the dev certificates ({exc.filename}: {exc.strerror})") from None
    channel = open_channel(cfg.addrs[0], creds, cfg.server_name)  # dev: the one local server
    try:
        resp = await custody_pb2_grpc.CustodyStub(channel).AddHost(
            custody_pb2.AddHostRequest(name=cfg.name, labels={"dev": "true"}), timeout=30)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
            raise Conflict(f"host {cfg.name!r} already exists on the control plane but {cfg.state_dir} has no "
                           f"identity for it: `custos host remove {cfg.name}` first, or pick another --name") from None
        raise rpc_error(exc, f"adding host {cfg.name!r}") from None
    finally:
        await channel.close()
    ident = await enroll(enroll_addr=cfg.enroll_addr, ca_file=cfg.ca_file, name=cfg.name,
                         token=resp.enrollment_token, state_dir=cfg.state_dir, server_name=cfg.server_name)
    log.warning("DEVELOPMENT MODE: added and enrolled this host with the dev security-team certificate",
                extra={"fields": {"host": cfg.name, "cert_sha256": ident.fingerprint[:16]}})
    return ident
