"""What the console's pages show, as JSON: pure functions over the control plane's messages.

Times are RFC 3339 (UTC, milliseconds) beside the raw nanoseconds the browser
counts down from. An order is shown from its canonical body (decoded and checked
against its id by the client library), never from the server's summary alone.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from custos.client.wire import RELATION_FROM_PB
from custos.core import webauthn
from custos.core.orders import ORDER_DOMAIN, Order
from custos.core.reports import halt_stats, rfc3339, verdict
from custos.core.signers import SignerKey, SignerSet
from custos.v1 import access_pb2, custody_pb2, incidents_pb2, orders_pb2, registry_pb2

STATE_ORDER = {"proposed": 0, "quorum": 1, "executing": 1, "complete": 2, "expired": 3, "rejected": 3}


def _enum(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower().replace("_", "-")
    except ValueError:
        return "unknown"


def host_json(h: custody_pb2.Host) -> dict[str, Any]:
    return {"name": h.name, "state": h.state, "lease_state": h.lease_state or "none",
            "lease_expires": rfc3339(h.lease_expires_unix_ns), "last_report": rfc3339(h.last_report_unix_ns),
            "files": h.files, "processes": h.processes, "guard": h.guard or "-", "labels": dict(h.labels)}


def copies_summary(copies: Iterable[registry_pb2.Copy]) -> dict[str, Any]:
    """Counts of a model's copies by form and by state, and the hosts holding any."""
    copies = list(copies)
    return {"total": len(copies),
            "by_form": dict(Counter(_enum(registry_pb2.CopyForm, c.form, "COPY_FORM_") for c in copies)),
            "by_state": dict(Counter(c.state for c in copies)),
            "hosts": sorted({c.host for c in copies if c.host})}


def model_json(m: registry_pb2.Model, copies: Sequence[registry_pb2.Copy] | None, *,
               artifacts: int | None = None) -> dict[str, Any]:
    return {"name": m.name, "state": _enum(registry_pb2.ModelState, m.state, "MODEL_STATE_"), "covered": m.covered,
            "drill": m.drill, "artifacts": len(m.artifact_ids) if artifacts is None else artifacts, "owner": m.owner,
            "copies": copies_summary(copies) if copies is not None else None}


def lineage_edges(resp: registry_pb2.GetLineageResponse) -> list[dict[str, str]]:
    """Derivations between models (parent model -> child model, relation), from artifact edges."""
    model_of = {n.artifact_id: n.model for n in resp.nodes}
    seen: set[tuple[str, str, str]] = set()
    for e in resp.edges:
        parent, child = model_of.get(e.parent, "?"), model_of.get(e.child, "?")
        seen.add((parent, child, RELATION_FROM_PB.get(e.relation, "unknown")))
    return [{"parent": p, "child": c, "relation": r} for p, c, r in sorted(seen)]


def order_summary(o: orders_pb2.OrderInfo) -> dict[str, Any]:
    return {"id": o.id, "action": o.action, "drill": o.drill, "models": list(o.models), "state": o.state,
            "signatures": len(o.signed_by), "threshold": o.threshold, "missing": o.missing,
            "reason": o.reason, "issued_at": rfc3339(o.issued_at * 1_000_000_000),
            "not_after": rfc3339(o.not_after * 1_000_000_000), "proposed_by": o.proposed_by,
            "quorum_at": rfc3339(o.quorum_at_unix_ns), "completed_at": rfc3339(o.completed_at_unix_ns),
            "progress": f"{len(o.signed_by)} of {o.threshold} signatures"}


def sort_orders(orders: Iterable[orders_pb2.OrderInfo]) -> list[dict[str, Any]]:
    """Waiting for signatures first, then in flight, then the rest; newest first within each."""
    return [order_summary(o) for o in sorted(orders, key=lambda o: (STATE_ORDER.get(o.state, 4), -o.issued_at))]


