"""`custos`: the one entry point. The only module that prints and exits.

Human output by default, `--output json` on every command. Errors are one line
on stderr and a non-zero exit: 2 bad input, 3 not found, 4 permission denied,
5 unavailable, 6 conflict, 7 verification failed, 1 anything else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc

from custos.errors import (
    BackendUnavailable,
    Conflict,
    CustosError,
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    NotFound,
    Unauthorized,
)

EXIT_BY_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 2,
    grpc.StatusCode.NOT_FOUND: 3,
    grpc.StatusCode.PERMISSION_DENIED: 4,
    grpc.StatusCode.UNAUTHENTICATED: 4,
    grpc.StatusCode.UNAVAILABLE: 5,
    grpc.StatusCode.DEADLINE_EXCEEDED: 5,
    grpc.StatusCode.ALREADY_EXISTS: 6,
    grpc.StatusCode.FAILED_PRECONDITION: 6,
}
EXIT_BY_ERROR: list[tuple[type[CustosError], int]] = [
    (IntegrityError, 7), (InvalidInput, 2), (NotFound, 3), (Unauthorized, 4),
    (BackendUnavailable, 5), (Conflict, 6), (FailedPrecondition, 6),
]
RELATIONS = ("copy", "fine-tune", "quantize", "distill", "merge", "adapter", "combination")


class VerificationFailed(IntegrityError):
    pass


# -- output ------------------------------------------------------------------


class Out:
    def __init__(self, fmt: str) -> None:
        self.json = fmt == "json"

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        if self.json:
            print(json.dumps(data, indent=2, sort_keys=True, default=str))
        else:
            print(text() if callable(text) else text)


def _ts(ns: int) -> str:
    if not ns:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip()]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# -- connection ----------------------------------------------------------------


class Conn:
    def __init__(self, ns: argparse.Namespace) -> None:
        from custos.client import ClientConfig

        self.cfg = ClientConfig.from_env(addr=ns.addr, ca=ns.ca, cert=ns.tls_cert, key=ns.tls_key,
                                         role=ns.role)
        self.channel = self.cfg.channel()
        self.timeout = ns.timeout

    def call(self, stub_method: Any, request: Any) -> Any:
        return stub_method(request, timeout=self.timeout,
                           metadata=(("x-request-id", uuid.uuid4().hex),))

    def registry(self) -> Any:
        from custos.v1 import registry_pb2_grpc

        return registry_pb2_grpc.RegistryStub(self.channel)

    def audit(self) -> Any:
        from custos.v1 import audit_pb2_grpc

        return audit_pb2_grpc.AuditStub(self.channel)


# -- commands: server and demo -----------------------------------------------------


def cmd_server(ns: argparse.Namespace, out: Out) -> int:
    import asyncio

    from custos import logs
    from custos.controlplane.config import load_config
    from custos.controlplane.server import run

    cfg = load_config(Path(ns.config) if ns.config else None)
    if ns.listen:
        cfg.listen = ns.listen
    if ns.data_dir:
        cfg.data_dir = Path(ns.data_dir)
    if ns.store:
        cfg.store_url = ns.store
    cfg.dev = ns.dev
    if ns.log_level:
        cfg.log_level = ns.log_level
    if ns.checkpoint_interval is not None:
        if ns.checkpoint_interval <= 0:
            raise InvalidInput("--checkpoint-interval must be > 0")
        cfg.checkpoint_interval = ns.checkpoint_interval
    if not cfg.dev and cfg.data_dir is not None and cfg.audit_key is None:
        cfg.audit_key = cfg.data_dir / "audit-signing.key"
    try:
        logs.setup(cfg.log_level, json_format=cfg.log_format == "json")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    asyncio.run(run(cfg))
    return 0


def cmd_demo(ns: argparse.Namespace, out: Out) -> int:
    from custos.demo import run_demo

    return run_demo(data_dir=Path(ns.data_dir) if ns.data_dir else None, keep=ns.keep, out=out)


# -- commands: models ------------------------------------------------------------


def _model_json(m: Any) -> dict[str, Any]:
    from custos.v1 import registry_pb2

    d = {
        "name": m.name, "owner": m.owner, "training_flops": m.training_flops,
        "benchmark_equivalence": m.benchmark_equivalence, "covered": m.covered,
        "state": registry_pb2.ModelState.Name(m.state).removeprefix("MODEL_STATE_").lower(),
        "transit_key": m.transit_key, "created_at": _ts(m.created_at_unix_ns),
        "created_by": m.created_by, "drill": m.drill, "artifacts": list(m.artifact_ids),
        "exemption": None,
    }
    if m.HasField("exemption"):
        d["exemption"] = {"basis": m.exemption.basis, "date": m.exemption.date,
                          "certifier": m.exemption.certifier}
    return d


def _parse_flops(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InvalidInput(f"bad --training-flops {text!r}: want a number such as 3.1e26") from None
    if v != v or v in (float("inf"), float("-inf")) or v < 0:
        raise InvalidInput("--training-flops must be a finite number >= 0")
    return v


def cmd_model_register(ns: argparse.Namespace, out: Out) -> int:
    from custos.v1 import registry_pb2

    ex = None
    if ns.exemption_basis or ns.exemption_date or ns.exemption_certifier:
        ex = registry_pb2.LimitedDutyExemption(basis=ns.exemption_basis or "",
                                               date=ns.exemption_date or "",
                                               certifier=ns.exemption_certifier or "")
    if ns.training_flops is None and not ns.benchmark_equivalence:
        raise InvalidInput("give --training-flops N and/or --benchmark-equivalence BASIS")
    c = Conn(ns)
    resp = c.call(c.registry().RegisterModel, registry_pb2.RegisterModelRequest(
        name=ns.name, owner=ns.owner or "", training_flops=_parse_flops(ns.training_flops or "0"),
        benchmark_equivalence=ns.benchmark_equivalence or "", exemption=ex, drill=ns.drill))
    m = _model_json(resp.model)
    out.emit(m, f"registered model {m['name']} (covered: {'yes' if m['covered'] else 'no'}, "
                f"key {m['transit_key']})")
    return 0


def _model_text(m: dict[str, Any]) -> str:
    lines = [
        f"name:        {m['name']}",
        f"owner:       {m['owner']}",
        f"state:       {m['state']}",
        f"covered:     {'yes' if m['covered'] else 'no'}",
        f"training:    {m['training_flops']:.3g} FLOP",
    ]
    if m["benchmark_equivalence"]:
        lines.append(f"equivalence: {m['benchmark_equivalence']}")
    if m["exemption"]:
        e = m["exemption"]
        lines.append(f"exemption:   {e['basis']} (certified {e['date']} by {e['certifier']})")
    lines += [f"transit key: {m['transit_key']}", f"created:     {m['created_at']} by {m['created_by']}"]
    if m["drill"]:
        lines.append("drill model: yes")
    if m["artifacts"]:
        lines.append("artifacts:")
        lines += [f"  {a}" for a in m["artifacts"]]
    return "\n".join(lines)


def cmd_model_show(ns: argparse.Namespace, out: Out) -> int:
    from custos.v1 import registry_pb2

    c = Conn(ns)
    m = _model_json(c.call(c.registry().GetModel, registry_pb2.GetModelRequest(name=ns.name)).model)
    out.emit(m, lambda: _model_text(m))
    return 0


def cmd_model_list(ns: argparse.Namespace, out: Out) -> int:
    from custos.v1 import registry_pb2

    c = Conn(ns)
    models = [_model_json(m) for m in
              c.call(c.registry().ListModels, registry_pb2.ListModelsRequest()).models]
    out.emit(models, lambda: _table(
        [[m["name"], m["state"], "yes" if m["covered"] else "no", f"{m['training_flops']:.3g}",
          m["owner"]] for m in models],
        ["NAME", "STATE", "COVERED", "FLOP", "OWNER"]))
    return 0


# -- commands: artifacts -----------------------------------------------------------


def _artifact_json(a: Any) -> dict[str, Any]:
    from custos.controlplane.api import RELATION_FROM_PB

    return {
        "id": a.id, "model": a.model, "total_size": a.total_size,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in a.files],
        "parents": [{"artifact_id": p.artifact_id, "relation": RELATION_FROM_PB.get(p.relation, "?")}
                    for p in a.parents],
        "created_at": _ts(a.created_at_unix_ns), "created_by": a.created_by,
    }


def _parents(ns: argparse.Namespace) -> list[tuple[str, str]]:
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
    from custos.controlplane.api import RELATION_TO_PB
    from custos.hashing import build_manifest
    from custos.v1 import registry_pb2

    parents = _parents(ns)
    c = Conn(ns)
    # Resolve short parent ids before hashing, so a typo fails fast.
    resolved = []
    for pid, rel in parents:
        a = c.call(c.registry().GetArtifact, registry_pb2.GetArtifactRequest(id=pid)).artifact
        resolved.append(registry_pb2.ParentRef(artifact_id=a.id, relation=RELATION_TO_PB[rel]))
    t0 = time.monotonic()
    manifest = build_manifest(ns.dir)
    elapsed = time.monotonic() - t0
    req = registry_pb2.RegisterArtifactRequest(
        model=ns.model, manifest=manifest.encode(), parents=resolved,
        source_host="" if ns.no_record_copy else socket.gethostname(),
        source_path="" if ns.no_record_copy else str(Path(ns.dir).resolve()))
    resp = c.call(c.registry().RegisterArtifact, req)
    a = _artifact_json(resp.artifact)
    a["created"] = resp.created
    a["hash_seconds"] = round(elapsed, 3)
    verb = "registered" if resp.created else "already registered"
    out.emit(a, f"{verb} artifact {a['id']}\n  model {a['model']}, {len(a['files'])} files, "
                f"{_size(a['total_size'])}, hashed in {elapsed:.2f}s")
    return 0


def cmd_artifact_show(ns: argparse.Namespace, out: Out) -> int:
    from custos.v1 import registry_pb2

    c = Conn(ns)
    a = _artifact_json(c.call(c.registry().GetArtifact, registry_pb2.GetArtifactRequest(id=ns.id)).artifact)

    def text() -> str:
        lines = [f"artifact {a['id']}", f"model:   {a['model']}",
                 f"size:    {_size(a['total_size'])} in {len(a['files'])} files",
                 f"created: {a['created_at']} by {a['created_by']}"]
        for p in a["parents"]:
            lines.append(f"parent:  {p['artifact_id']} ({p['relation']})")
        lines.append(_table([[f["path"], str(f["size"]), f["sha256"]] for f in a["files"]],
                            ["PATH", "SIZE", "SHA256"]))
        return "\n".join(lines)

    out.emit(a, text)
    return 0


# -- commands: push and pull ----------------------------------------------------


class _Progress:
    """A one-line progress meter on stderr, only when it is a terminal."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = max(1, total), label, 0
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()
        import threading

        self.lock = threading.Lock()
        self.last = 0.0

    def __call__(self, n: int) -> None:
        with self.lock:
            self.done += n
            now = time.monotonic()
            if self.tty and (now - self.last > 0.1 or self.done >= self.total):
                self.last = now
                rate = self.done / max(1e-6, now - self.t0)
                pct = 100 * self.done / self.total
                sys.stderr.write(f"\r{self.label} {pct:5.1f}%  {_size(self.done)} / {_size(self.total)}"
                                 f"  {_size(int(rate))}/s   ")
                sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _blobs_for(ns: argparse.Namespace, advertised: str) -> Any:
    from custos.storage import open_blob_store

    url = ns.blobs or os.environ.get("CUSTOS_BLOBS") or advertised
    if not url:
        raise InvalidInput("no blob store: the control plane did not advertise one; set CUSTOS_BLOBS")
    return open_blob_store(url)


