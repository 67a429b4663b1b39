"""`custos host add|remove|revoke|revocations`, `custos hosts`, `custos alerts`: enrolled hosts,
certificate revocation and custody alerts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from custos.cli.common import connect, parse_labels
from custos.cli.output import Out, table, ts
from custos.client.hosts import add_host, list_alerts, list_hosts, list_revocations, remove_host, revoke_certificate
from custos.errors import InvalidInput
from custos.v1 import custody_pb2


def host_json(h: custody_pb2.Host) -> dict[str, Any]:
    return {"name": h.name, "state": h.state, "labels": dict(h.labels), "lease_state": h.lease_state,
            "lease_expires": ts(h.lease_expires_unix_ns), "last_report": ts(h.last_report_unix_ns),
            "enrolled_at": ts(h.enrolled_at_unix_ns), "cert_fingerprint": h.cert_fingerprint,
            "files": h.files, "processes": h.processes, "guard": h.guard}


def cmd_host_add(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    resp = add_host(client, ns.name, labels=parse_labels(ns.label), token_ttl_seconds=ns.token_ttl)
    data = {**host_json(resp.host), "enrollment_token": resp.enrollment_token,
            "token_expires": ts(resp.token_expires_unix_ns)}
    out.emit(data, f"host {ns.name} added; one-time enrollment token (expires {data['token_expires']}):\n"
                   f"{resp.enrollment_token}\n"
                   f"On the host: custos agent enroll --name {ns.name} --token <token> --enroll-addr ADDR --ca CA")
    return 0


def cmd_host_remove(ns: argparse.Namespace, out: Out) -> int:
    h = host_json(remove_host(connect(ns), ns.name))
    out.emit(h, f"host {ns.name} removed: its certificate is refused, its lease revoked")
    return 0


def revocation_json(r: custody_pb2.Revocation) -> dict[str, Any]:
    return {"fingerprint": r.fingerprint, "principal": r.principal, "role": r.role, "reason": r.reason,
            "revoked_at": ts(r.revoked_at_unix_ns), "revoked_by": r.revoked_by, "not_after": ts(r.not_after_unix_ns)}


def cmd_host_revoke(ns: argparse.Namespace, out: Out) -> int:
    if sum(map(bool, (ns.name, ns.cert, ns.fingerprint))) != 1:
        raise InvalidInput("name one certificate: a HOST, --cert FILE or --fingerprint SHA256")
    pem = b""
    if ns.cert:
        try:
            pem = Path(ns.cert).read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read {ns.cert}: {exc.strerror}") from None
    resp = revoke_certificate(connect(ns), host=ns.name or "", fingerprint=ns.fingerprint or "", certificate_pem=pem,
                              reason=ns.reason or "")
    data = {"revoked": [revocation_json(r) for r in resp.revoked],
            "host": host_json(resp.host) if resp.HasField("host") else None}
    what = f"host {resp.host.name}" if resp.HasField("host") else "certificate"
    n = len(resp.revoked)
    out.emit(data, f"{what} revoked: {n} certificate{'s' if n != 1 else ''} newly refused by every replica"
             + ("" if n else " (already revoked)"))
    return 0


def cmd_host_revocations(ns: argparse.Namespace, out: Out) -> int:
    rows = [revocation_json(r) for r in list_revocations(connect(ns))]
    out.emit(rows, lambda: table(
        [[r["revoked_at"], r["fingerprint"][:16], r["principal"] or "-", r["role"] or "-", r["revoked_by"],
          r["reason"][:60]] for r in rows],
        ["REVOKED", "FINGERPRINT", "PRINCIPAL", "ROLE", "BY", "REASON"]))
    return 0


def cmd_host_wait(ns: argparse.Namespace, out: Out) -> int:
    """Wait until host NAME is enrolled with a live custody lease (an agent just started)."""
    import time

    from custos.errors import BackendUnavailable

    client = connect(ns)
    deadline = time.monotonic() + ns.wait_timeout
    while True:
        found = [h for h in list_hosts(client) if h.name == ns.name]
        if found and found[0].lease_state == "live":
            h = host_json(found[0])
            out.emit(h, f"host {ns.name}: lease live until {h['lease_expires']}")
            return 0
        if time.monotonic() >= deadline:
            state = f"lease {found[0].lease_state}" if found else "not added"
            raise BackendUnavailable(f"host {ns.name} has no live custody lease after {ns.wait_timeout:g} s ({state})")
        time.sleep(0.5)


def cmd_hosts(ns: argparse.Namespace, out: Out) -> int:
    hosts = [host_json(h) for h in list_hosts(connect(ns))]
    out.emit(hosts, lambda: table(
        [[h["name"], h["state"], h["lease_state"], h["lease_expires"], h["last_report"], str(h["files"]),
          str(h["processes"]), h["guard"] or "-"] for h in hosts],
        ["HOST", "STATE", "LEASE", "LEASE EXPIRES", "LAST REPORT", "FILES", "PROCS", "GUARD"]))
    return 0


def cmd_alerts(ns: argparse.Namespace, out: Out) -> int:
    alerts = [{"id": a.id, "rule": a.rule, "severity": a.severity, "model": a.model,
               "artifact_id": a.artifact_id, "host": a.host, "detail": a.detail, "at": ts(a.at_unix_ns),
               "state": a.state} for a in list_alerts(connect(ns), host=ns.host or "", model=ns.model or "")]
    out.emit(alerts, lambda: table(
        [[a["at"], a["severity"], a["rule"], a["host"], a["model"] or "-", a["detail"][:90]] for a in alerts],
        ["TIME", "SEVERITY", "RULE", "HOST", "MODEL", "DETAIL"]))
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    h = sub.add_parser("host", help="enrolled hosts").add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    ha = h.add_parser("add", parents=[common], help="add a host and print its one-time enrollment token")
    ha.add_argument("name", help="the host's name (as the agent will enroll)")
    ha.add_argument("--label", action="append", help="KEY=VALUE, repeatable")
    ha.add_argument("--token-ttl", type=int, default=3600, help="seconds the token stays valid")
    ha.set_defaults(fn=cmd_host_add)
    hr = h.add_parser("remove", parents=[common], help="remove a host: refuse its certificate, revoke its lease")
    hr.add_argument("name", help="an enrolled host")
    hr.set_defaults(fn=cmd_host_remove)
    hv = h.add_parser("revoke", parents=[common],
                      help="revoke a host's certificates, or any client certificate: refused everywhere at once")
    hv.add_argument("name", nargs="?", help="the host whose certificates to revoke")
    hv.add_argument("--cert", help="a client certificate (PEM file) to revoke, a person's included")
    hv.add_argument("--fingerprint", help="a certificate's SHA-256 (of its DER, hex) to revoke")
    hv.add_argument("--reason", help="why, for the record")
    hv.set_defaults(fn=cmd_host_revoke)
    hw = h.add_parser("wait", parents=[common], help="wait until a host has a live custody lease")
    hw.add_argument("name", help="the host to wait for")
    hw.add_argument("--for", dest="wait_timeout", type=float, default=60.0, metavar="SECONDS",
                    help="give up after this many seconds (exit 5; default 60)")
    hw.set_defaults(fn=cmd_host_wait)
    hl = h.add_parser("revocations", parents=[common], help="revoked certificates")
    hl.set_defaults(fn=cmd_host_revocations)
    hs = sub.add_parser("hosts", parents=[common], help="enrolled hosts, their leases and last reports")
    hs.set_defaults(fn=cmd_hosts)
    alp = sub.add_parser("alerts", parents=[common], help="alerts: unregistered weights, unauthorized copies, ...")
    alp.add_argument("--host", help="only this host's alerts")
    alp.add_argument("--model", help="only this model's alerts")
    alp.set_defaults(fn=cmd_alerts)
