"""Connect to the control plane: addresses, mTLS material and role from env or flags.

Environment (what `source D/dev.env` sets):
    CUSTOS_ADDR       host:port of the control plane
    CUSTOS_CA         CA certificate that signed the server's certificate
    CUSTOS_CERT, CUSTOS_KEY        this caller's client certificate and key, or
    CUSTOS_CERT_DIR + CUSTOS_ROLE  a directory of ROLE.pem / ROLE.key (dev)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from custos.errors import InvalidInput


@dataclass
class ClientConfig:
    addr: str
    ca: Path
    cert: Path
    key: Path
    role: str = ""

    @classmethod
    def from_env(
        cls,
        *,
        addr: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        role: str | None = None,
    ) -> ClientConfig:
        """Flags win over environment. Raises InvalidInput naming what is missing."""
        env = os.environ
        addr = addr or env.get("CUSTOS_ADDR")
        ca = ca or env.get("CUSTOS_CA")
        role = role or env.get("CUSTOS_ROLE", "")
        cert = cert or (env.get("CUSTOS_CERT") if not role or role == env.get("CUSTOS_ROLE") else None)
        key = key or (env.get("CUSTOS_KEY") if not role or role == env.get("CUSTOS_ROLE") else None)
        cert_dir = env.get("CUSTOS_CERT_DIR")
        if (not cert or not key) and cert_dir and role:
            cert = cert or str(Path(cert_dir) / f"{role}.pem")
            key = key or str(Path(cert_dir) / f"{role}.key")
        missing = [n for n, v in (("CUSTOS_ADDR (--addr)", addr), ("CUSTOS_CA (--ca)", ca),
                                  ("CUSTOS_CERT (--tls-cert)", cert), ("CUSTOS_KEY (--tls-key)", key)) if not v]
        if missing:
            raise InvalidInput(
                "not configured: " + ", ".join(missing)
                + " — run `custos server --dev --data-dir D` and `source D/dev.env`"
            )
        return cls(addr=str(addr), ca=Path(str(ca)), cert=Path(str(cert)), key=Path(str(key)),
                   role=role)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(p: Path, what: str) -> bytes:
            try:
                return p.read_bytes()
            except OSError as exc:
                raise InvalidInput(f"cannot read {what} {p}: {exc.strerror}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca, "CA certificate"),
            private_key=read(self.key, "client key"),
            certificate_chain=read(self.cert, "client certificate"),
        )

    def channel(self) -> grpc.Channel:
        return grpc.secure_channel(self.addr, self.credentials(),
                                   options=[("grpc.max_receive_message_length", 64 << 20)])

    def aio_channel(self) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self.addr, self.credentials(),
                                       options=[("grpc.max_receive_message_length", 64 << 20)])
