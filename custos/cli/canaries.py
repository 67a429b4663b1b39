"""`custos canary plant|list|remove`: decoy weight files on hosts, where any open is an incident."""

from __future__ import annotations

import argparse
from typing import Any

from custos.cli.common import connect
from custos.cli.output import Out, size, table, ts
from custos.client.canaries import list_canaries, plant_canary, remove_canary, wait_planted
from custos.v1 import canaries_pb2


def canary_json(c: canaries_pb2.Canary) -> dict[str, Any]:
    return {"id": c.id, "host": c.host, "path": c.path, "model": c.model, "state": c.state, "origin": c.origin,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in c.files], "error": c.error,
            "created_at": ts(c.created_at_unix_ns), "created_by": c.created_by,
            "planted_at": ts(c.planted_at_unix_ns), "removed_at": ts(c.removed_at_unix_ns),
            "removed_by": c.removed_by}


def _files_text(c: dict[str, Any]) -> str:
    return "\n".join(f"  {f['path']}  {size(f['size'])}  sha256 {f['sha256'][:16]}" for f in c["files"])


def cmd_plant(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    resp = plant_canary(client, host=ns.host, path=ns.path, model=ns.model or "")
    c = resp.canary
    if ns.wait:
        c = wait_planted(client, c, timeout=ns.wait)
    data = {**canary_json(c), "delivered": resp.delivered}
    if c.state == "planted":
        text = f"canary {c.id} planted on {c.host} at {c.path}: {len(c.files)} decoy files\n" + _files_text(data)
    else:
        when = "sent to the host now" if resp.delivered else "delivered when the host connects"
        text = f"canary {c.id} recorded for {c.host}:{c.path} ({c.state}; {when})"
    out.emit(data, text)
    return 0


def cmd_list(ns: argparse.Namespace, out: Out) -> int:
    rows = [canary_json(c) for c in list_canaries(connect(ns), host=ns.host or "")]
    out.emit(rows, lambda: table(
        [[r["id"], r["host"], r["state"], r["path"], str(len(r["files"])), r["model"] or "-", r["origin"],
          r["created_at"], (r["error"] or "")[:60]] for r in rows],
        ["ID", "HOST", "STATE", "PATH", "FILES", "MODEL", "ORIGIN", "CREATED", "ERROR"]))
    return 0


def cmd_remove(ns: argparse.Namespace, out: Out) -> int:
    c = canary_json(remove_canary(connect(ns), ns.id))
    out.emit(c, f"canary {c['id']} removed; delete its {len(c['files'])} decoy files on {c['host']} "
                f"(under {c['path']}): the agent stops watching files that are gone")
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    c = sub.add_parser("canary", help="canaries: decoy weight files on hosts; any open is an incident") \
        .add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")
    cp = c.add_parser("plant", parents=[common], help="have a host's agent write decoy weight files")
    cp.add_argument("--host", required=True, help="the enrolled host whose agent writes the decoys")
    cp.add_argument("--path", required=True, help="absolute directory on the host, under one of its scan roots")
    cp.add_argument("--model", help="a registered model the decoys imitate (names, sizes)")
    cp.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                    help="wait this long for the agent's answer (exit 6 if it refused, 5 if none came)")
    cp.set_defaults(fn=cmd_plant)
    cl = c.add_parser("list", parents=[common], help="canaries and their state")
    cl.add_argument("--host", help="only this host's canaries")
    cl.set_defaults(fn=cmd_list)
    cr = c.add_parser("remove", parents=[common], help="mark a canary removed (its files stay on the host)")
    cr.add_argument("id", help="canary id or a unique prefix of 6+ hex digits")
    cr.set_defaults(fn=cmd_remove)
