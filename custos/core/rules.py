"""Anomaly rules, pure: the rule table, findings and the functions that find them.

Rules are data (``RULES``: name, category under the chapter's definition of an AI
safety incident, default severity). Each rule is a small pure function over
audit events (:class:`custos.core.audit_chain.Event`) or records that returns
:class:`Finding`s; a finding becomes an alert. Alert ids are digests of what
makes a finding one finding, so evaluating the same events twice writes each
alert once. The control plane's engine (custos.controlplane.rules) feeds them
from the Store; thresholds come from its config. Specified in docs/incidents.md.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from custos.core.audit_chain import Event

SEVERITIES = ("low", "medium", "high", "critical")


# The chapter's four kinds of "artificial intelligence safety incident", 22602(c)(1)-(4).
CATEGORIES: Mapping[str, str] = {
    "c1": "(c)(1) A covered model autonomously engaging in behavior other than at the request of a user "
          "that materially increases the risk of a hazardous capability being used",
    "c2": "(c)(2) Theft, misappropriation, malicious use, inadvertent release, unauthorized access, "
          "or escape of the model weights of a covered model",
    "c3": "(c)(3) The critical failure of technical or administrative controls, including controls "
          "limiting the ability to modify a covered model",
    "c4": "(c)(4) Unauthorized use of the hazardous capability of a covered model",
}


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule: what it detects, its category and its default severity."""

    name: str
    category: str
    severity: str
    source: str  # audit | custody | orders | audit-chain | vault-audit
    summary: str


RULES: Mapping[str, RuleSpec] = {r.name: r for r in (
    RuleSpec("unwrap-unauthorized", "c2", "high", "audit",
             "a data key handed to an agent host outside the model's custody policy, or to a role "
             "other than the allowed ones"),
    RuleSpec("unwrap-rate", "c2", "high", "audit",
             "more data keys handed to one host or one principal in a sliding window than its baseline"),
    RuleSpec("unauthorized-copy", "c2", "high", "custody",
             "a plaintext copy on a host or path outside the model's custody policy (raised by custody)"),
    RuleSpec("unregistered-weights", "c3", "medium", "custody",
             "weight files that match no registered artifact (raised by custody)"),
    RuleSpec("tampered-weights", "c3", "high", "custody",
             "a file at a registered copy's relative path whose SHA-256 no longer matches the manifest"),
    RuleSpec("lease-lapsed", "c3", "medium", "audit",
             "an agent's custody lease lapsed: the host is out of contact and fails closed"),
    RuleSpec("order-ack-missing", "c3", "high", "orders",
             "an executing order not acked by a host holding a scoped copy past the deadline"),
    RuleSpec("audit-chain-broken", "c3", "critical", "audit-chain",
             "the audit log fails verification: an event was edited, deleted, inserted or truncated"),
    RuleSpec("vault-foreign-access", "c2", "high", "vault-audit",
             "an identity other than the control plane's used a model's Transit key in Vault"),
    RuleSpec("access-break-glass", "c3", "high", "audit",
             "a break-glass access grant was activated: weights released without a second approver"),
    RuleSpec("access-holders-over-cap", "c3", "medium", "access",
             "more principals, hosts and Vault policies can reach a model's weights than the configured cap"),
    RuleSpec("open-denied", "c2", "high", "custody",
             "a process outside the custody policy tried to open a protected plaintext file; the kernel "
             "refused it (raised by custody from the agent's fanotify guard)"),
    RuleSpec("weights-read", "c2", "high", "custody",
             "a process outside the custody policy opened or read registered weights on a scan root "
             "(raised by custody from the agent's fanotify notifications)"),
    RuleSpec("canary-opened", "c2", "high", "custody",
             "a canary (decoy weight file) was opened: someone is looking for weights where none should be "
             "read (raised by custody)"),
)}


DEFAULT_CATEGORY = "c3"  # an alert from a rule this table does not know: treated as a control failure


KEY_HANDOUT_ACTIONS = ("UnwrapDataKey", "CreateDataKey")


@dataclass(frozen=True, slots=True)
class UnwrapRateConfig:
    window_s: int = 60
    max_per_host: int = 20
    max_per_principal: int = 50