def cmd_push(ns: argparse.Namespace, out: Out) -> int:
    from custos.controlplane.api import RELATION_TO_PB
    from custos.hashing import build_manifest
    from custos.transfer import Pusher, PushState, default_state_dir
    from custos.v1 import keys_pb2, keys_pb2_grpc, registry_pb2

    parents = _parents(ns)
    c = Conn(ns)
    refs = []
    for pid, rel in parents:
        a = c.call(c.registry().GetArtifact, registry_pb2.GetArtifactRequest(id=pid)).artifact
        refs.append(registry_pb2.ParentRef(artifact_id=a.id, relation=RELATION_TO_PB[rel]))
    root = Path(ns.dir)
    manifest = build_manifest(root)
    keys = keys_pb2_grpc.KeysStub(c.channel)
    req = keys_pb2.CreateDataKeyRequest(model=ns.model, manifest=manifest.encode(), parents=refs)
    try:
        resp = c.call(keys.CreateDataKey, req)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS or "concurrently" not in (exc.details() or ""):  # type: ignore[attr-defined]
            raise
        resp = c.call(keys.CreateDataKey, req)
    aid = resp.artifact_id
    if resp.already_stored:
        art = c.call(c.registry().GetArtifact, registry_pb2.GetArtifactRequest(id=aid)).artifact
        out.emit({**_artifact_json(art), "already_stored": True},
                 f"artifact {aid} is already stored; nothing to push")
        return 0
    key = bytearray(resp.data_key)
    state = PushState.load(Path(ns.state_dir or default_state_dir()) / f"{aid}.json")
    progress = _Progress(manifest.total_size, "push")
    try:
        blobs = _blobs_for(ns, resp.blob_store)
        pusher = Pusher(blobs=blobs, data_key=key, artifact_id=aid, manifest=manifest, root=root,
                        state=state, resumed=resp.resumed, progress=progress)
        stats = pusher.run()
    finally:
        from custos.keys.base import zeroize

        zeroize(key)
        progress.close()
    reg = c.call(c.registry().RegisterStoredArtifact,
                 registry_pb2.RegisterStoredArtifactRequest(artifact_id=aid))
    state.clear()
    data = {**_artifact_json(reg.artifact), "stored": True, "resumed": resp.resumed, **stats.as_dict()}
    rate = stats.bytes / max(stats.seconds, 1e-6)
    out.emit(data, f"pushed artifact {aid}\n  model {reg.artifact.model}, {stats.files} files, "
                   f"{_size(stats.bytes)} encrypted in {stats.seconds:.2f}s ({_size(int(rate))}/s)"
                   + (f", resumed: {stats.parts_skipped} parts and {stats.objects_skipped} files already uploaded"
                      if resp.resumed else ""))
    return 0


