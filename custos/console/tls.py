"""The console's HTTPS: a server TLS context, and in development a certificate from the dev CA.

Browsers use WebAuthn only in a secure context and refuse it on a certificate
error, so the console serves HTTPS only. In production the operator gives a
certificate (``--tls-cert`` / ``--tls-key``) for the name browsers use, which is
also the passkeys' relying-party id. ``custos console --dev`` issues one for
``localhost``, ``127.0.0.1`` and ``::1`` from the dev server's CA
(DATA_DIR/tls/ca.pem and ca.key — development only) into the console's state
directory, once.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from custos.errors import InvalidInput
from custos.fs.private import private_dir, write_private

DEV_NAMES = ("localhost", "127.0.0.1", "::1")


def issue_dev_certificate(ca_cert: Path, ca_key: Path, out_dir: Path, *, days: int = 365) -> tuple[Path, Path]:
    """(certificate, key) paths of the console's dev certificate under ``out_dir``, issued by the dev
    CA if not there yet. Raises InvalidInput (no dev CA)."""
    cert_path, key_path = out_dir / "console.pem", out_dir / "console.key"
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    try:
        ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read the dev CA ({ca_cert}, {ca_key}): {exc} — is this a dev server's "
                           "data dir?") from None
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise InvalidInput("the dev CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for n in DEV_NAMES:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "custos"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, "custos-console (dev)")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    private_dir(out_dir)
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path


def spki_sha256_b64(cert_pem: bytes) -> str:
    """Base64 SHA-256 of the certificate's SubjectPublicKeyInfo: what Chromium's
    ``--ignore-certificate-errors-spki-list`` and HPKP-style pins name."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context. Raises InvalidInput if the certificate or key cannot be loaded."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"cannot load the console's TLS certificate {cert} / key {key}: {exc}") from None
    return ctx