@dataclass(frozen=True, slots=True)
class Finding:
    """What a rule found. ``key`` is what makes it one finding: its alert id derives from it."""

    rule: str
    key: tuple[str, ...]
    at_ns: int
    detail: str
    model: str = ""
    artifact_id: str = ""
    host: str = ""
    principal: str = ""
    evidence: tuple[int, ...] = ()  # audit event sequence numbers

    @property
    def id(self) -> str:
        return alert_id(self.rule, self.key)

    def alert(self, severity: str) -> dict[str, Any]:
        """The alert record (custody's alert shape, plus principal, evidence and source)."""
        spec = RULES.get(self.rule)
        return {
            "artifact_id": self.artifact_id, "at_ns": self.at_ns, "detail": self.detail[:1000],
            "evidence": list(self.evidence[:20]), "host": self.host[:253], "id": self.id, "model": self.model,
            "principal": self.principal[:253], "rule": self.rule, "severity": severity,
            "source": spec.source if spec else "rules", "state": "open",
        }


def alert_id(rule: str, key: Sequence[str]) -> str:
    h = hashlib.sha256(b"custos.v1.alert\x00" + "\x00".join([rule, *key]).encode())
    return h.hexdigest()[:24]


def is_key_handout(ev: Event) -> bool:
    """A data key left the control plane: an ok unwrap, or an ok data-key creation for a push."""
    return (ev.action in KEY_HANDOUT_ACTIONS and ev.object.startswith("artifact/")
            and (ev.result == "ok" or ev.result.startswith("ok:")))


def handout_host(ev: Event) -> str:
    """Where a key went: an agent speaks for its host (certificate CN); anyone else by address."""
    return ev.principal if ev.role == "agent" else ev.host


def unwrap_result_label(ev: Event) -> str | None:
    """Metrics label of an unwrap: ok, denied, or the error kind. None if not an unwrap."""
    if ev.action != "UnwrapDataKey":
        return None
    if ev.result == "ok" or ev.result.startswith("ok:"):
        return "ok"
    if ev.result.startswith("error: "):
        kind = ev.result[len("error: "):].split(":", 1)[0].strip()
        return kind if kind.isidentifier() else "error"
    return ev.result if ev.result in ("denied",) else "other"


def unauthorized_unwraps(events: Iterable[Event], *, artifact_model: Mapping[str, str],
                         custody_hosts: Mapping[str, Sequence[str]],
                         allowed_roles: Collection[str]) -> list[Finding]:
    """Key handouts to an agent host outside the model's ``custody_hosts`` patterns, or to a
    non-agent role not in ``allowed_roles``. One finding per (principal, role, artifact)."""
    out = []
    for ev in events:
        if not is_key_handout(ev):
            continue
        aid = ev.object[len("artifact/"):]
        model = artifact_model.get(aid, "")
        if ev.role == "agent":
            patterns = list(custody_hosts.get(model, ()))
            if any(fnmatch.fnmatchcase(ev.principal, p) for p in patterns):
                continue
            why = (f"data key of artifact {aid[:12]} (model {model or '?'}) handed to host {ev.principal}, "
                   f"outside the model's custody hosts {patterns or '(none)'}")
        elif ev.role in allowed_roles:
            continue
        else:
            why = (f"data key of artifact {aid[:12]} (model {model or '?'}) handed to {ev.principal} "
                   f"with role {ev.role!r}, which may not receive data keys")
        out.append(Finding(rule="unwrap-unauthorized", key=(ev.principal, ev.role, aid), at_ns=ev.time_ns,
                           detail=f"{why} ({ev.action} {ev.result[:60]}, event {ev.seq})", model=model,
                           artifact_id=aid, host=handout_host(ev), principal=ev.principal, evidence=(ev.seq,)))
    return out