def cmd_pull(ns: argparse.Namespace, out: Out) -> int:
    from custos.keys.base import zeroize
    from custos.transfer import manifest_of, pull_into, this_host
    from custos.v1 import keys_pb2, keys_pb2_grpc, registry_pb2

    c = Conn(ns)
    dest = Path(ns.dest).absolute()
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise InvalidInput(f"{dest} already exists")
    keys = keys_pb2_grpc.KeysStub(c.channel)
    resp = c.call(keys.UnwrapDataKey, keys_pb2.UnwrapDataKeyRequest(artifact_id=ns.artifact, purpose="pull"))
    key = bytearray(resp.data_key)
    art = resp.artifact
    progress = _Progress(art.total_size, "pull")
    try:
        blobs = _blobs_for(ns, art.blob_store)
        stats = pull_into(blobs, data_key=key, artifact_id=art.id, manifest=manifest_of(art),
                          objects={o.path: o.key for o in art.objects}, dest=dest, progress=progress)
    finally:
        zeroize(key)
        progress.close()
    copy = c.call(c.registry().RecordCopy, registry_pb2.RecordCopyRequest(
        artifact_id=art.id, host=this_host(), path=str(dest), form=registry_pb2.COPY_FORM_PLAINTEXT)).copy
    rate = stats.bytes / max(stats.seconds, 1e-6)
    out.emit({"artifact_id": art.id, "model": art.model, "dest": str(dest), "copy_id": copy.id,
              **stats.as_dict()},
             f"pulled artifact {art.id} into {dest}\n  {stats.files} files, {_size(stats.bytes)} verified "
             f"in {stats.seconds:.2f}s ({_size(int(rate))}/s)")
    return 0


# -- commands: lineage and copies --------------------------------------------------


def cmd_lineage(ns: argparse.Namespace, out: Out) -> int:
    import re

    from custos.controlplane.api import RELATION_FROM_PB
    from custos.core.lineage import render_tree
    from custos.v1 import registry_pb2

    c = Conn(ns)
    direction = registry_pb2.LINEAGE_DIRECTION_BOTH
    if ns.ancestors and not ns.descendants:
        direction = registry_pb2.LINEAGE_DIRECTION_ANCESTORS
    elif ns.descendants and not ns.ancestors:
        direction = registry_pb2.LINEAGE_DIRECTION_DESCENDANTS
    subject = ns.subject
    resp = None
    if re.fullmatch(r"[0-9a-f]{8,64}", subject):
        try:
            resp = c.call(c.registry().GetLineage,
                          registry_pb2.GetLineageRequest(artifact_id=subject, direction=direction))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise
    if resp is None:
        resp = c.call(c.registry().GetLineage,
                      registry_pb2.GetLineageRequest(model=subject, direction=direction))
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


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower().replace("_", "-")


def cmd_copies(ns: argparse.Namespace, out: Out) -> int:
    from custos.v1 import registry_pb2

    c = Conn(ns)
    resp = c.call(c.registry().ListCopies, registry_pb2.ListCopiesRequest(
        model=ns.model, exclude_derivatives=ns.no_derivatives))
    copies = [{
        "id": x.id, "artifact_id": x.artifact_id, "model": x.model,
        "location_kind": _enum_name(registry_pb2.LocationKind, x.location_kind, "LOCATION_KIND_"),
        "location": x.location, "host": x.host,
        "form": _enum_name(registry_pb2.CopyForm, x.form, "COPY_FORM_"),
        "authorized": x.authorized, "state": x.state,
        "first_seen": _ts(x.first_seen_unix_ns), "last_seen": _ts(x.last_seen_unix_ns),
    } for x in resp.copies]
    data = {"model": ns.model, "models": list(resp.models), "artifacts": list(resp.artifact_ids),
            "copies": copies}

    def text() -> str:
        head = (f"model {ns.model} and derivatives: {', '.join(resp.models)}\n"
                f"{len(resp.artifact_ids)} artifacts, {len(copies)} known copies\n")
        return head + _table(
            [[x["model"], x["artifact_id"][:12], x["form"], x["location_kind"], x["location"],
              "yes" if x["authorized"] else "NO", x["state"], x["last_seen"]] for x in copies],
            ["MODEL", "ARTIFACT", "FORM", "KIND", "LOCATION", "AUTH", "STATE", "LAST SEEN"])

    out.emit(data, text)
    return 0


# -- commands: hosts, custody policy, alerts ----------------------------------------


def _custody(c: Conn) -> Any:
    from custos.v1 import custody_pb2_grpc

    return custody_pb2_grpc.CustodyStub(c.channel)


def _host_json(h: Any) -> dict[str, Any]:
    return {"name": h.name, "state": h.state, "labels": dict(h.labels), "lease_state": h.lease_state,
            "lease_expires": _ts(h.lease_expires_unix_ns), "last_report": _ts(h.last_report_unix_ns),
            "enrolled_at": _ts(h.enrolled_at_unix_ns), "cert_fingerprint": h.cert_fingerprint,
            "files": h.files, "processes": h.processes}


