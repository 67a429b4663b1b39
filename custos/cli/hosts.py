"""`custos host add|remove`, `custos hosts`, `custos alerts`: enrolled hosts and custody alerts."""

from __future__ import annotations

import argparse
from typing import Any

from custos.cli.common import connect, parse_labels
from custos.cli.output import Out, table, ts
from custos.client.hosts import add_host, list_alerts, list_hosts, remove_host
from custos.v1 import custody_pb2


def host_json(h: custody_pb2.Host) -> dict[str, Any]:
    return {"name": h.name, "state": h.state, "labels": dict(h.labels), "lease_state": h.lease_state,
            "lease_expires": ts(h.lease_expires_unix_ns), "last_report": ts(h.last_report_unix_ns),
            "enrolled_at": ts(h.enrolled_at_unix_ns), "cert_fingerprint": h.cert_fingerprint,
            "files": h.files, "processes": h.processes}


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


def cmd_hosts(ns: argparse.Namespace, out: Out) -> int:
    hosts = [host_json(h) for h in list_hosts(connect(ns))]
    out.emit(hosts, lambda: table(
        [[h["name"], h["state"], h["lease_state"], h["lease_expires"], h["last_report"], str(h["files"]),
          str(h["processes"])] for h in hosts],
        ["HOST", "STATE", "LEASE", "LEASE EXPIRES", "LAST REPORT", "FILES", "PROCS"]))
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
    ha.add_argument("name")
    ha.add_argument("--label", action="append", help="KEY=VALUE, repeatable")
    ha.add_argument("--token-ttl", type=int, default=3600, help="seconds the token stays valid")
    ha.set_defaults(fn=cmd_host_add)
    hr = h.add_parser("remove", parents=[common], help="remove a host: refuse its certificate, revoke its lease")
    hr.add_argument("name")
    hr.set_defaults(fn=cmd_host_remove)
    hs = sub.add_parser("hosts", parents=[common], help="enrolled hosts, their leases and last reports")
    hs.set_defaults(fn=cmd_hosts)
    alp = sub.add_parser("alerts", parents=[common], help="alerts: unregistered weights, unauthorized copies, ...")
    alp.add_argument("--host")
    alp.add_argument("--model")
    alp.set_defaults(fn=cmd_alerts)
