"""`custos artifact register|list|show`: weight artifacts by manifest."""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path
from typing import Any

from custos.cli.common import connect
from custos.cli.output import Out, size, table, ts
from custos.client.registry import get_artifact, list_artifacts, list_models, register_artifact, resolve_parents
from custos.client.wire import RELATION_FROM_PB, RELATIONS
from custos.errors import InvalidInput
from custos.fs.hashing import build_manifest
from custos.v1 import registry_pb2


def artifact_json(a: registry_pb2.Artifact) -> dict[str, Any]:
    return {
        "id": a.id, "model": a.model, "total_size": a.total_size,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in a.files],
        "parents": [{"artifact_id": p.artifact_id, "relation": RELATION_FROM_PB.get(p.relation, "?")}
                    for p in a.parents],
        "created_at": ts(a.created_at_unix_ns), "created_by": a.created_by,
    }


def parse_parents(ns: argparse.Namespace) -> list[tuple[str, str]]:
    parents = ns.parent or []
    relations = ns.relation or []
    if len(relations) == 1 and len(parents) > 1:
        relations = relations * len(parents)
    if parents and len(relations) != len(parents):
        raise InvalidInput("give one --relation per --parent (or one for all)")
    if relations and not parents:
        raise InvalidInput("--relation needs --parent")
    for r in relations:
        if r not in RELATIONS:
            raise InvalidInput(f"unknown relation {r!r}; want one of {', '.join(RELATIONS)}")
    return list(zip(parents, relations, strict=True))


def cmd_artifact_register(ns: argparse.Namespace, out: Out) -> int:
    parents = parse_parents(ns)
    client = connect(ns)
    # Resolve short parent ids before hashing, so a typo fails fast.
    refs = resolve_parents(client, parents)
    t0 = time.monotonic()
    manifest = build_manifest(ns.dir)
    elapsed = time.monotonic() - t0
    resp = register_artifact(client, ns.model, manifest, parents=refs,
                             source_host="" if ns.no_record_copy else socket.gethostname(),
                             source_path="" if ns.no_record_copy else str(Path(ns.dir).resolve()))
    a = artifact_json(resp.artifact)
    a["created"] = resp.created
    a["hash_seconds"] = round(elapsed, 3)
    verb = "registered" if resp.created else "already registered"
    out.emit(a, f"{verb} artifact {a['id']}\n  model {a['model']}, {len(a['files'])} files, "
                f"{size(a['total_size'])}, hashed in {elapsed:.2f}s")
    return 0


def cmd_artifact_show(ns: argparse.Namespace, out: Out) -> int:
    a = artifact_json(get_artifact(connect(ns), ns.id))

    def text() -> str:
        lines = [f"artifact {a['id']}", f"model:   {a['model']}",
                 f"size:    {size(a['total_size'])} in {len(a['files'])} files",
                 f"created: {a['created_at']} by {a['created_by']}"]
        for p in a["parents"]:
            lines.append(f"parent:  {p['artifact_id']} ({p['relation']})")
        lines.append(table([[f["path"], str(f["size"]), f["sha256"]] for f in a["files"]],
                            ["PATH", "SIZE", "SHA256"]))
        return "\n".join(lines)

    out.emit(a, text)
    return 0


def cmd_artifact_list(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    models = [ns.model] if ns.model else sorted(m.name for m in list_models(client))
    rows = []
    for m in models:
        for a in list_artifacts(client, m):
            d = artifact_json(a)
            d["stored"] = a.stored
            rows.append(d)
    rows.sort(key=lambda d: (d["created_at"], d["id"]))
    out.emit(rows, lambda: table(
        [[d["id"][:16], d["model"], str(len(d["files"])), size(d["total_size"]), "yes" if d["stored"] else "no",
          ", ".join(f"{p['relation']} of {p['artifact_id'][:12]}" for p in d["parents"]) or "-",
          d["created_at"], d["created_by"]] for d in rows],
        ["ARTIFACT", "MODEL", "FILES", "SIZE", "STORED", "PARENTS", "CREATED", "BY"]))
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    a = sub.add_parser("artifact", help="weight artifacts (manifests)").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    ar = a.add_parser("register", parents=[common], help="hash DIR and register it as an artifact of MODEL")
    ar.add_argument("model", help="the registered model the artifact belongs to")
    ar.add_argument("dir", help="the directory of weight files to hash")
    ar.add_argument("--parent", action="append", help="parent artifact id (repeat for merges)")
    ar.add_argument("--relation", action="append", help=f"relation to the parent: {', '.join(RELATIONS)}")
    ar.add_argument("--no-record-copy", action="store_true",
                    help="do not record DIR on this host as a plaintext copy")
    ar.set_defaults(fn=cmd_artifact_register)
    al = a.add_parser("list", parents=[common], help="every artifact (of one model with --model)")
    al.add_argument("--model", help="only this model's artifacts")
    al.set_defaults(fn=cmd_artifact_list)
    ash = a.add_parser("show", parents=[common], help="show an artifact and its manifest")
    ash.add_argument("id", help="artifact id or a unique prefix")
    ash.set_defaults(fn=cmd_artifact_show)