def _labels(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise InvalidInput(f"bad --label {item!r}: want KEY=VALUE")
        out[k] = v
    return out


def cmd_host_add(ns: argparse.Namespace, out: Out) -> int:
    from custos.v1 import custody_pb2

    c = Conn(ns)
    resp = c.call(_custody(c).AddHost, custody_pb2.AddHostRequest(
        name=ns.name, labels=_labels(ns.label), token_ttl_seconds=ns.token_ttl))
    data = {**_host_json(resp.host), "enrollment_token": resp.enrollment_token,
            "token_expires": _ts(resp.token_expires_unix_ns)}
    out.emit(data, f"host {ns.name} added; one-time enrollment token (expires {data['token_expires']}):\n"
                   f"{resp.enrollment_token}\n"
                   f"On the host: custos agent enroll --name {ns.name} --token <token> --enroll-addr ADDR --ca CA")
    return 0


def cmd_host_remove(ns: argparse.Namespace, out: Out) -> int:
    from custos.v1 import custody_pb2

    c = Conn(ns)
    h = _host_json(c.call(_custody(c).RemoveHost, custody_pb2.RemoveHostRequest(name=ns.name)).host)
    out.emit(h, f"host {ns.name} removed: its certificate is refused, its lease revoked")
    return 0


def cmd_hosts(ns: argparse.Namespace, out: Out) -> int:
    from custos.v1 import custody_pb2

    c = Conn(ns)
    hosts = [_host_json(h) for h in c.call(_custody(c).ListHosts, custody_pb2.ListHostsRequest()).hosts]
    out.emit(hosts, lambda: _table(
        [[h["name"], h["state"], h["lease_state"], h["lease_expires"], h["last_report"], str(h["files"]),
          str(h["processes"])] for h in hosts],
        ["HOST", "STATE", "LEASE", "LEASE EXPIRES", "LAST REPORT", "FILES", "PROCS"]))
    return 0


def cmd_model_policy(ns: argparse.Namespace, out: Out) -> int:
    from custos.v1 import registry_pb2

    c = Conn(ns)
    m = c.call(c.registry().SetCustodyPolicy, registry_pb2.SetCustodyPolicyRequest(
        model=ns.name, hosts=ns.host or [], paths=ns.path or [])).model
    data = _model_json(m)
    data["custody_hosts"], data["custody_paths"] = list(m.custody_hosts), list(m.custody_paths)
    out.emit(data, f"custody policy of {ns.name}: hosts {data['custody_hosts'] or '(none)'}, "
                   f"paths {data['custody_paths'] or '(any on those hosts)'}")
    return 0


def cmd_alerts(ns: argparse.Namespace, out: Out) -> int:
    from custos.v1 import custody_pb2, custody_pb2_grpc

    c = Conn(ns)
    resp = c.call(custody_pb2_grpc.AlertsStub(c.channel).ListAlerts,
                  custody_pb2.ListAlertsRequest(host=ns.host or "", model=ns.model or ""))
    alerts = [{"id": a.id, "rule": a.rule, "severity": a.severity, "model": a.model,
               "artifact_id": a.artifact_id, "host": a.host, "detail": a.detail, "at": _ts(a.at_unix_ns),
               "state": a.state} for a in resp.alerts]
    out.emit(alerts, lambda: _table(
        [[a["at"], a["severity"], a["rule"], a["host"], a["model"] or "-", a["detail"][:90]] for a in alerts],
        ["TIME", "SEVERITY", "RULE", "HOST", "MODEL", "DETAIL"]))
    return 0


# -- commands: signers and orders ----------------------------------------------------


def _orders(c: Conn) -> Any:
    from custos.v1 import orders_pb2_grpc

    return orders_pb2_grpc.OrdersStub(c.channel)


def _passphrase(ns: argparse.Namespace, *, confirm: bool = False) -> bytes | None:
    if getattr(ns, "no_passphrase", False):
        return None
    if getattr(ns, "passphrase_file", None):
        try:
            return Path(ns.passphrase_file).read_bytes().rstrip(b"\n")
        except OSError as exc:
            raise InvalidInput(f"cannot read {ns.passphrase_file}: {exc.strerror}") from None
    env = os.environ.get("CUSTOS_SIGNER_PASSPHRASE")
    if env is not None:
        return env.encode()
    if not sys.stdin.isatty():
        return None
    import getpass

    first = getpass.getpass("passphrase for the signer key (empty for none): ").encode()
    if confirm and first and getpass.getpass("again: ").encode() != first:
        raise InvalidInput("passphrases do not match")
    return first or None


def cmd_signer_keygen(ns: argparse.Namespace, out: Out) -> int:
    from custos.core.signers import SignerKey, generate_ed25519, public_key_to_openssh, save_private_key

    path = Path(ns.out)
    if path.exists():
        raise InvalidInput(f"{path} already exists")
    passphrase = _passphrase(ns, confirm=True)
    key = generate_ed25519()
    save_private_key(path, key, passphrase)
    sk = SignerKey.from_ed25519(key.public_key(), name=ns.name)
    pub = path.with_suffix(".pub")
    pub.write_text(public_key_to_openssh(key, ns.name) + "\n")
    data = {"name": ns.name, "key_id": sk.key_id, "private_key": str(path), "public_key": str(pub),
            "encrypted": passphrase is not None, "openssh": sk.to_openssh()}
    out.emit(data, f"signer key {ns.name}: {path} ({'encrypted' if passphrase else 'NOT encrypted'}), "
                   f"public key {pub}\n  key id {sk.key_id}")
    return 0


def cmd_signer_show(ns: argparse.Namespace, out: Out) -> int:
    from custos.core.signers import SignerSet
    from custos.v1 import orders_pb2

    c = Conn(ns)
    info = c.call(_orders(c).GetSignerSet, orders_pb2.GetSignerSetRequest())
    ss = SignerSet.decode(info.signer_set)
    data = {"version": ss.version, "id": ss.id, "thresholds": dict(ss.thresholds),
            "keys": [{"name": k.name, "key_id": k.key_id, "keytype": k.keytype} for k in ss.keys]}
    out.emit(data, lambda: f"signer set v{ss.version} ({ss.id[:16]})\nthresholds: "
             + ", ".join(f"{a} {t}" for a, t in ss.thresholds.items()) + "\n"
             + _table([[k.name, k.keytype, k.key_id] for k in ss.keys], ["NAME", "TYPE", "KEY ID"]))
    return 0


def cmd_signer_new_set(ns: argparse.Namespace, out: Out) -> int:
    """Write version n+1 of the signer set (unsigned) for executives to review and sign."""
    from custos.core.signers import SignerKey, SignerSet
    from custos.v1 import orders_pb2

    c = Conn(ns)
    current = SignerSet.decode(c.call(_orders(c).GetSignerSet, orders_pb2.GetSignerSetRequest()).signer_set)
    keys = {k.name: k for k in current.keys}
    for name in ns.remove or []:
        if keys.pop(name, None) is None:
            raise InvalidInput(f"no signer named {name!r} in version {current.version}")
    for item in ns.add or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise InvalidInput(f"bad --add {item!r}: want NAME=PUBLIC_KEY_FILE (OpenSSH format)")
        try:
            keys[name] = SignerKey.from_openssh(Path(path).read_text().strip(), name=name)
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    thresholds = dict(current.thresholds)
    for item in ns.threshold or []:
        action, sep, n = item.partition("=")
        if not sep or not n.isdigit():
            raise InvalidInput(f"bad --threshold {item!r}: want ACTION=N")
        thresholds[action] = int(n)
    new = current.successor(list(keys.values()), thresholds=thresholds)
    Path(ns.out).write_bytes(new.encode())
    out.emit({"version": new.version, "file": ns.out, "keys": sorted(keys), "thresholds": thresholds},
             f"signer set v{new.version} written to {ns.out}: keys {', '.join(sorted(keys))}; "
             + ", ".join(f"{a} {t}" for a, t in sorted(thresholds.items())))
    return 0


def cmd_signer_sign_set(ns: argparse.Namespace, out: Out) -> int:
    from custos.core.signers import SignerSet, encode_signatures, sign_raw

    try:
        new = SignerSet.decode(Path(ns.file).read_bytes())
    except OSError as exc:
        raise InvalidInput(f"cannot read {ns.file}: {exc.strerror}") from None
    sig = sign_raw(_load_signer(ns), new.signature_input())
    target = Path(ns.out or f"{ns.file}.{sig.key_id[:12]}.sig.json")
    target.write_bytes(encode_signatures([sig]))
    out.emit({"key_id": sig.key_id, "signature_file": str(target), "version": new.version},
             f"signed signer set v{new.version}: {target}")
    return 0


def cmd_signer_rotate(ns: argparse.Namespace, out: Out) -> int:
    from custos.core.signers import SignerSet, decode_signatures, encode_signatures
    from custos.v1 import orders_pb2

    try:
        new_bytes = Path(ns.file).read_bytes()
        sigs = [s for f in ns.sig for s in decode_signatures(Path(f).read_bytes())]
    except OSError as exc:
        raise InvalidInput(f"cannot read a file: {exc.strerror}") from None
    c = Conn(ns)
    info = c.call(_orders(c).RotateSignerSet, orders_pb2.RotateSignerSetRequest(
        signer_set=new_bytes, signatures=encode_signatures(sigs)))
    ss = SignerSet.decode(info.signer_set)
    out.emit({"version": ss.version, "id": ss.id}, f"signer set rotated to v{ss.version} ({ss.id[:16]})")
    return 0


def _order_json(o: Any) -> dict[str, Any]:
    return {"id": o.id, "action": o.action, "models": list(o.models), "artifacts": len(o.artifacts),
            "reason": o.reason, "issued_at": o.issued_at, "not_after": o.not_after, "sequence": o.sequence,
            "signer_set_version": o.signer_set_version, "drill": o.drill, "state": o.state,
            "signed_by": list(o.signed_by), "threshold": o.threshold, "missing": o.missing,
            "proposed_by": o.proposed_by, "quorum_at": _ts(o.quorum_at_unix_ns),
            "completed_at": _ts(o.completed_at_unix_ns), "problems": list(o.problems)}


def _order_text(d: dict[str, Any]) -> str:
    expires = dt.datetime.fromtimestamp(d["not_after"], dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    lines = [f"order {d['id']}",
             f"  {d['action']}{' (drill)' if d['drill'] else ''} of {', '.join(d['models'])} "
             f"({d['artifacts']} artifacts incl. derivatives)",
             f"  reason: {d['reason']}",
             f"  state: {d['state']}; signatures {len(d['signed_by'])}/{d['threshold']}"
             + (f" ({d['missing']} more needed)" if d["state"] == "proposed" else ""),
             f"  expires {expires}; sequence {d['sequence']}, signer set v{d['signer_set_version']}"]
    if d["quorum_at"] != "-":
        lines.append(f"  quorum at {d['quorum_at']}; completed at {d['completed_at']}")
    lines += [f"  problem: {p}" for p in d["problems"]]
    return "\n".join(lines)


def _duration(text: str) -> int:
    import re

    m = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not m:
        raise InvalidInput(f"bad duration {text!r}: want e.g. 90s, 30m, 1h, 2d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def cmd_order_propose(ns: argparse.Namespace, out: Out) -> int:
    from custos.v1 import orders_pb2

    c = Conn(ns)
    o = c.call(_orders(c).Propose, orders_pb2.ProposeRequest(
        action=ns.action, models=ns.model, reason=ns.reason, expires_seconds=_duration(ns.expires),
        drill=ns.drill)).order
    d = _order_json(o)
    out.emit(d, lambda: _order_text(d))
    return 0


def _load_signer(ns: argparse.Namespace) -> Any:
    from custos.core.signers import load_private_key

    return load_private_key(ns.key, _passphrase(ns))


def _attach(c: Conn, order_id: str, sigs: list[Any]) -> dict[str, Any]:
    from custos.core.signers import encode_signatures
    from custos.v1 import orders_pb2

    o = c.call(_orders(c).AttachSignature, orders_pb2.AttachSignatureRequest(
        order_id=order_id, signatures=encode_signatures(sigs))).order
    return _order_json(o)


def _fetch_order(c: Conn, ref: str) -> Any:
    from custos.core.orders import Order
    from custos.v1 import orders_pb2

    info = c.call(_orders(c).GetOrder, orders_pb2.GetOrderRequest(order_id=ref)).order
    order = Order.decode(info.body)
    if order.id != info.id:
        raise IntegrityError("the order body does not hash to its id: refusing to sign")
    return info, order


def cmd_order_sign(ns: argparse.Namespace, out: Out) -> int:
    c = Conn(ns)
    _, order = _fetch_order(c, ns.order)
    key = _load_signer(ns)
    # Sign what the canonical body says, not what the server summarizes.
    print(f"signing: {order.action}{' (drill)' if order.drill else ''} of {', '.join(order.models)} "
          f"({len(order.artifacts)} artifacts); reason: {order.reason}", file=sys.stderr)
    d = _attach(c, order.id, [order.sign(key)])
    out.emit(d, lambda: _order_text(d))
    return 0


def cmd_order_export(ns: argparse.Namespace, out: Out) -> int:
    c = Conn(ns)
    _, order = _fetch_order(c, ns.order)
    data = order.signature_input()
    if ns.file:
        Path(ns.file).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def cmd_order_sign_file(ns: argparse.Namespace, out: Out) -> int:
    from custos.core.orders import ORDER_DOMAIN, Order
    from custos.core.signers import encode_signatures

    try:
        data = Path(ns.file).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {ns.file}: {exc.strerror}") from None
    if not data.startswith(ORDER_DOMAIN):
        raise InvalidInput(f"{ns.file} is not an exported order (custos order export)")
    order = Order.decode(data[len(ORDER_DOMAIN):])
    print(f"signing offline: {order.action} of {', '.join(order.models)}; reason: {order.reason}", file=sys.stderr)
    sig = order.sign(_load_signer(ns))
    target = Path(ns.out or f"{ns.file}.sig.json")
    target.write_bytes(encode_signatures([sig]))
    out.emit({"order_id": order.id, "key_id": sig.key_id, "signature_file": str(target)},
             f"signature for order {order.id[:16]} written to {target}")
    return 0


def cmd_order_attach(ns: argparse.Namespace, out: Out) -> int:
    from custos.core import sshsig
    from custos.core.signers import Signature, decode_signatures, key_id_of

    try:
        raw = Path(ns.sigfile).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {ns.sigfile}: {exc.strerror}") from None
    text = raw.decode("utf-8", errors="replace")
    if text.lstrip().startswith(sshsig.ARMOR_BEGIN):
        pub = sshsig.parse(text).public_key
        sigs = [Signature(key_id=key_id_of(pub.algorithm, pub.public), sig=text)]
    else:
        sigs = decode_signatures(raw)
    c = Conn(ns)
    d = _attach(c, ns.order, sigs)
    out.emit(d, lambda: _order_text(d))
    return 0


def cmd_order_status(ns: argparse.Namespace, out: Out) -> int:
    from custos.v1 import orders_pb2

    c = Conn(ns)
    if ns.order:
        d = _order_json(c.call(_orders(c).GetOrder, orders_pb2.GetOrderRequest(order_id=ns.order)).order)
        out.emit(d, lambda: _order_text(d))
        return 0
    orders = [_order_json(o) for o in c.call(_orders(c).ListOrders, orders_pb2.ListOrdersRequest()).orders]
    out.emit(orders, lambda: _table(
        [[o["id"][:16], o["action"] + (" (drill)" if o["drill"] else ""), ",".join(o["models"])[:40], o["state"],
          f"{len(o['signed_by'])}/{o['threshold']}", o["proposed_by"]] for o in orders],
        ["ORDER", "ACTION", "MODELS", "STATE", "SIGS", "PROPOSED BY"]))
    return 0


def _report(c: Conn, order_id: str, fmt: str) -> tuple[str, bool]:
    from custos.v1 import orders_pb2

    r = c.call(_orders(c).GetReport, orders_pb2.GetReportRequest(order_id=order_id, format=fmt))
    return r.content, r.complete


def cmd_order_report(ns: argparse.Namespace, out: Out) -> int:
    c = Conn(ns)
    fmt = "json" if out.json or ns.format == "json" else "markdown"
    content, _ = _report(c, ns.order, fmt)
    if ns.png:
        from custos.reports import time_to_halt_png

        Path(ns.png).write_bytes(time_to_halt_png(json.loads(_report(c, ns.order, "json")[0])))
    print(content)
    return 0


def cmd_drill(ns: argparse.Namespace, out: Out) -> int:
    """Propose a drill, sign it with the given keys, wait for completion, print the report."""
    from custos.v1 import orders_pb2

    c = Conn(ns)
    o = c.call(_orders(c).Propose, orders_pb2.ProposeRequest(
        action=ns.action, models=ns.model, reason=ns.reason, expires_seconds=_duration(ns.expires),
        drill=ns.action == "drill")).order
    print(f"proposed {ns.action} order {o.id[:16]} over {', '.join(o.models)}", file=sys.stderr)
    from custos.core.orders import Order
    from custos.core.signers import load_private_key

    order = Order.decode(o.body)
    d = _order_json(o)
    for path in ns.key or []:
        d = _attach(c, order.id, [order.sign(load_private_key(path, _passphrase(ns)))])
        print(f"signed with {path}: {len(d['signed_by'])}/{d['threshold']}", file=sys.stderr)
        if d["state"] != "proposed":
            break
    deadline = time.monotonic() + ns.wait
    while d["state"] in ("quorum", "executing") and time.monotonic() < deadline:
        time.sleep(0.2)
        d = _order_json(c.call(_orders(c).GetOrder, orders_pb2.GetOrderRequest(order_id=order.id)).order)
    if d["state"] == "proposed":
        out.emit(d, _order_text(d) + "\nnot yet at quorum: more executives sign with `custos order sign`")
        return 0
    content, _ = _report(c, order.id, "json" if out.json else "markdown")
    if ns.png:
        from custos.reports import time_to_halt_png

        Path(ns.png).write_bytes(time_to_halt_png(json.loads(_report(c, order.id, "json")[0])))
    print(content)
    return 0


# -- commands: audit ---------------------------------------------------------------


def _all_events(c: Conn) -> list[Any]:
    from custos.v1 import audit_pb2

    events: list[Any] = []
    after = 0
    while True:
        resp = c.call(c.audit().ListEvents, audit_pb2.ListEventsRequest(after_seq=after, limit=5000))
        events += list(resp.events)
        if not resp.next_after_seq:
            return events
        after = resp.next_after_seq


def cmd_audit_list(ns: argparse.Namespace, out: Out) -> int:
    c = Conn(ns)
    events = _all_events(c)
    if ns.limit:
        events = events[-ns.limit:]
    data = [{"seq": e.seq, "time": _ts(e.time_unix_ns), "principal": e.principal, "role": e.role,
             "host": e.host, "action": e.action, "object": e.object, "result": e.result,
             "request_id": e.request_id, "hash": e.hash} for e in events]
    out.emit(data, lambda: _table(
        [[str(d["seq"]), d["time"], f"{d['principal']} ({d['role']})", d["host"], d["action"],
          d["object"][:60], d["result"][:60]] for d in data],
        ["SEQ", "TIME", "PRINCIPAL", "HOST", "ACTION", "OBJECT", "RESULT"]))
    return 0


def _pinned_key() -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = os.environ.get("CUSTOS_AUDIT_PUBKEY")
    if not path:
        return None
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read CUSTOS_AUDIT_PUBKEY {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"CUSTOS_AUDIT_PUBKEY {path}: not an Ed25519 public key")
    return key


def cmd_audit_verify(ns: argparse.Namespace, out: Out) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from custos.core.audit_chain import verify_log
    from custos.v1 import audit_pb2

    c = Conn(ns)
    events = _all_events(c)
    cps = c.call(c.audit().GetCheckpoints, audit_pb2.GetCheckpointsRequest())
    pinned = _pinned_key()
    warnings = []
    served = Ed25519PublicKey.from_public_bytes(cps.public_key) if cps.public_key else None
    if pinned is None:
        key = served
        warnings.append("audit key not pinned (set CUSTOS_AUDIT_PUBKEY): trusting the key the "
                        "server presents")
    else:
        key = pinned
        raw = pinned.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if raw != cps.public_key:
            warnings.append("the server presents a different audit key than the pinned one")
    result = verify_log([e.stored for e in events],
                        [(cp.body, cp.signature) for cp in cps.checkpoints], key)
    last_cp = max((cp.seq for cp in cps.checkpoints), default=0)
    uncovered = max(0, result.head_seq - last_cp)
    data = {"ok": bool(result), "events": result.events_checked,
            "checkpoints": result.checkpoints_checked, "head_seq": result.head_seq,
            "head_hash": result.head_hash, "first_bad_seq": result.first_bad_seq,
            "problems": result.problems, "events_after_last_checkpoint": uncovered,
            "warnings": warnings}
    if result:
        text = (f"audit log OK: {result.events_checked} events, {result.checkpoints_checked} signed "
                f"checkpoints, head {result.head_seq} {result.head_hash[:16]}")
        if uncovered:
            text += f"\n  {uncovered} newest events are chained but not yet covered by a checkpoint"
        for w in warnings:
            text += f"\n  warning: {w}"
        out.emit(data, text)
        return 0
    out.emit(data, f"audit log FAILED verification at event {result.first_bad_seq}:\n  "
             + "\n  ".join(result.problems))
    return 7


# -- parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="custos", description="Model-weight custody and full-shutdown control plane.")
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection and output")
    g.add_argument("--output", "-o", choices=["text", "json"], default=os.environ.get("CUSTOS_OUTPUT", "text"))
    g.add_argument("--addr", help="control plane host:port (env CUSTOS_ADDR)")
    g.add_argument("--ca", help="CA certificate (env CUSTOS_CA)")
    g.add_argument("--tls-cert", help="client certificate (env CUSTOS_CERT)")
    g.add_argument("--tls-key", help="client key (env CUSTOS_KEY)")
    g.add_argument("--role", help="pick ROLE.pem/ROLE.key from CUSTOS_CERT_DIR (env CUSTOS_ROLE)")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("server", parents=[common], help="run the control plane")
    s.add_argument("--dev", action="store_true", help="development mode: dev CA, SQLite, local files")
    s.add_argument("--data-dir", help="state directory (dev: CA, certificates, SQLite, dev.env)")
    s.add_argument("--listen", help="address to listen on (default 127.0.0.1:7070; :0 picks a port)")
    s.add_argument("--config", help="TOML config file")
    s.add_argument("--store", help="store URL: sqlite:///PATH or etcd://HOST:PORT[/PREFIX]")
    s.add_argument("--log-level", help="debug, info, warning, error")
    s.add_argument("--checkpoint-interval", type=float, help="seconds between signed audit checkpoints")
    s.set_defaults(fn=cmd_server)

    d = sub.add_parser("demo", parents=[common], help="five-minute demo on embedded defaults")
    d.add_argument("--data-dir", help="where to keep the demo's state (default: a temp dir)")
    d.add_argument("--keep", action="store_true", help="leave the dev server running")
    d.set_defaults(fn=cmd_demo)

    m = sub.add_parser("model", help="models and their covered status").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    mr = m.add_parser("register", parents=[common], help="register a model")
    mr.add_argument("name")
    mr.add_argument("--training-flops", help="declared training compute, e.g. 3.1e26")
    mr.add_argument("--benchmark-equivalence", help="declared benchmark-equivalence basis")
    mr.add_argument("--owner", help="owner (default: your principal)")
    mr.add_argument("--exemption-basis")
    mr.add_argument("--exemption-date", help="YYYY-MM-DD")
    mr.add_argument("--exemption-certifier")
    mr.add_argument("--drill", action="store_true", help="designate as the shutdown-drill model")
    mr.set_defaults(fn=cmd_model_register)
    ml = m.add_parser("list", parents=[common], help="list models")
    ml.set_defaults(fn=cmd_model_list)
    ms = m.add_parser("show", parents=[common], help="show a model")
    ms.add_argument("name")
    ms.set_defaults(fn=cmd_model_show)

    mp = m.add_parser("policy", parents=[common], help="where copies of a model may live (custody policy)")
    mp.add_argument("name")
    mp.add_argument("--host", action="append", help="host-name pattern (fnmatch), repeatable")
    mp.add_argument("--path", action="append", help="path pattern (fnmatch), repeatable")
    mp.set_defaults(fn=cmd_model_policy)

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
    from custos.cli.incidents import add_commands as add_incident_commands

    add_incident_commands(sub, common)
    try:
        from custos.agent.cli import add_commands
    except ModuleNotFoundError as exc:
        if exc.name != "custos.agent.cli":
            raise
    else:
        add_commands(sub, common)

    sg = sub.add_parser("signer", help="executive signer keys and the signer set").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    sk = sg.add_parser("keygen", parents=[common], help="make an Ed25519 signer key (encrypted with a passphrase)")
    sk.add_argument("out", help="private key file to write (the public key goes to OUT.pub)")
    sk.add_argument("--name", required=True, help="signer name in the signer set, e.g. exec1")
    sk.add_argument("--passphrase-file")
    sk.add_argument("--no-passphrase", action="store_true", help="leave the key unencrypted (not recommended)")
    sk.set_defaults(fn=cmd_signer_keygen)
    ssh_ = sg.add_parser("show", parents=[common], help="the current signer set")
    ssh_.set_defaults(fn=cmd_signer_show)
    sn = sg.add_parser("new-set", parents=[common], help="write version n+1 (unsigned) for review")
    sn.add_argument("--out", required=True)
    sn.add_argument("--add", action="append", help="NAME=OPENSSH_PUBLIC_KEY_FILE")
    sn.add_argument("--remove", action="append", help="signer name to drop")
    sn.add_argument("--threshold", action="append", help="ACTION=N (drill, halt, lift, destroy, rotate)")
    sn.set_defaults(fn=cmd_signer_new_set)
    sss = sg.add_parser("sign-set", parents=[common], help="sign a new signer set (old and new signers both do)")
    sss.add_argument("file")
    sss.add_argument("--key", required=True)
    sss.add_argument("--out")
    sss.add_argument("--passphrase-file")
    sss.set_defaults(fn=cmd_signer_sign_set)
    sr = sg.add_parser("rotate", parents=[common], help="install a new signer set with its signatures")
    sr.add_argument("file")
    sr.add_argument("--sig", action="append", required=True, help="signature file (repeat)")
    sr.set_defaults(fn=cmd_signer_rotate)

    od = sub.add_parser("order", help="quorum-signed orders: drill, halt, lift, destroy").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    op = od.add_parser("propose", parents=[common], help="propose an order; prints its id")
    op.add_argument("--action", required=True, choices=["drill", "halt", "lift", "destroy"])
    op.add_argument("--model", action="append", required=True, help="model (derivatives are included)")
    op.add_argument("--reason", required=True)
    op.add_argument("--expires", default="1h", help="e.g. 30m, 1h, 2d (max 7d)")
    op.add_argument("--drill", action="store_true", help="drill: only the drill model really halts")
    op.set_defaults(fn=cmd_order_propose)
    osn = od.add_parser("sign", parents=[common], help="sign an order online with a signer key")
    osn.add_argument("order")
    osn.add_argument("--key", required=True)
    osn.add_argument("--passphrase-file")
    osn.set_defaults(fn=cmd_order_sign)
    oe = od.add_parser("export", parents=[common], help="write the exact bytes to sign (for offline signing)")
    oe.add_argument("order")
    oe.add_argument("--file", help="write here instead of stdout")
    oe.set_defaults(fn=cmd_order_export)
    osf = od.add_parser("sign-file", parents=[common], help="sign an exported order offline")
    osf.add_argument("file")
    osf.add_argument("--key", required=True)
    osf.add_argument("--out", help="signature file (default FILE.sig.json)")
    osf.add_argument("--passphrase-file")
    osf.set_defaults(fn=cmd_order_sign_file)
    oa = od.add_parser("attach", parents=[common],
                       help="attach a signature file (sign-file output or ssh-keygen -Y sign -n custos-order)")
    oa.add_argument("order")
    oa.add_argument("sigfile")
    oa.set_defaults(fn=cmd_order_attach)
    ost = od.add_parser("status", parents=[common], help="one order, or all")
    ost.add_argument("order", nargs="?")
    ost.set_defaults(fn=cmd_order_status)
    orp = od.add_parser("report", parents=[common], help="completion report (Markdown, or JSON with -o json)")
    orp.add_argument("order")
    orp.add_argument("--format", choices=["markdown", "json"], default="markdown")
    orp.add_argument("--png", help="also write a time-to-halt plot here")
    orp.set_defaults(fn=cmd_order_report)
    dr = sub.add_parser("drill", parents=[common], help="propose, sign and follow a shutdown drill (or halt)")
    dr.add_argument("--model", action="append", required=True)
    dr.add_argument("--reason", default="scheduled shutdown drill")
    dr.add_argument("--action", default="drill", choices=["drill", "halt"])
    dr.add_argument("--key", action="append", help="signer key to sign with (repeat for a quorum)")
    dr.add_argument("--expires", default="1h")
    dr.add_argument("--wait", type=float, default=60.0, help="seconds to wait for completion")
    dr.add_argument("--png", help="write a time-to-halt plot here")
    dr.add_argument("--passphrase-file")
    dr.set_defaults(fn=cmd_drill)

    a = sub.add_parser("artifact", help="weight artifacts (manifests)").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    ar = a.add_parser("register", parents=[common], help="hash DIR and register it as an artifact of MODEL")
    ar.add_argument("model")
    ar.add_argument("dir")
    ar.add_argument("--parent", action="append", help="parent artifact id (repeat for merges)")
    ar.add_argument("--relation", action="append", help=f"relation to the parent: {', '.join(RELATIONS)}")
    ar.add_argument("--no-record-copy", action="store_true",
                    help="do not record DIR on this host as a plaintext copy")
    ar.set_defaults(fn=cmd_artifact_register)
    ash = a.add_parser("show", parents=[common], help="show an artifact and its manifest")
    ash.add_argument("id")
    ash.set_defaults(fn=cmd_artifact_show)

    ps = sub.add_parser("push", parents=[common], help="encrypt DIR locally and upload it as an artifact of MODEL")
    ps.add_argument("model")
    ps.add_argument("dir")
    ps.add_argument("--parent", action="append", help="parent artifact id (repeat for merges)")
    ps.add_argument("--relation", action="append", help=f"relation to the parent: {', '.join(RELATIONS)}")
    ps.add_argument("--blobs", help="blob store URL (default: the one the control plane uses; env CUSTOS_BLOBS)")
    ps.add_argument("--state-dir", help="where resume state is kept (default ~/.local/state/custos/push)")
    ps.set_defaults(fn=cmd_push)
    pl = sub.add_parser("pull", parents=[common], help="download, decrypt and verify an artifact into DEST")
    pl.add_argument("artifact")
    pl.add_argument("dest")
    pl.add_argument("--blobs", help="blob store URL (default: the artifact's; env CUSTOS_BLOBS)")
    pl.set_defaults(fn=cmd_pull)

    lg = sub.add_parser("lineage", parents=[common], help="ancestors and descendants of a model or artifact")
    lg.add_argument("subject", metavar="MODEL|ARTIFACT")
    lg.add_argument("--ancestors", action="store_true")
    lg.add_argument("--descendants", action="store_true")
    lg.set_defaults(fn=cmd_lineage)

    cp = sub.add_parser("copies", parents=[common], help="every known copy of a model and its derivatives")
    cp.add_argument("model")
    cp.add_argument("--no-derivatives", action="store_true", help="only the model's own artifacts")
    cp.set_defaults(fn=cmd_copies)

    au = sub.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    al = au.add_parser("list", parents=[common], help="list audit events")
    al.add_argument("--limit", type=int, default=0, help="only the newest N")
    al.set_defaults(fn=cmd_audit_list)
    av = au.add_parser("verify", parents=[common], help="verify the hash chain and signed checkpoints")
    av.set_defaults(fn=cmd_audit_verify)
    return p


def _fail(msg: str, code: int) -> NoReturn:
    print(f"custos: error: {msg}", file=sys.stderr)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    out = Out(getattr(ns, "output", "text"))
    try:
        return int(ns.fn(ns, out))
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        details = exc.details() or code.name  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE:
            addr = getattr(ns, "addr", None) or os.environ.get("CUSTOS_ADDR", "?")
            details = f"cannot reach the control plane at {addr}: {details.splitlines()[0]}"
        _fail(details, EXIT_BY_STATUS.get(code, 1))
    except CustosError as exc:
        for cls, rc in EXIT_BY_ERROR:
            if isinstance(exc, cls):
                _fail(str(exc), rc)
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
