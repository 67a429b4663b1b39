"""Host identity rules shared by the control plane and its agents: names and certificate pins."""

from __future__ import annotations

import hashlib
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from custos.errors import InvalidInput

HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def validate_host_name(name: str) -> str:
    """Raises InvalidInput unless ``name`` is a DNS-like host name (a-z 0-9 . -)."""
    if not isinstance(name, str) or not HOST_NAME.match(name):
        raise InvalidInput(f"bad host name {name!r}: want a-z 0-9 . - (a DNS-like name)")
    return name


def cert_fingerprint(pem: bytes) -> str:
    """SHA-256 of the certificate's DER, hex (what the control plane pins). Raises InvalidInput."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise InvalidInput("unreadable certificate") from None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
