"""`custos access`: the two-person rule for weight access.

request, show, pending, list, approve (online; or export + sign-file / ssh-keygen +
attach), revoke, extend, who, policy show|set, approver add|list, break-glass.

An approver is shown what the request's canonical body says — verified against its
id (:func:`custos.client.access.fetch_request`) — before anything is signed. See
docs/access.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from custos.cli.common import connect, duration, load_signer, read_exported, read_signature_file, write_exported
from custos.cli.output import Out, table, ts
from custos.client import access
from custos.client.session import Client
from custos.core.access import APPROVAL_DOMAIN, APPROVAL_NAMESPACE, GRANT_STATES, AccessPolicy, AccessRequest
from custos.core.signers import encode_signatures
from custos.errors import InvalidInput
from custos.v1 import access_pb2


def _for(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def grant_json(g: access_pb2.AccessGrant, body: AccessRequest | None = None) -> dict[str, Any]:
    """A request as shown. With ``body`` (verified against the id), the fields an approver
    judges come from the body; the state, approvals and times from the record."""
    d: dict[str, Any] = {
        "id": g.id, "state": g.state, "model": g.model, "models": list(g.models), "artifacts": list(g.artifact_ids),
        "principal": g.principal, "hosts": list(g.hosts), "duration_s": g.duration_seconds, "reason": g.reason,
        "requester": g.requester, "created": ts(g.created_unix_ns), "pending_until": ts(g.expires_unix_ns),
        "activated": ts(g.activated_unix_ns), "not_after": ts(g.not_after_unix_ns),
        "not_after_unix_ns": g.not_after_unix_ns, "needed": g.needed, "counted": list(g.counted),
        "approvals": [{"key_id": a.key_id, "principal": a.principal, "role": a.role, "at": ts(a.at_unix_ns)}
                      for a in g.approvals],
        "extends": g.extends, "break_glass": g.break_glass, "on_expiry": g.on_expiry,
        "approver_role": g.approver_role, "revoked_by": g.revoked_by, "revoked_reason": g.revoked_reason,
    }
    if body is not None:
        d.update(model=body.model, models=list(body.models), artifacts=list(body.artifacts),
                 principal=body.grantee.principal, hosts=list(body.grantee.hosts), duration_s=body.duration_s,
                 reason=body.reason, requester=body.requester, extends=body.extends, verified=True,
                 summary=body.summary())
    return d


def _state_lines(d: dict[str, Any]) -> list[str]:
    lines = [f"  state:      {d['state']}" + (" (BREAK-GLASS)" if d["break_glass"] else "")]
    if d["break_glass"]:
        lines.append("  approvals:  none: break-glass, activated alone by its requester (an incident is raised)")
    else:
        lines.append(f"  approvals:  {len(d['counted'])}/{d['needed']} counted ({d['approver_role']})"
                     + (f": {', '.join(d['counted'])}" if d["counted"] else ""))
    lines += [f"    signed by {a['principal']} ({a['role']}) at {a['at']}, key {a['key_id'][:16]}"
              for a in d["approvals"]]
    if d["state"] == "pending":
        lines.append(f"  approve by: {d['pending_until']} "
                     f"(another approver: custos access approve {d['id'][:16]} --key ...)")
    if d["activated"] != "-":
        lines.append(f"  active:     {d['activated']} until {d['not_after']}; on expiry: {d['on_expiry']}")
    if d["revoked_by"]:
        lines.append(f"  revoked by: {d['revoked_by']}: {d['revoked_reason']}")
    return lines


def _show_text(d: dict[str, Any], body: AccessRequest | None = None) -> str:
    head = body.summary() if body is not None else [
        f"request {d['id']}", f"  requester:  {d['requester']}",
        f"  grantee:    {('principal ' + d['principal']) if d['principal'] else 'hosts ' + ', '.join(d['hosts'])}",
        f"  model:      {d['model']}", f"  artifacts:  {len(d['artifacts'])}",
        f"  for:        {d['duration_s']} s", f"  reason:     {d['reason']}"]
    return "\n".join(head + _state_lines(d))


def _grantee(d: dict[str, Any]) -> str:
    return d["principal"] or ",".join(d["hosts"])


def _rows(items: list[dict[str, Any]]) -> str:
    return table([[d["id"][:16], d["state"], d["model"], _grantee(d)[:32], _for(d["duration_s"]),
                   f"{len(d['counted'])}/{d['needed']}", d["requester"],
                   d["pending_until"] if d["state"] == "pending" else d["not_after"], d["reason"][:40]]
                  for d in items],
                 ["ID", "STATE", "MODEL", "GRANTEE", "FOR", "OK", "REQUESTER", "UNTIL", "REASON"])


def _grantee_args(ns: argparse.Namespace) -> tuple[str, list[str]]:
    hosts = list(ns.host or [])
    if bool(ns.principal) == bool(hosts):
        raise InvalidInput("name who gets the access: --principal P (for custos pull) or --host H "
                           "[--host H2 ...] (for custos run on those hosts), exactly one of them")
    return ns.principal or "", hosts


def _request(client: Client, ns: argparse.Namespace) -> tuple[access_pb2.AccessGrant, AccessRequest]:
    principal, hosts = _grantee_args(ns)
    g = access.request(client, model=ns.model, duration_s=duration(ns.duration), reason=ns.reason,
                       artifact=ns.artifact or "", principal=principal, hosts=hosts,
                       pending_s=duration(ns.pending) if getattr(ns, "pending", None) else 0)
    return access.fetch_request(client, g.id)


def cmd_request(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    g, body = _request(client, ns)
    d = grant_json(g, body)
    out.emit(d, lambda: _show_text(d, body) + f"\n\nrequest id {g.id}")
    return 0


def cmd_show(ns: argparse.Namespace, out: Out) -> int:
    g, body = access.fetch_request(connect(ns), ns.id)
    d = grant_json(g, body)
    out.emit(d, lambda: _show_text(d, body))
    return 0


def cmd_pending(ns: argparse.Namespace, out: Out) -> int:
    items = sorted(access.list_requests(connect(ns), states=["pending"], model=ns.model or ""),
                   key=lambda g: g.created_unix_ns)
    rows = [grant_json(g) for g in items]
    out.emit(rows, lambda: _rows(rows))
    return 0


def cmd_list(ns: argparse.Namespace, out: Out) -> int:
    items = sorted(access.list_requests(connect(ns), states=ns.state or [], model=ns.model or ""),
                   key=lambda g: g.created_unix_ns)
    rows = [grant_json(g) for g in items]
    out.emit(rows, lambda: _rows(rows))
    return 0


def _approved_text(d: dict[str, Any]) -> str:
    if d["state"] == "active":
        tail = f"grant active until {d['not_after']}"
    elif d["state"] == "applied":
        tail = f"extension applied: grant {d['extends'][:16]} extended"
    else:
        tail = f"{d['needed'] - len(d['counted'])} more approval(s) needed"
    return f"approved request {d['id'][:16]}: {len(d['counted'])}/{d['needed']} counted; {tail}"


def cmd_approve(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    g, body = access.fetch_request(client, ns.id)
    key = load_signer(ns)
    # Sign what the canonical body says, not what the server summarizes.
    print("approving:\n" + "\n".join(body.summary()), file=sys.stderr)
    sig = body.sign_ssh(key) if ns.ssh else body.sign(key)
    d = grant_json(access.submit_approval(client, g.id, sig.key_id, sig.sig), body)
    out.emit(d, lambda: _approved_text(d))
    return 0


def cmd_export(ns: argparse.Namespace, out: Out) -> int:
    _, body = access.fetch_request(connect(ns), ns.id)
    data = body.signature_input()
    print("\n".join(body.summary()), file=sys.stderr)
    write_exported(data, ns.file)
    if ns.file:
        print(f"signature input written to {ns.file}; sign it with custos access sign-file, or "
              f"ssh-keygen -Y sign -n {APPROVAL_NAMESPACE} -f KEY {ns.file}", file=sys.stderr)
    return 0


def cmd_sign_file(ns: argparse.Namespace, out: Out) -> int:
    body = AccessRequest.decode(read_exported(ns.file, APPROVAL_DOMAIN,
                                              "an exported access request (custos access export)"))
    print("approving offline:\n" + "\n".join(body.summary()), file=sys.stderr)
    sig = body.sign(load_signer(ns))
    target = Path(ns.out or f"{ns.file}.sig.json")
    target.write_bytes(encode_signatures([sig]))
    out.emit({"request_id": body.id, "key_id": sig.key_id, "signature_file": str(target)},
             f"approval of request {body.id[:16]} written to {target}; submit it with "
             f"custos access attach {body.id[:16]} --sigfile {target}")
    return 0


def cmd_attach(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    g, body = access.fetch_request(client, ns.id)
    sigs = read_signature_file(ns.sigfile)
    if not sigs:
        raise InvalidInput(f"{ns.sigfile} holds no signature")
    for sig in sigs:
        g = access.submit_approval(client, g.id, sig.key_id, sig.sig)
    d = grant_json(g, body)
    out.emit(d, lambda: _approved_text(d))
    return 0


def cmd_revoke(ns: argparse.Namespace, out: Out) -> int:
    d = grant_json(access.revoke(connect(ns), ns.id, ns.reason))
    out.emit(d, lambda: f"revoked {d['id'][:16]} ({d['model']}, {_grantee(d)}): state {d['state']}")
    return 0


def cmd_extend(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    parent = access.get(client, ns.id)
    g = access.request(client, model="", duration_s=duration(ns.duration), reason=ns.reason, extends=parent.id,
                       pending_s=duration(ns.pending) if ns.pending else 0)
    g, body = access.fetch_request(client, g.id)
    d = grant_json(g, body)
    out.emit(d, lambda: _show_text(d, body) + f"\n\nextension request id {g.id}; once approved, grant "
             f"{parent.id[:16]} runs {_for(body.duration_s)} longer")
    return 0


def cmd_who(ns: argparse.Namespace, out: Out) -> int:
    w = access.who(connect(ns), ns.model)
    holders = [{"kind": h.kind, "principal": h.principal, "host": h.host, "detail": h.detail,
                "grant_id": h.grant_id, "until": ts(h.until_unix_ns)} for h in w.holders]
    d = {"model": w.model or ns.model, "holders": holders, "principals": w.principals, "cap": w.cap,
         "problems": list(w.problems)}

    def text() -> str:
        cap = f" (cap {w.cap}{', EXCEEDED' if w.cap and w.principals > w.cap else ''})" if w.cap else ""
        lines = [f"{d['model']}: {w.principals} principals and hosts can obtain plaintext now{cap}",
                 table([[h["kind"], h["principal"] or "-", h["host"] or "-", h["detail"], h["until"]]
                        for h in holders], ["KIND", "PRINCIPAL", "HOST", "DETAIL", "UNTIL"])]
        lines += [f"problem: {p}" for p in w.problems]
        return "\n".join(lines)

    out.emit(d, text)
    return 0


def _policy(p: access_pb2.AccessPolicy) -> AccessPolicy:
    return AccessPolicy(required=p.required, approvals=p.approvals, approver_role=p.approver_role,
                        max_lifetime_s=p.max_lifetime_seconds, derivatives=p.derivatives, on_expiry=p.on_expiry,
                        break_glass=p.break_glass)


def _policy_text(model: str, p: AccessPolicy, note: str = "") -> str:
    expiry = ("(a running workload is stopped)" if p.on_expiry == "stop"
              else "(a running workload keeps running, without new unwraps)")
    if not p.required:
        return f"access policy of {model}{note}: no grant required (uncovered model, opted out)"
    return (f"access policy of {model}{note}:\n"
            f"  approvals:     {p.approvals} from {p.approver_role}, besides the requester and the grantee\n"
            f"  max lifetime:  {_for(p.max_lifetime_s)}\n"
            f"  derivatives:   {'a grant reaches them' if p.derivatives else 'not included'}\n"
            f"  on expiry:     {p.on_expiry} {expiry}\n"
            f"  break-glass:   {'allowed (audited, raises an incident)' if p.break_glass else 'not allowed'}")


def cmd_policy_show(ns: argparse.Namespace, out: Out) -> int:
    r = access.get_policy(connect(ns), ns.model)
    p = _policy(r.policy)
    d = {"model": ns.model, **p.to_json(), "is_default": r.is_default, "covered": r.covered}
    note = " (default" + (", covered model" if r.covered else "") + ")" if r.is_default else ""
    out.emit(d, lambda: _policy_text(ns.model, p, note))
    return 0


def cmd_policy_set(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    p = _policy(access.get_policy(client, ns.model).policy)
    changes: dict[str, Any] = {}
    if ns.approvals is not None:
        changes["approvals"] = ns.approvals
    for name in ("approver_role", "derivatives", "on_expiry", "required", "break_glass"):
        if getattr(ns, name) is not None:
            changes[name] = getattr(ns, name)
    if ns.max_lifetime is not None:
        changes["max_lifetime_s"] = duration(ns.max_lifetime)
    if changes.get("required") is False and "approvals" not in changes:
        changes["approvals"] = 0
    if not changes:
        raise InvalidInput("nothing to change: give --approvals, --approver-role, --max-lifetime, "
                           "--derivatives, --on-expiry, --required or --break-glass")
    saved = _policy(access.set_policy(client, ns.model, replace(p, **changes)))
    d = {"model": ns.model, **saved.to_json()}
    out.emit(d, lambda: _policy_text(ns.model, saved))
    return 0


def _public_key(text: str) -> str:
    """A public key from a .pub file or given inline (OpenSSH line or 64 hex digits)."""
    path = Path(text)
    try:
        if path.is_file():
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            if len(lines) != 1 or "PRIVATE KEY" in lines[0]:
                raise InvalidInput(f"{text}: want one public key (an OpenSSH .pub line or 64 hex digits)")
            return lines[0]
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {text}: {getattr(exc, 'strerror', None) or exc}") from None
    return text.strip()


def _approver_json(a: access_pb2.Approver) -> dict[str, Any]:
    return {"name": a.name, "principals": list(a.principals), "public_keys": list(a.public_keys),
            "key_ids": list(a.key_ids)}


def cmd_approver_add(ns: argparse.Namespace, out: Out) -> int:
    a = access.add_approver(connect(ns), name=ns.name, principals=ns.principal,
                            public_keys=[_public_key(k) for k in ns.key], replace=ns.replace)
    d = _approver_json(a)
    out.emit(d, f"approver {a.name}: certificate identities {', '.join(a.principals)}; "
                f"keys {', '.join(k[:16] for k in a.key_ids)}")
    return 0


def cmd_approver_list(ns: argparse.Namespace, out: Out) -> int:
    rows = [_approver_json(a) for a in access.list_approvers(connect(ns))]
    out.emit(rows, lambda: table([[r["name"], ",".join(r["principals"]), ",".join(k[:16] for k in r["key_ids"])]
                                  for r in rows], ["NAME", "CERTIFICATE IDENTITIES", "KEYS"]))
    return 0


def cmd_break_glass(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    key = load_signer(ns)
    g, body = _request(client, ns)
    print("BREAK-GLASS: activating this request WITHOUT a second approver.\n"
          "This is audited and raises a HIGH-SEVERITY INCIDENT that responders must close.\n"
          + "\n".join(body.summary()), file=sys.stderr)
    g = access.break_glass(client, g.id, key)
    d = grant_json(g, body)
    out.emit(d, lambda: _show_text(d, body) + "\n\n*** break-glass grant active: a high-severity incident is "
             "raised (custos incident list) ***")
    return 0


def _request_args(p: argparse.ArgumentParser, *, default_for: str | None = None) -> None:
    p.add_argument("--model", required=True, help="the model whose weights the grant reaches")
    p.add_argument("--artifact", help="one artifact (id or prefix); default: every stored artifact of the model "
                   "(and of its derivatives if the policy says so)")
    p.add_argument("--host", action="append", help="a host whose agent may unwrap (custos run); repeat for more")
    p.add_argument("--principal", help="a certificate identity that may unwrap (custos pull)")
    p.add_argument("--for", dest="duration", required=default_for is None, default=default_for,
                   help="how long the grant lasts once active, e.g. 30m, 4h")
    p.add_argument("--reason", required=True, help="why: approvers see it")


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    ac = sub.add_parser("access", help="the two-person rule: request, approve, revoke weight access").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    rq = ac.add_parser("request", parents=[common], help="ask for access; prints the id and what approvers see")
    _request_args(rq)
    rq.add_argument("--pending", help="how long approvers have (default 24h, at most 7d)")
    rq.set_defaults(fn=cmd_request)
    sh = ac.add_parser("show", parents=[common], help="everything an approver must see, verified against the id")
    sh.add_argument("id", help="request id or a unique prefix")
    sh.set_defaults(fn=cmd_show)
    pe = ac.add_parser("pending", parents=[common], help="requests waiting for approval, newest last")
    pe.add_argument("--model", help="only requests on this model")
    pe.set_defaults(fn=cmd_pending)
    ls = ac.add_parser("list", parents=[common], help="requests and grants")
    ls.add_argument("--state", action="append", choices=GRANT_STATES, help="only these states (repeat)")
    ls.add_argument("--model", help="only grants on this model")
    ls.set_defaults(fn=cmd_list)
    ap = ac.add_parser("approve", parents=[common], help="approve: sign the request's canonical bytes and submit")
    ap.add_argument("id", help="request id or a unique prefix")
    ap.add_argument("--key", required=True, help="your approver key (custos signer keygen format)")
    ap.add_argument("--ssh", action="store_true", help="sign as ssh-keygen would (SSHSIG, namespace custos-access)")
    ap.add_argument("--passphrase-file", help="a file with the key's passphrase")
    ap.set_defaults(fn=cmd_approve)
    ex = ac.add_parser("export", parents=[common], help="write the exact bytes an approver signs (offline signing)")
    ex.add_argument("id", help="request id or a unique prefix")
    ex.add_argument("--file", help="write here instead of stdout")
    ex.set_defaults(fn=cmd_export)
    sf = ac.add_parser("sign-file", parents=[common], help="approve an exported request offline")
    sf.add_argument("file", help="the exported request file to sign offline")
    sf.add_argument("--key", required=True, help="your approver key file")
    sf.add_argument("--out", help="signature file (default FILE.sig.json)")
    sf.add_argument("--passphrase-file", help="a file with the key's passphrase")
    sf.set_defaults(fn=cmd_sign_file)
    at = ac.add_parser("attach", parents=[common],
                       help="submit an approval file (sign-file output or ssh-keygen -Y sign -n custos-access)")
    at.add_argument("id", help="request id or a unique prefix")
    at.add_argument("--sigfile", required=True, help="the approval signature file")
    at.set_defaults(fn=cmd_attach)
    rv = ac.add_parser("revoke", parents=[common], help="revoke a request or an active grant now")
    rv.add_argument("id", help="grant id or a unique prefix")
    rv.add_argument("--reason", required=True, help="why, for the record")
    rv.set_defaults(fn=cmd_revoke)
    et = ac.add_parser("extend", parents=[common], help="ask to extend an active grant (approved like a request)")
    et.add_argument("id", help="the active grant")
    et.add_argument("--for", dest="duration", required=True, help="how much longer, e.g. 2h")
    et.add_argument("--reason", required=True, help="why the grant needs longer: approvers see it")
    et.add_argument("--pending", help="how long approvers have (default 24h)")
    et.set_defaults(fn=cmd_extend)
    wh = ac.add_parser("who", parents=[common], help="every principal and host that can obtain plaintext now")
    wh.add_argument("model", help="a model")
    wh.set_defaults(fn=cmd_who)
    po = ac.add_parser("policy", help="a model's access policy").add_subparsers(
        dest="policy_cmd", required=True, metavar="SUBCOMMAND")
    ps = po.add_parser("show", parents=[common], help="the policy (or the default) of a model")
    ps.add_argument("model", help="a model")
    ps.set_defaults(fn=cmd_policy_show)
    pst = po.add_parser("set", parents=[common], help="change fields of a model's policy (admin)")
    pst.add_argument("model", help="a model")
    pst.add_argument("--approvals", type=int, help="people besides the requester and the grantee (>= 1 if required)")
    pst.add_argument("--approver-role", choices=["security-team", "executive"], help="the role whose people approve")
    pst.add_argument("--max-lifetime", help="the longest grant, e.g. 8h")
    pst.add_argument("--derivatives", action=argparse.BooleanOptionalAction, default=None,
                     help="a grant on the model reaches its derivatives")
    pst.add_argument("--on-expiry", choices=["stop", "run"], help="a running workload when its grant ends")
    pst.add_argument("--required", action=argparse.BooleanOptionalAction, default=None,
                     help="unwraps need a grant (a covered model cannot opt out)")
    pst.add_argument("--not-required", dest="required", action="store_false", default=None,
                     help="same as --no-required (uncovered models only)")
    pst.add_argument("--break-glass", action=argparse.BooleanOptionalAction, default=None,
                     help="emergency grants without approval (audited, an incident)")
    pst.set_defaults(fn=cmd_policy_set)
    approver = ac.add_parser("approver", help="who may approve: people, their certificate identities and keys")
    apr = approver.add_subparsers(dest="approver_cmd", required=True, metavar="SUBCOMMAND")
    aa = apr.add_parser("add", parents=[common], help="register an approver (admin)")
    aa.add_argument("name", help="the approver's name (one person)")
    aa.add_argument("--principal", action="append", required=True,
                    help="a certificate identity (CN) of this person; repeat for more")
    aa.add_argument("--key", action="append", required=True,
                    help="a public key: .pub file, OpenSSH line or 64 hex digits; repeat for more")
    aa.add_argument("--replace", action="store_true", help="replace the approver's identities and keys")
    aa.set_defaults(fn=cmd_approver_add)
    al = apr.add_parser("list", parents=[common], help="registered approvers")
    al.set_defaults(fn=cmd_approver_list)
    bg = ac.add_parser("break-glass", parents=[common],
                       help="EMERGENCY: a grant without a second approver (audited; raises an incident)")
    _request_args(bg, default_for="30m")
    bg.add_argument("--key", required=True, help="your own approver key")
    bg.add_argument("--passphrase-file", help="a file with the key's passphrase")
    bg.set_defaults(fn=cmd_break_glass)
