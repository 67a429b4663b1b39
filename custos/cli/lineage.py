"""`custos lineage` and `custos copies`: derivatives, and every copy of a model and its derivatives."""

from __future__ import annotations

import argparse

from custos.cli.common import connect, enum_name
from custos.cli.output import Out, table, ts
from custos.client.registry import lineage, list_copies
from custos.client.wire import RELATION_FROM_PB
from custos.core.lineage import render_tree
from custos.v1 import registry_pb2


def cmd_lineage(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    direction = registry_pb2.LINEAGE_DIRECTION_BOTH
    if ns.ancestors and not ns.descendants:
        direction = registry_pb2.LINEAGE_DIRECTION_ANCESTORS
    elif ns.descendants and not ns.ancestors:
        direction = registry_pb2.LINEAGE_DIRECTION_DESCENDANTS
    subject = ns.subject
    resp = lineage(client, subject, direction)
    nodes = {n.artifact_id: n for n in resp.nodes}
    edges = [{"parent": e.parent, "child": e.child, "relation": RELATION_FROM_PB.get(e.relation, "?")}
             for e in resp.edges]
    data = {"subject": subject, "models": list(resp.models),
            "nodes": [{"artifact_id": n.artifact_id, "model": n.model, "subject": n.subject}
                      for n in resp.nodes], "edges": edges}

    def label(aid: str) -> str:
        n = nodes.get(aid)
        return f"{aid[:12]}  {n.model if n else '?'}"

    def text() -> str:
        subjects = [n.artifact_id for n in resp.nodes if n.subject]
        parts = []
        if direction != registry_pb2.LINEAGE_DIRECTION_DESCENDANTS:
            ups = {a: [(e["relation"], e["parent"]) for e in edges if e["child"] == a] for a in nodes}
            parts.append("ancestors (child <- parent):\n" + render_tree(subjects, lambda a: ups.get(a, []), label))
        if direction != registry_pb2.LINEAGE_DIRECTION_ANCESTORS:
            downs = {a: [(e["relation"], e["child"]) for e in edges if e["parent"] == a] for a in nodes}
            parts.append("descendants (parent -> child):\n" + render_tree(subjects, lambda a: downs.get(a, []), label))
        parts.append("models: " + ", ".join(resp.models))
        return "\n\n".join(parts)

    out.emit(data, text)
    return 0


def cmd_copies(ns: argparse.Namespace, out: Out) -> int:
    resp = list_copies(connect(ns), ns.model, exclude_derivatives=ns.no_derivatives)
    copies = [{
        "id": x.id, "artifact_id": x.artifact_id, "model": x.model,
        "location_kind": enum_name(registry_pb2.LocationKind, x.location_kind, "LOCATION_KIND_"),
        "location": x.location, "host": x.host,
        "form": enum_name(registry_pb2.CopyForm, x.form, "COPY_FORM_"),
        "authorized": x.authorized, "state": x.state,
        "first_seen": ts(x.first_seen_unix_ns), "last_seen": ts(x.last_seen_unix_ns),
        "files_matched": x.files_matched, "files_total": x.files_total,
    } for x in resp.copies]
    data = {"model": ns.model, "models": list(resp.models), "artifacts": list(resp.artifact_ids),
            "copies": copies}

    def text() -> str:
        head = (f"model {ns.model} and derivatives: {', '.join(resp.models)}\n"
                f"{len(resp.artifact_ids)} artifacts, {len(copies)} known copies\n")
        return head + table(
            [[x["model"], x["artifact_id"][:12], x["form"], x["location_kind"], x["location"],
              "yes" if x["authorized"] else "NO", x["state"],
              f"{x['files_matched']}/{x['files_total']}" if x["files_total"] else "-", x["last_seen"]]
             for x in copies],
            ["MODEL", "ARTIFACT", "FORM", "KIND", "LOCATION", "AUTH", "STATE", "FILES", "LAST SEEN"])

    out.emit(data, text)
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    lg = sub.add_parser("lineage", parents=[common], help="ancestors and descendants of a model or artifact")
    lg.add_argument("subject", metavar="MODEL|ARTIFACT", help="a model name, or an artifact id or prefix")
    lg.add_argument("--ancestors", action="store_true", help="only what it derives from")
    lg.add_argument("--descendants", action="store_true", help="only what derives from it")
    lg.set_defaults(fn=cmd_lineage)

    cp = sub.add_parser("copies", parents=[common], help="every known copy of a model and its derivatives")
    cp.add_argument("model", help="a model: its copies and its derivatives' copies")
    cp.add_argument("--no-derivatives", action="store_true", help="only the model's own artifacts")
    cp.set_defaults(fn=cmd_copies)
