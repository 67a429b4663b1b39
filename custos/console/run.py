"""Assembling a console: where its state lives, how it reaches the control plane, and its origin.

The state directory (0700) holds ``users.json`` (users, passkeys, enrollment
tokens), ``rotations.json`` (prepared signer-set rotations), ``audit-state.json``
(the console's trusted audit state) and, in development, ``tls/`` (its dev
certificate). ``--dev --data-dir D`` takes everything else from a dev server's
data dir: the control plane's address from D/dev.env, its CA and the per-role
client certificates under D/tls/, the audit key D/audit-signing.pub, and the
state directory D/console.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from custos.client.connection import parse_addrs, parse_dev_env
from custos.console import tls
from custos.console.app import ConsoleApp, ConsoleConfig
from custos.console.backend import ControlPlane, ControlPlaneConfig
from custos.console.rotations import RotationStore
from custos.console.server import ConsoleHTTPServer
from custos.console.users import UserStore
from custos.errors import InvalidInput
from custos.fs.private import private_dir

DEFAULT_LISTEN = "127.0.0.1:8443"


@dataclass
class Setup:
    state_dir: Path
    listen: str = DEFAULT_LISTEN
    origin: str | None = None  # None: https://localhost:PORT (dev only)
    rp_id: str | None = None  # None: the origin's host
    tls_cert: Path | None = None
    tls_key: Path | None = None
    control_plane: ControlPlaneConfig | None = None
    require_uv: bool = True

    def users(self) -> UserStore:
        return UserStore(self.state_dir / "users.json")


def dev_setup(data_dir: Path, *, listen: str | None = None, need_server: bool = True) -> Setup:
    """A development console beside ``custos server --dev --data-dir data_dir``. Raises InvalidInput."""
    state = data_dir / "console"
    if not need_server:
        return Setup(state_dir=state)
    env = parse_dev_env(data_dir / "dev.env")
    for k in ("CUSTOS_ADDR", "CUSTOS_CA", "CUSTOS_CERT_DIR"):
        if not env.get(k):
            raise InvalidInput(f"{data_dir / 'dev.env'} has no {k}: is it a dev server's data dir?")
    cert, key = tls.issue_dev_certificate(data_dir / "tls" / "ca.pem", data_dir / "tls" / "ca.key",
                                          state / "tls")
    audit_key = Path(env["CUSTOS_AUDIT_PUBKEY"]) if env.get("CUSTOS_AUDIT_PUBKEY") else None
    cp = ControlPlaneConfig(addrs=parse_addrs(env["CUSTOS_ADDR"]), ca=Path(env["CUSTOS_CA"]),
                            cert_dir=Path(env["CUSTOS_CERT_DIR"]),
                            audit_key=audit_key if audit_key and audit_key.is_file() else None,
                            audit_state=state / "audit-state.json")
    return Setup(state_dir=state, listen=listen or DEFAULT_LISTEN, tls_cert=cert, tls_key=key, control_plane=cp)


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidInput(f"bad --listen {listen!r}: want HOST:PORT (PORT 0 picks one)")
    return host, int(port)


def open_console(setup: Setup) -> tuple[ConsoleHTTPServer, ConsoleApp]:
    """Bind the HTTPS listener and build the app on it (not serving yet). Raises InvalidInput."""
    if setup.tls_cert is None or setup.tls_key is None:
        raise InvalidInput("the console serves HTTPS only: give --tls-cert and --tls-key (or use --dev)")
    if setup.control_plane is None:
        raise InvalidInput("no control plane configured: give --addr, --ca and --client-certs (or use --dev)")
    context = tls.server_context(setup.tls_cert, setup.tls_key)
    private_dir(setup.state_dir)
    host, port = split_listen(setup.listen)
    try:
        server = ConsoleHTTPServer((host, port), None, context)  # the app comes next: its origin names the port
    except OSError as exc:
        raise InvalidInput(f"cannot listen on {setup.listen}: {exc.strerror}") from None
    origin = setup.origin or f"https://localhost:{server.port}"
    rp_id = setup.rp_id or (urlsplit(origin).hostname or "")
    try:
        cfg = ConsoleConfig(origin=origin, rp_id=rp_id, require_uv=setup.require_uv,
                            audit_key=setup.control_plane.audit_key, audit_state=setup.control_plane.audit_state
                            or setup.state_dir / "audit-state.json")
    except InvalidInput:
        server.server_close()
        raise
    app = ConsoleApp(cfg, users=setup.users(), rotation_store=RotationStore(setup.state_dir / "rotations.json"),
                     control_plane=ControlPlane(setup.control_plane))
    server.app = app
    return server, app
