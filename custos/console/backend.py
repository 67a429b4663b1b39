"""The console's side of the control plane: one client per console role, through the client library.

The console holds a control-plane client certificate for each role it serves
(``ROLE.pem`` / ``ROLE.key`` in one directory: executive, auditor,
security-team) and makes each user's calls with the certificate of that user's
role, so the control plane's own policy (custos.controlplane.authz) decides what
each page may show: an executive's console cannot read the audit log because an
executive cannot. The console never holds a signer key; a passkey signature is
made in the browser and only passed on (custos.client.orders.attach).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from custos.client.connection import ClientConfig
from custos.client.session import Client
from custos.errors import FailedPrecondition, InvalidInput


@dataclass(frozen=True)
class ControlPlaneConfig:
    """Where the control plane is and which certificates the console calls it with."""

    addrs: tuple[str, ...]
    ca: Path
    cert_dir: Path
    timeout: float = 15.0
    audit_key: Path | None = None  # the audit checkpoint key to pin (PEM), if known
    audit_state: Path | None = None  # the console's trusted audit state


class ControlPlane:
    """Lazily made clients, one per role; thread-safe (gRPC channels are)."""

    def __init__(self, cfg: ControlPlaneConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._clients: dict[str, Client] = {}

    def served_roles(self, roles: tuple[str, ...]) -> list[str]:
        return [r for r in roles if (self.cfg.cert_dir / f"{r}.pem").is_file()
                and (self.cfg.cert_dir / f"{r}.key").is_file()]

    def client(self, role: str) -> Client:
        """The client for ``role``. Raises FailedPrecondition if the console has no certificate for it."""
        with self._lock:
            c = self._clients.get(role)
            if c is not None:
                return c
            cert, key = self.cfg.cert_dir / f"{role}.pem", self.cfg.cert_dir / f"{role}.key"
            if not cert.is_file() or not key.is_file():
                raise FailedPrecondition(f"this console has no control-plane certificate for the role {role} "
                                         f"({cert}): ask its operator")
            try:
                c = Client(config=ClientConfig(addr=self.cfg.addrs[0], addrs=self.cfg.addrs, ca=self.cfg.ca,
                                               cert=cert, key=key, role=role), timeout=self.cfg.timeout)
            except InvalidInput as exc:
                raise FailedPrecondition(f"the console's certificate for {role}: {exc}") from None
            self._clients[role] = c
            return c

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()
