"""`custos console` (serve the web console) and `custos console add-user|remove-user|users`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from custos.cli.common import duration
from custos.cli.output import Out, table, ts
from custos.client.connection import parse_addrs
from custos.console import run, tls
from custos.console.backend import ControlPlaneConfig
from custos.console.users import ROLES, UserStore
from custos.errors import InvalidInput


class _Stop(Exception):
    pass


def _setup(ns: argparse.Namespace, *, serving: bool) -> run.Setup:
    """The console's setup from the flags. Raises InvalidInput."""
    if getattr(ns, "dev", False):
        if not getattr(ns, "data_dir", None):
            raise InvalidInput("--dev needs --data-dir (the dev server's data dir)")
        s = run.dev_setup(Path(ns.data_dir), listen=getattr(ns, "listen", None), need_server=serving)
        if getattr(ns, "state_dir", None):
            s.state_dir = Path(ns.state_dir)
    else:
        if not getattr(ns, "state_dir", None):
            raise InvalidInput("give --state-dir (or --dev --data-dir D)")
        s = run.Setup(state_dir=Path(ns.state_dir), listen=getattr(ns, "listen", None) or run.DEFAULT_LISTEN)
        if serving:
            missing = [f for f, v in (("--origin", ns.origin), ("--tls-cert", ns.tls_cert), ("--tls-key", ns.tls_key),
                                      ("--addr", ns.addr), ("--ca", ns.ca), ("--client-certs", ns.client_certs))
                       if not v]
            if missing:
                raise InvalidInput("the console needs " + ", ".join(missing) + " (or --dev --data-dir D)")
            s.tls_cert, s.tls_key = Path(ns.tls_cert), Path(ns.tls_key)
            s.control_plane = ControlPlaneConfig(
                addrs=parse_addrs(ns.addr), ca=Path(ns.ca), cert_dir=Path(ns.client_certs), timeout=ns.timeout,
                audit_key=Path(ns.audit_key) if ns.audit_key else None, audit_state=s.state_dir / "audit-state.json")
    if serving:
        s.origin = ns.origin or s.origin
        s.rp_id = ns.rp_id or s.rp_id
        if ns.tls_cert and ns.tls_key:
            s.tls_cert, s.tls_key = Path(ns.tls_cert), Path(ns.tls_key)
    return s


def _enroll_text(name: str, role: str, token: str, origin: str | None) -> str:
    where = f"{origin}/#/enroll/{token}" if origin else f"https://<console>/#/enroll/{token}"
    return (f"console user {name} ({role}): open this one-time link in the browser that holds (or will make) "
            f"the passkey:\n  {where}\n  (token {token}; it works once)")


