"""Certificates: the dev CA, server and per-role client certificates.

A caller's identity is its client certificate: the subject CN is the principal
(a person, a service or a host), the subject OU is its role. Only certificates
signed by the deployment's CA are accepted (mTLS on every connection). In
production an operator's CA or Vault PKI issues the same shape of certificate.

Agent certificates are short (``AGENT_CERT_TTL``, 30 days by default) and renewed
by the agent with a fresh key before they expire (docs/agent.md, "Certificates").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from custos.client.signerkeys import dev_private_key
from custos.core.access import Approver
from custos.core.signers import SignerKey
from custos.errors import InvalidInput
from custos.fs.private import private_dir, write_private

ROLES = ("security-team", "agent", "executive", "auditor", "admin")
AGENT_CERT_TTL = 30 * 86400.0  # seconds an agent certificate is valid; the agent renews at 2/3 of it
AGENT_CERT_TTL_RANGE = (10.0, 366 * 86400.0)  # below an hour is for tests only


@dataclass(frozen=True, slots=True)
class Identity:
    principal: str
    role: str
    not_after_ns: int = 0  # the certificate's expiry (unix ns)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str = "Custos dev CA", days: int = 3650) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "custos")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidInput("CA key must be an EC key")
        return cls(cert, key)

    def save(self, cert_path: Path, key_path: Path) -> None:
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        private_dir(key_path.parent)
        write_private(cert_path, self.cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        write_private(key_path, _key_pem(self.key))

    def issue(
        self,
        *,
        common_name: str,
        role: str | None,
        server_names: list[str] | None = None,
        days: int = 365,
    ) -> tuple[bytes, bytes]:
        """Issue a leaf certificate; returns (cert PEM, key PEM).

        Client certificates carry the role in the subject OU. Raises InvalidInput.
        """
        if role is not None and role not in ROLES:
            raise InvalidInput(f"unknown role {role!r}; want one of {', '.join(ROLES)}")
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "custos")]
        if role is not None:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server_names:
            sans: list[x509.GeneralName] = []
            for n in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def identity_from_pem(pem: bytes) -> Identity:
    """Read (principal, role) from a verified client certificate. Raises InvalidInput."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise InvalidInput("unreadable client certificate") from None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(cns) != 1 or len(ous) != 1:
        raise InvalidInput("client certificate must carry exactly one CN and one OU (role)")
    role = str(ous[0].value)
    if role not in ROLES:
        raise InvalidInput(f"client certificate has unknown role {role!r}")
    return Identity(principal=str(cns[0].value), role=role,
                    not_after_ns=int(cert.not_valid_after_utc.timestamp() * 1e9))


def public_key_id(key: CertificatePublicKeyTypes) -> str:
    """SHA-256 of a public key's SubjectPublicKeyInfo (DER), hex: which key a certificate or CSR carries."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def sign_agent_csr(ca: CertificateAuthority, csr: x509.CertificateSigningRequest, host: str, *,
                   ttl_seconds: float) -> x509.Certificate:
    """An agent certificate for ``host`` (O = custos, OU = agent, CN = host) over the CSR's key,
    valid ``ttl_seconds`` from now. Only the control plane checks it, against its own clock, so
    ``not_before`` is set back little: a fifth of the lifetime, at most 5 minutes."""
    now = _now()
    back = dt.timedelta(seconds=min(300.0, ttl_seconds / 5))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "custos"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "agent"),
            x509.NameAttribute(NameOID.COMMON_NAME, host),
        ]))
        .issuer_name(ca.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - back)
        .not_valid_after(now + dt.timedelta(seconds=ttl_seconds))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


@dataclass(frozen=True)
class DevPKI:
    """Paths of the dev PKI under a data dir."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "tls" / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "tls" / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "tls" / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "tls" / "server.key"

    @property
    def client_dir(self) -> Path:
        return self.root / "tls" / "clients"

    def client_cert(self, role: str) -> Path:
        return self.client_dir / f"{role}.pem"

    def client_key(self, role: str) -> Path:
        return self.client_dir / f"{role}.key"


def ensure_dev_pki(data_dir: Path) -> DevPKI:
    """Create (once) a dev CA, a loopback server certificate and one client per role."""
    pki = DevPKI(data_dir)
    private_dir(data_dir / "tls")
    if pki.ca_cert.exists() and pki.ca_key.exists():
        ca = CertificateAuthority.load(pki.ca_cert, pki.ca_key)
    else:
        ca = CertificateAuthority.create()
        ca.save(pki.ca_cert, pki.ca_key)
    if not pki.server_cert.exists():
        cert, key = ca.issue(common_name="custos-server", role=None,
                             server_names=["localhost", "127.0.0.1", "::1"])
        write_private(pki.server_key, key)
        write_private(pki.server_cert, cert, mode=0o644)
    private_dir(pki.client_dir)
    for role in ROLES:
        if not pki.client_cert(role).exists():
            cert, key = ca.issue(common_name=f"dev-{role}", role=role)
            write_private(pki.client_key(role), key)
            write_private(pki.client_cert(role), cert, mode=0o644)
    # Two people of the security team, so the two-person rule can be tried: sec1 (whose
    # identity the default security-team certificate also is) requests, sec2 approves.
    for name in DEV_APPROVERS:
        if not pki.client_cert(name).exists():
            cert, key = ca.issue(common_name=name, role="security-team")
            write_private(pki.client_key(name), key)
            write_private(pki.client_cert(name), cert, mode=0o644)
    return pki


DEV_APPROVERS = ("sec1", "sec2")


def dev_approvers(data_dir: Path) -> list[Approver]:
    """sec1 and sec2 as approvers, with Ed25519 keys under ``data_dir/approvers`` (no
    passphrase: development only). sec1 is also the default ``dev-security-team`` identity."""
    directory = data_dir / "approvers"
    private_dir(directory)
    out = []
    for name in DEV_APPROVERS:
        path = directory / f"{name}.key"
        priv = dev_private_key(path)
        principals = (name, "dev-security-team") if name == "sec1" else (name,)
        out.append(Approver(name=name, principals=principals,
                            keys=(SignerKey.from_ed25519(priv.public_key(), name=name),)))
    return out