def unwrap_rate(events: Sequence[Event], *, config: UnwrapRateConfig,
                artifact_model: Mapping[str, str]) -> list[Finding]:
    """Key handouts per host and per principal in a sliding window above their limit.

    ``events`` in sequence order, including the history of the last window. At
    most one finding per subject per window-sized time bucket.
    """
    window_ns = config.window_s * 1_000_000_000
    windows: dict[tuple[str, str], deque[Event]] = {}
    out: dict[str, Finding] = {}
    for ev in events:
        if not is_key_handout(ev):
            continue
        for kind, subject, limit in (("host", handout_host(ev), config.max_per_host),
                                     ("principal", ev.principal, config.max_per_principal)):
            dq = windows.setdefault((kind, subject), deque())
            dq.append(ev)
            while dq and dq[0].time_ns <= ev.time_ns - window_ns:
                dq.popleft()
            if len(dq) <= limit:
                continue
            aid = ev.object[len("artifact/"):]
            f = Finding(
                rule="unwrap-rate", key=(kind, subject, str(ev.time_ns // window_ns)), at_ns=ev.time_ns,
                detail=(f"{len(dq)} data keys handed to {kind} {subject} within {config.window_s}s "
                        f"(baseline at most {limit}); latest: artifact {aid[:12]}, event {ev.seq}"),
                model=artifact_model.get(aid, ""), artifact_id=aid,
                host=handout_host(ev) if kind == "host" else "", principal=ev.principal,
                evidence=tuple(e.seq for e in list(dq)[-10:]))
            out.setdefault(f.id, f)
    return list(out.values())


def lease_lapses(events: Iterable[Event]) -> list[Finding]:
    """Every ``LeaseLapsed`` event: the agent is cut off and halts its copies on its own."""
    out = []
    for ev in events:
        if ev.action != "LeaseLapsed" or not ev.object.startswith("host/"):
            continue
        host = ev.object[len("host/"):]
        out.append(Finding(rule="lease-lapsed", key=(host, str(ev.seq)), at_ns=ev.time_ns, host=host,
                           detail=f"custody lease of host {host} lapsed ({ev.result[:120]}); its agent is out "
                                  f"of contact and fails closed (event {ev.seq})", evidence=(ev.seq,)))
    return out


BREAK_GLASS_ACTION = "AccessBreakGlass"


def is_break_glass(ev: Event) -> bool:
    """A break-glass activation that succeeded (a refused attempt is only audited)."""
    return ev.action == BREAK_GLASS_ACTION and ev.object.startswith("access/") and ev.result.startswith("ok")


def break_glass_uses(events: Iterable[Event], requests: Mapping[str, Mapping[str, Any]]) -> list[Finding]:
    """One finding per successful ``AccessBreakGlass`` event. ``requests``: request id -> its
    record (``access/requests/{id}``: model, body...), for the model and grantee when known."""
    out = []
    for ev in events:
        if not is_break_glass(ev):
            continue
        rid = ev.object[len("access/"):]
        rec = requests.get(rid, {})
        model = str(rec.get("model", ""))
        hosts = [str(h) for h in rec.get("hosts", [])]
        grantee = str(rec.get("principal", "")) or ", ".join(hosts) or "?"
        until = int(rec.get("not_after_ns", 0))
        out.append(Finding(
            rule="access-break-glass", key=(rid,), at_ns=ev.time_ns, model=model, host=hosts[0] if hosts else "",
            principal=ev.principal, evidence=(ev.seq,),
            detail=(f"BREAK-GLASS: {ev.principal} activated access grant {rid[:16]} on model {model or '?'} "
                    f"for {grantee} without a second approver"
                    + (f", until {until // 1_000_000_000} (Unix)" if until else "")
                    + (f"; reason: {rec['reason']}" if rec.get("reason") else "")
                    + f" (event {ev.seq}: {ev.result[:120]})")))
    return out


def holders_over_cap(counts: Mapping[str, Mapping[str, Any]], *, cap: int) -> list[Finding]:
    """Models whose holder count (model -> {"count", "digest", "names", "at_ns"}) is above
    ``cap`` (0: no cap). One finding per model and set of holders."""
    if cap <= 0:
        return []
    out = []
    for model, rec in sorted(counts.items()):
        n = int(rec.get("count", 0))
        if n <= cap:
            continue
        names = [str(x) for x in rec.get("names", [])]
        shown = ", ".join(names[:10]) + (", ..." if n > 10 else "")
        out.append(Finding(
            rule="access-holders-over-cap", key=(model, str(rec.get("digest", n))), at_ns=int(rec.get("at_ns", 0)),
            model=model,
            detail=(f"{n} principals, hosts and Vault policies can reach the weights of {model}, above the cap "
                    f"of {cap}: {shown} (custos access who {model})")))
    return out


@dataclass(frozen=True, slots=True)
class ExecutingOrder:
    """What the ack rule needs of an order: who must ack, who did."""

    id: str
    action: str
    quorum_at_ns: int
    hosts: Mapping[str, str]  # host holding a scoped copy -> a model of those copies
    acked: frozenset[str]


def missing_acks(orders: Iterable[ExecutingOrder], *, now_ns: int, deadline_s: int) -> list[Finding]:
    """Hosts holding a scoped copy that have not acked an order executing for over ``deadline_s``."""
    out = []
    for o in orders:
        late_ns = now_ns - o.quorum_at_ns
        if o.action == "lift" or not o.quorum_at_ns or late_ns <= deadline_s * 1_000_000_000:
            continue
        for host in sorted(set(o.hosts) - o.acked):
            out.append(Finding(
                rule="order-ack-missing", key=(o.id, host), at_ns=now_ns, host=host, model=o.hosts[host],
                detail=(f"order {o.id[:16]} ({o.action}) has been executing for {late_ns // 1_000_000_000}s "
                        f"and host {host}, which holds a scoped copy, has not acked (deadline {deadline_s}s)")))
    return out


def chain_failure(result: Any, *, now_ns: int) -> list[Finding]:
    """A failed ``verify_log`` result -> one finding, named by its first bad event."""
    if result:
        return []
    first = result.first_bad_seq
    problem = (result.problems or ["unknown problem"])[0]
    return [Finding(rule="audit-chain-broken", key=(str(first), problem[:200]), at_ns=now_ns,
                    detail=f"audit log verification failed at event {first}: {problem}"[:1000],
                    evidence=(first,) if first else ())]


@dataclass(frozen=True, slots=True)
class FileObservation:
    """A weight file a host reported: full SHA-256, or a prefix of it (from an alert's text)."""

    host: str
    path: str
    size: int
    sha256: str


def tamper_candidates(obs: FileObservation, relpaths: Mapping[str, Sequence[tuple[str, Any]]]
                      ) -> list[tuple[str, str, Any]]:
    """(artifact id, root, manifest entry) for every manifest file that ``obs`` sits at the
    relative path of, with other bytes. Whether a copy is known at that root is the caller's."""
    out = []
    parts = obs.path.split("/")
    for i in range(1, len(parts)):
        rel = "/".join(parts[i:])
        for aid, entry in relpaths.get(rel, ()):
            if entry.sha256.startswith(obs.sha256) and entry.size == obs.size:
                continue  # the same bytes: not tampered
            root = "/".join(parts[:i]) or "/"
            out.append((aid, root, entry))
    return out


def tamper_finding(obs: FileObservation, aid: str, root: str, entry: Any, model: str, *, at_ns: int) -> Finding:
    return Finding(
        rule="tampered-weights", key=(obs.host, root, aid, entry.path), at_ns=at_ns,
        detail=(f"{obs.path} on {obs.host} is {entry.path} of artifact {aid[:12]} (copy at {root}) but no "
                f"longer matches the manifest: expected sha256 {entry.sha256[:16]} ({entry.size} bytes), "
                f"found {obs.sha256[:16]} ({obs.size} bytes)"),
        model=model, artifact_id=aid, host=obs.host)


_UNREGISTERED_SUFFIX = " matches no registered artifact"


def observation_from_alert(alert: Mapping[str, Any]) -> FileObservation | None:
    """The file an ``unregistered-weights`` alert names (custody's detail text), or None."""

    m = re.fullmatch(r"(?P<path>/.*) \((?P<size>\d+) bytes, sha256 (?P<sha>[0-9a-f]{16})\)"
                     + re.escape(_UNREGISTERED_SUFFIX), str(alert.get("detail", "")))
    if m is None or not alert.get("host"):
        return None
    return FileObservation(host=str(alert["host"]), path=m["path"], size=int(m["size"]), sha256=m["sha"])