def cmd_console(ns: argparse.Namespace, out: Out) -> int:
    logging.basicConfig(level=getattr(logging, (ns.log_level or "info").upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    setup = _setup(ns, serving=True)
    server, app = run.open_console(setup)
    assert setup.control_plane is not None and setup.tls_cert is not None
    served = app.cp.served_roles(ROLES) if app.cp is not None else []
    pin = tls.spki_sha256_b64(setup.tls_cert.read_bytes())
    lines = [f"custos console: {app.cfg.origin}/ (passkey rp id {app.cfg.rp_id}; control plane "
             f"{', '.join(setup.control_plane.addrs)}; roles served: {', '.join(served) or 'none'})",
             f"  TLS certificate {setup.tls_cert} (SPKI sha256 {pin})", f"  state {setup.state_dir}"]
    if ns.dev:
        lines.append("  DEVELOPMENT: the certificate is from the dev server's CA, the client certificates are the "
                     "dev roles'")
    users = setup.users()
    first = None
    if ns.first_user and not users.users():
        first = (ns.first_user, ns.first_role, users.add_user(ns.first_user, ns.first_role))
    elif not users.users():
        lines.append("  no console users yet: `custos console add-user NAME --role executive "
                     f"{'--dev --data-dir ' + ns.data_dir if ns.dev else '--state-dir ' + str(setup.state_dir)}`")
    print("\n".join(lines), flush=True)
    if first is not None:
        print(_enroll_text(first[0], first[1], first[2], app.cfg.origin), flush=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.5)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        server.server_close()
        if app.cp is not None:
            app.cp.close()
    return 0


def cmd_add_user(ns: argparse.Namespace, out: Out) -> int:
    setup = _setup(ns, serving=False)
    token = setup.users().add_user(ns.name, ns.role, ttl_s=duration(ns.ttl))
    origin = getattr(ns, "origin", None)
    out.emit({"user": ns.name, "role": ns.role, "enrollment_token": token,
              "enrollment_path": f"/#/enroll/{token}"}, _enroll_text(ns.name, ns.role, token, origin))
    return 0


def cmd_remove_user(ns: argparse.Namespace, out: Out) -> int:
    user = _setup(ns, serving=False).users().remove_user(ns.name)
    out.emit({"user": user.name, "removed": True, "passkeys": len(user.credentials)},
             f"removed console user {user.name} and {len(user.credentials)} passkey(s); their sessions end now")
    return 0


def cmd_users(ns: argparse.Namespace, out: Out) -> int:
    users = UserStore(_setup(ns, serving=False).state_dir / "users.json").users()
    rows: list[dict[str, Any]] = [{"user": u.name, "role": u.role, "passkeys": len(u.credentials),
                                   "created": ts(u.created_ns)} for u in users]
    out.emit(rows, lambda: table([[r["user"], r["role"], str(r["passkeys"]), r["created"]] for r in rows],
                                 ["USER", "ROLE", "PASSKEYS", "CREATED"]))
    return 0


def _state_options(p: argparse.ArgumentParser, *, sub: bool) -> None:
    d = argparse.SUPPRESS if sub else None
    p.add_argument("--dev", action="store_true", default=argparse.SUPPRESS if sub else False,
                   help="development: beside `custos server --dev --data-dir D` (its dev.env, CA, role certificates)")
    p.add_argument("--data-dir", default=d, help="the dev server's data dir (with --dev); state in DATA_DIR/console")
    p.add_argument("--state-dir", default=d, help="the console's state directory (users, passkeys, rotations)")
    p.add_argument("--output", "-o", choices=["text", "json"], default=argparse.SUPPRESS if sub else "text",
                   help="output format")


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    c = sub.add_parser("console", help="serve the web console (HTTPS; passkey login and signing)",
                       description="Serve the web console to browsers: the fleet, orders and their signing with "
                       "passkeys, shutdowns in progress, incidents, access requests, audit verification.")
    _state_options(c, sub=False)
    c.add_argument("--listen", help=f"address to serve HTTPS on (default {run.DEFAULT_LISTEN}; port 0 picks one)")
    c.add_argument("--origin", help="the https://HOST[:PORT] browsers use (dev: https://localhost:PORT)")
    c.add_argument("--rp-id", help="the passkeys' relying-party id (default: the origin's host)")
    c.add_argument("--tls-cert", help="the console's HTTPS certificate (PEM; dev: issued by the dev CA)")
    c.add_argument("--tls-key", help="the key of --tls-cert")
    c.add_argument("--addr", help="control plane host:port[,host:port...]")
    c.add_argument("--ca", help="CA certificate of the control plane")
    c.add_argument("--client-certs", help="directory of ROLE.pem/ROLE.key client certificates the console calls "
                   "the control plane with (executive, auditor, security-team)")
    c.add_argument("--audit-key", help="the audit checkpoint public key (PEM) audit verification pins")
    c.add_argument("--timeout", type=float, default=15.0, help="seconds per control-plane call")
    c.add_argument("--first-user", help="with no users yet: create this user and print its enrollment link")
    c.add_argument("--first-role", choices=ROLES, default="executive", help="the role of --first-user")
    c.add_argument("--log-level", help="debug, info, warning, error")
    c.set_defaults(fn=cmd_console)
    cs = c.add_subparsers(dest="console_cmd", metavar="SUBCOMMAND")
    a = cs.add_parser("add-user", help="add a console user (or another passkey of one) and print a one-time "
                      "enrollment link")
    a.add_argument("name", help="user name (also their signer name if their passkey joins the signer set)")
    a.add_argument("--role", required=True, choices=ROLES, help="what the user may see and do")
    a.add_argument("--ttl", default="24h", help="how long the enrollment link works (e.g. 30m, 24h)")
    a.add_argument("--origin", default=argparse.SUPPRESS, help="the console's origin, to print the full link")
    _state_options(a, sub=True)
    a.set_defaults(fn=cmd_add_user)
    r = cs.add_parser("remove-user", help="remove a console user and their passkeys")
    r.add_argument("name", help="user name")
    _state_options(r, sub=True)
    r.set_defaults(fn=cmd_remove_user)
    u = cs.add_parser("users", help="list console users")
    _state_options(u, sub=True)
    u.set_defaults(fn=cmd_users)