def key_json(k: SignerKey, signed: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": k.name, "key_id": k.key_id, "keytype": k.keytype}
    if k.webauthn is not None:
        out["credential_id"] = webauthn.b64url(k.webauthn.credential_id)
        out["rp_id"] = k.webauthn.rp_id
        out["origins"] = list(k.webauthn.origins)
        out["user_verification"] = k.webauthn.user_verification
    if signed is not None:
        out["signed"] = signed
    return out


def signable(signature_input: bytes, domain: bytes) -> dict[str, Any]:
    """Exactly what a signer signs: the domain prefix, the canonical body as text, the whole
    signature input (base64, for the browser to hash itself), and its SHA-256 — the object's
    id and the passkey challenge."""
    body = signature_input[len(domain):]
    digest = webauthn.challenge_for(signature_input)
    return {"domain": domain.rstrip(b"\x00").decode() + "\\0", "body": body.decode("utf-8"),
            "body_bytes": len(body), "signature_input_b64": base64.b64encode(signature_input).decode(),
            "digest_hex": digest.hex(), "challenge_b64url": webauthn.b64url(digest)}


def order_detail(info: orders_pb2.OrderInfo, order: Order, signer_set: SignerSet | None,
                 mine: Sequence[bytes]) -> dict[str, Any]:
    """An order with its canonical content, the signers of its set and which of them signed, and
    the signer keys of the viewer's own passkeys (credential ids in ``mine``)."""
    d = order_summary(info)
    d["body"] = order.to_json()
    d["artifacts"] = list(order.artifacts)
    d["nonce"] = order.nonce
    d["sequence"] = order.sequence
    d["signer_set_version"] = order.signer_set_version
    d["problems"] = list(info.problems)
    d["signable"] = signable(order.signature_input(), ORDER_DOMAIN)
    signed = set(info.signed_by)
    same_set = signer_set is not None and signer_set.version == order.signer_set_version
    d["signers"] = [key_json(k, k.key_id in signed) for k in signer_set.keys] if same_set and signer_set else []
    d["my_keys"] = [key_json(k, k.key_id in signed) for k in (signer_set.keys if same_set and signer_set else ())
                    if k.webauthn is not None and k.webauthn.credential_id in mine]
    return d


def report_json(data: dict[str, Any]) -> dict[str, Any]:
    """The live progress of an executing or finished order: per-host acks, the statistics and the
    verdict (from the control plane's JSON report)."""
    st = halt_stats(data)
    hosts = []
    for h in data.get("hosts", []):
        hosts.append({"host": h.get("host", "?"), "acked": bool(h.get("acked")), "outcome": h.get("outcome", "-"),
                      "verified": h.get("verified"), "seconds_to_halt": h.get("seconds_to_halt"),
                      "pids_stopped": list(h.get("pids_stopped", [])), "paths_wiped": len(h.get("paths_wiped", [])),
                      "remaining": list(h.get("remaining", []))[:20]})
    copies = Counter(c.get("state", "?") for c in data.get("copies", []))
    return {"state": data.get("state"), "verdict": verdict(data), "stats": st, "hosts": hosts,
            "copies": dict(copies), "quorum_at": rfc3339(int(data.get("quorum_at_ns") or 0)),
            "completed_at": rfc3339(int(data.get("completed_at_ns") or 0))}


def incident_json(i: incidents_pb2.Incident) -> dict[str, Any]:
    return {"id": i.id, "model": i.model or "-", "category": i.category, "category_title": i.category_title,
            "severity": i.severity, "status": i.status, "covered": i.covered,
            "discovered_at": rfc3339(i.discovered_at_unix_ns), "deadline": rfc3339(i.report_deadline_unix_ns),
            "deadline_ns": i.report_deadline_unix_ns, "seconds_left": i.seconds_left, "under_24h": i.under_24h,
            "overdue": i.overdue, "hosts": list(i.hosts), "alerts": len(i.alerts) + i.alerts_dropped,
            "reported": i.status in ("reported", "closed")}


def grant_json(g: access_pb2.AccessGrant) -> dict[str, Any]:
    return {"id": g.id, "state": g.state, "model": g.model, "models": list(g.models),
            "artifacts": len(g.artifact_ids), "grantee": g.principal or ", ".join(g.hosts) or "-",
            "requester": g.requester, "reason": g.reason, "duration_s": g.duration_seconds,
            "created": rfc3339(g.created_unix_ns), "expires": rfc3339(g.expires_unix_ns),
            "not_after": rfc3339(g.not_after_unix_ns), "approvals": f"{len(g.counted)} of {g.needed}",
            "approvers": [a.principal for a in g.approvals], "break_glass": g.break_glass}


def signer_set_json(ss: SignerSet) -> dict[str, Any]:
    return {"version": ss.version, "id": ss.id, "thresholds": dict(ss.thresholds),
            "keys": [key_json(k) for k in ss.keys]}
