"""The two-person rule for weight access: policies, requests, approvals. Pure logic.

No one unwraps a data key of a model under an access policy without an active
grant: a request (who asks, for which artifacts, for which principal or hosts, for
how long, why) approved by enough *other* people. An approval is a signature over
the request's canonical bytes (domain ``custos.v1.access-approval\\x00``; SSHSIG
namespace ``custos-access``) by a key registered to an approver, submitted under
one of that approver's certificate identities — both are needed, and an approval
in the audit log is non-repudiable. A signature over one request never verifies
for another: the body holds a random nonce, and the id is the hash of the body.

Counting (``count_approvals``): an approver is a person with one or more
certificate identities (principals) and one or more keys; no key and no principal
belongs to two approvers. A person counts once however many keys or certificates
they use; the requester and the grantee never count; an approval made under the
wrong role, by an unknown key, by a principal not the key's owner, or with a
signature that does not verify counts zero.

Specified in docs/access.md.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.core.canonical import encode_canonical
from custos.core.names import HEX64, MODEL_NAME
from custos.core.signers import Signature, SignerKey, decode_strict, sign_raw, sign_ssh
from custos.core.signers.base import SIGNER_NAME
from custos.errors import InvalidInput

REQUEST_DOMAIN = b"custos.v1.access-request\x00"  # request id = SHA-256(domain + body)
APPROVAL_DOMAIN = b"custos.v1.access-approval\x00"  # what an approver signs: domain + body
APPROVAL_NAMESPACE = "custos-access"  # ssh-keygen -Y sign -n custos-access
REQUEST_ENCODING = 1
APPROVER_ROLES = ("security-team", "executive")
ON_EXPIRY = ("stop", "run")
# A request's states: pending, then active (a grant) or applied (an extension), until it is
# expired, revoked, or void (a model it reaches was halted before it was approved).
GRANT_STATES = ("pending", "active", "expired", "revoked", "applied", "void")
MIN_LIFETIME = 60
MAX_LIFETIME = 7 * 24 * 3600
MAX_PENDING = 7 * 24 * 3600  # a request is approved within a week or asked again
DEFAULT_PENDING = 24 * 3600
MAX_APPROVALS = 16
MAX_HOSTS = 64
MAX_ARTIFACTS = 10_000
MAX_REASON_CHARS = 2000
MAX_REQUEST_BYTES = 2 * 1024 * 1024
MAX_KEYS_PER_APPROVER = 8
MAX_PRINCIPALS_PER_APPROVER = 8
BREAK_GLASS_MAX = 3600
_MAX_INT = 2**53
_NONCE = re.compile(r"^[0-9a-f]{32}$")
# Certificate common names: what a principal or a host name can be.
PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+:-]{0,127}$")
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_FIELDS = frozenset(("artifacts", "duration_s", "encoding", "expires_at", "extends", "grantee", "models",
                     "model", "nonce", "reason", "requested_at", "requester", "requester_cert"))


class AccessError(InvalidInput):
    """A policy, request or approver is malformed or breaks a rule."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: object, what: str, lo: int, hi: int) -> int:
    if not _is_int(value) or not lo <= value <= hi:  # type: ignore[operator]
        raise AccessError(f"{what} must be an integer from {lo} to {hi}")
    return value  # type: ignore[return-value]


def check_reason(reason: object) -> str:
    """1..MAX_REASON_CHARS characters, no control or bidi characters. Raises AccessError."""
    if not isinstance(reason, str) or not reason.strip():
        raise AccessError("a reason is required (--reason): approvers see it")
    if len(reason) > MAX_REASON_CHARS:
        raise AccessError(f"reason longer than {MAX_REASON_CHARS} characters")
    if any((ord(c) < 0x20 and c not in "\n\t") or ord(c) == 0x7F or c in _BIDI for c in reason):
        raise AccessError("reason holds control or bidi characters: approvers must see what they approve")
    return reason


def check_principal(name: object, what: str = "principal") -> str:
    if not isinstance(name, str) or not PRINCIPAL.match(name):
        raise AccessError(f"bad {what} {str(name)[:64]!r}: want 1-128 of A-Z a-z 0-9 . _ @ + : -")
    return name


# -- policy ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who must approve an unwrap of a model's data keys.

    ``required``: unwraps need an active grant. ``approvals``: how many people besides
    the requester and grantee (>= 1). ``approver_role``: the certificate role they
    approve under. ``max_lifetime_s``: the longest grant. ``derivatives``: a request
    on the model may reach its derivatives' artifacts. ``on_expiry``: what a running
    supervised workload does when its grant ends — ``stop`` it, or let it ``run``
    without new unwraps. ``break_glass``: whether an emergency grant without approval
    may be taken (audited, a high-severity incident, at most BREAK_GLASS_MAX).
    """

    required: bool = True
    approvals: int = 1
    approver_role: str = "security-team"
    max_lifetime_s: int = 8 * 3600
    derivatives: bool = True
    on_expiry: str = "stop"
    break_glass: bool = True

    def __post_init__(self) -> None:
        for name in ("required", "derivatives", "break_glass"):
            if not isinstance(getattr(self, name), bool):
                raise AccessError(f"access policy: {name} must be true or false")
        _int(self.approvals, "access policy: approvals", 1 if self.required else 0, MAX_APPROVALS)
        if self.approver_role not in APPROVER_ROLES:
            raise AccessError(f"access policy: approver_role must be one of {', '.join(APPROVER_ROLES)}")
        _int(self.max_lifetime_s, "access policy: max_lifetime_s", MIN_LIFETIME, MAX_LIFETIME)
        if self.on_expiry not in ON_EXPIRY:
            raise AccessError(f"access policy: on_expiry must be one of {', '.join(ON_EXPIRY)}")

    def check_for(self, *, covered: bool) -> AccessPolicy:
        """Fail closed: a covered model's weights never leave with zero approvals. Raises AccessError."""
        if covered and (not self.required or self.approvals < 1):
            raise AccessError("a covered model's access policy must require at least 1 approval "
                              "besides the requester (the two-person rule cannot be turned off)")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"approvals": self.approvals, "approver_role": self.approver_role,
                "break_glass": self.break_glass, "derivatives": self.derivatives,
                "max_lifetime_s": self.max_lifetime_s, "on_expiry": self.on_expiry, "required": self.required}

    @classmethod
    def from_json(cls, obj: object) -> AccessPolicy:
        if not isinstance(obj, Mapping):
            raise AccessError("access policy: want an object")
        known = set(cls().to_json())
        extra = set(obj) - known
        if extra:
            raise AccessError(f"access policy: unknown field {sorted(extra)[0]!r}")
        return replace(cls(), **{k: obj[k] for k in known if k in obj})


def default_policy(*, covered: bool) -> AccessPolicy:
    """On for a covered model; an uncovered model is off until its owner opts in."""
    return AccessPolicy() if covered else AccessPolicy(required=False, approvals=0)


# -- requests -------------------------------------------------------------------------


def _ids(values: object, what: str, pattern: re.Pattern[str], limit: int) -> tuple[str, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise AccessError(f"access request: {what} must be a list of strings")
    items = tuple(values)
    if not all(isinstance(v, str) and pattern.match(v) for v in items):
        bad = next(v for v in items if not (isinstance(v, str) and pattern.match(v)))
        raise AccessError(f"access request: bad entry in {what}: {str(bad)[:64]!r}")
    out = tuple(sorted(set(items)))
    if len(out) != len(items):
        raise AccessError(f"access request: duplicate entry in {what}")
    if len(out) > limit:
        raise AccessError(f"access request: more than {limit} {what}")
    return out


@dataclass(frozen=True, slots=True)
class Grantee:
    """Who may unwrap under a grant: one principal (a person's certificate identity,
    for ``custos pull``) or a list of hosts (their agents, for ``custos run``)."""

    principal: str = ""
    hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.principal) == bool(self.hosts):
            raise AccessError("access request: name exactly one of a principal (--principal) or hosts (--host)")
        if self.principal:
            check_principal(self.principal)
        object.__setattr__(self, "hosts", _ids(self.hosts, "hosts", PRINCIPAL, MAX_HOSTS))

    def keys(self) -> tuple[str, ...]:
        """Index keys: ``p:PRINCIPAL`` or ``h:HOST`` for each host."""
        return (f"p:{self.principal}",) if self.principal else tuple(f"h:{h}" for h in self.hosts)

    def to_json(self) -> dict[str, Any]:
        return {"hosts": list(self.hosts), "principal": self.principal}

    @classmethod
    def from_json(cls, obj: object) -> Grantee:
        if not isinstance(obj, Mapping) or set(obj) != {"hosts", "principal"}:
            raise AccessError("access request: grantee wants exactly hosts and principal")
        if not isinstance(obj["principal"], str) or not isinstance(obj["hosts"], list):
            raise AccessError("access request: grantee principal is a string, hosts a list")
        return cls(principal=obj["principal"], hosts=tuple(obj["hosts"]))

    def describe(self) -> str:
        return f"principal {self.principal}" if self.principal else "hosts " + ", ".join(self.hosts)


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """A validated request body; what approvers see and sign.

    ``model``: the model asked for; ``artifacts``: every artifact the grant will
    reach, resolved when the request is made (``models``: the models they belong to);
    ``grantee``; ``duration_s``: how long the grant lasts from its activation;
    ``requested_at`` < ``expires_at`` (Unix seconds): the request must be approved
    by then; ``extends``: the grant this request would extend, or "".
    """

    model: str
    artifacts: tuple[str, ...]
    models: tuple[str, ...]
    grantee: Grantee
    duration_s: int
    reason: str
    requester: str
    requester_cert: str
    requested_at: int
    expires_at: int
    nonce: str
    extends: str = ""
    encoding: int = REQUEST_ENCODING

    def __post_init__(self) -> None:
        if not _is_int(self.encoding) or self.encoding != REQUEST_ENCODING:
            raise AccessError(f"access request: unsupported encoding {self.encoding!r}")
        if not isinstance(self.model, str) or not MODEL_NAME.match(self.model):
            raise AccessError(f"access request: bad model name {str(self.model)[:64]!r}")
        arts = _ids(self.artifacts, "artifacts", HEX64, MAX_ARTIFACTS)
        if not arts:
            raise AccessError(f"access request: model {self.model} has no stored artifact to grant")
        models = _ids(self.models, "models", MODEL_NAME, MAX_ARTIFACTS)
        if self.model not in models:
            raise AccessError("access request: models must include the requested model")
        if not isinstance(self.grantee, Grantee):
            raise AccessError("access request: bad grantee")
        _int(self.duration_s, "access request: duration_s", MIN_LIFETIME, MAX_LIFETIME)
        check_reason(self.reason)
        check_principal(self.requester, "requester")
        cert = self.requester_cert
        if not isinstance(cert, str) or not (cert == "" or HEX64.match(cert)):
            raise AccessError("access request: requester_cert must be a SHA-256 in hex")
        _int(self.requested_at, "access request: requested_at", 0, _MAX_INT)
        _int(self.expires_at, "access request: expires_at", self.requested_at + 1, self.requested_at + MAX_PENDING)
        if not isinstance(self.nonce, str) or not _NONCE.match(self.nonce):
            raise AccessError("access request: nonce must be 32 lowercase hex digits")
        if not isinstance(self.extends, str) or not (self.extends == "" or HEX64.match(self.extends)):
            raise AccessError("access request: extends must be a request id or empty")
        object.__setattr__(self, "artifacts", arts)
        object.__setattr__(self, "models", models)

    @classmethod
    def create(cls, *, model: str, artifacts: Iterable[str], models: Iterable[str], grantee: Grantee,
               duration_s: int, reason: str, requester: str, requester_cert: str, requested_at: int,
               pending_s: int = DEFAULT_PENDING, extends: str = "") -> AccessRequest:
        """A new request with a fresh nonce. Raises AccessError."""
        _int(pending_s, "access request: pending time", 1, MAX_PENDING)
        return cls(model=model, artifacts=tuple(artifacts), models=tuple(models), grantee=grantee,
                   duration_s=duration_s, reason=reason, requester=requester, requester_cert=requester_cert,
                   requested_at=requested_at, expires_at=requested_at + pending_s, nonce=secrets.token_hex(16),
                   extends=extends)

    def to_json(self) -> dict[str, Any]:
        return {"artifacts": list(self.artifacts), "duration_s": self.duration_s, "encoding": self.encoding,
                "expires_at": self.expires_at, "extends": self.extends, "grantee": self.grantee.to_json(),
                "model": self.model, "models": list(self.models), "nonce": self.nonce, "reason": self.reason,
                "requested_at": self.requested_at, "requester": self.requester,
                "requester_cert": self.requester_cert}

    def encode(self) -> bytes:
        return encode_canonical(self.to_json())

    @classmethod
    def decode(cls, data: bytes) -> AccessRequest:
        """Parse canonical request bytes. Raises AccessError."""
        obj = decode_strict(data, "access request", MAX_REQUEST_BYTES, AccessError, AccessError)
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            raise AccessError(f"access request: want exactly the fields {', '.join(sorted(_FIELDS))}")
        for name in ("artifacts", "models"):
            if not isinstance(obj[name], list):
                raise AccessError(f"access request: {name} must be a list")
        req = cls(model=obj["model"], artifacts=tuple(obj["artifacts"]), models=tuple(obj["models"]),
                  grantee=Grantee.from_json(obj["grantee"]), duration_s=obj["duration_s"], reason=obj["reason"],
                  requester=obj["requester"], requester_cert=obj["requester_cert"],
                  requested_at=obj["requested_at"], expires_at=obj["expires_at"], nonce=obj["nonce"],
                  extends=obj["extends"], encoding=obj["encoding"])
        if req.encode() != bytes(data):
            raise AccessError("access request: bytes are not in canonical form (lists must be sorted)")
        return req

    @property
    def id(self) -> str:
        return request_id_of(self.encode())

    def signature_input(self) -> bytes:
        """What an approver signs: ``custos.v1.access-approval\\x00`` + body."""
        return APPROVAL_DOMAIN + self.encode()

    def sign(self, private_key: Ed25519PrivateKey) -> Signature:
        return sign_raw(private_key, self.signature_input())

    def sign_ssh(self, private_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> Signature:
        """As ``ssh-keygen -Y sign -n custos-access`` makes it."""
        return sign_ssh(private_key, self.signature_input(), namespace=APPROVAL_NAMESPACE)

    def summary(self) -> list[str]:
        """What an approver is shown before signing: every field that matters, nothing summarized away."""
        others = [m for m in self.models if m != self.model]
        lines = [f"request {self.id}",
                 f"  requester:  {self.requester}",
                 f"  grantee:    {self.grantee.describe()}",
                 f"  model:      {self.model}" + (f" (and derivatives {', '.join(others)})" if others else ""),
                 f"  artifacts:  {len(self.artifacts)}"]
        lines += [f"    {a}" for a in self.artifacts[:50]]
        if len(self.artifacts) > 50:
            lines.append(f"    ... and {len(self.artifacts) - 50} more (custos access show -o json)")
        extends = f" (extends grant {self.extends[:16]})" if self.extends else ""
        lines += [f"  for:        {self.duration_s} s{extends}", f"  reason:     {self.reason}"]
        return lines


def request_id_of(body: bytes) -> str:
    return hashlib.sha256(REQUEST_DOMAIN + bytes(body)).hexdigest()


# -- approvers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Approver:
    """One person who may approve: their certificate identities and their keys."""

    name: str
    principals: tuple[str, ...]
    keys: tuple[SignerKey, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not SIGNER_NAME.match(self.name):
            raise AccessError(f"bad approver name {str(self.name)[:64]!r}")
        principals = _ids(self.principals, "principals", PRINCIPAL, MAX_PRINCIPALS_PER_APPROVER)
        if not principals:
            raise AccessError(f"approver {self.name}: name at least one certificate identity (--principal)")
        if not self.keys or len(self.keys) > MAX_KEYS_PER_APPROVER:
            raise AccessError(f"approver {self.name}: 1 to {MAX_KEYS_PER_APPROVER} keys")
        if len({k.key_id for k in self.keys}) != len(self.keys):
            raise AccessError(f"approver {self.name}: the same key twice")
        object.__setattr__(self, "principals", principals)
        object.__setattr__(self, "keys", tuple(sorted(self.keys, key=lambda k: k.key_id)))

    def key(self, key_id: str) -> SignerKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    def to_json(self) -> dict[str, Any]:
        return {"keys": [k.to_json() for k in self.keys], "name": self.name, "principals": list(self.principals)}

    @classmethod
    def from_json(cls, obj: object) -> Approver:
        if not isinstance(obj, Mapping) or not {"keys", "name", "principals"} <= set(obj):
            raise AccessError("approver: want name, principals and keys")
        if not isinstance(obj["keys"], list) or not isinstance(obj["principals"], list):
            raise AccessError("approver: keys and principals are lists")
        return cls(name=obj["name"], principals=tuple(obj["principals"]),
                   keys=tuple(SignerKey.from_json(k) for k in obj["keys"]))


@dataclass(frozen=True, slots=True)
class Approval:
    """An approval as submitted: the signature, and the certificate it came under."""

    key_id: str
    sig: str
    principal: str  # the submitting certificate's identity
    role: str  # the submitting certificate's role
    cert_sha256: str = ""
    at_ns: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"at_ns": self.at_ns, "cert_sha256": self.cert_sha256, "key_id": self.key_id,
                "principal": self.principal, "role": self.role, "sig": self.sig}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Approval:
        return cls(key_id=obj["key_id"], sig=obj["sig"], principal=obj["principal"], role=obj["role"],
                   cert_sha256=obj.get("cert_sha256", ""), at_ns=int(obj.get("at_ns", 0)))


@dataclass(frozen=True, slots=True)
class ApprovalCount:
    """Who counted (approver names, sorted) and why each other approval did not."""

    counted: tuple[str, ...]
    refused: tuple[tuple[int, str], ...] = ()  # (index of the approval, why)
    needed: int = 0
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ok", len(self.counted) >= self.needed)


def person_of(principal: str, approvers: Iterable[Approver]) -> str:
    """The approver a certificate identity belongs to, or the identity itself."""
    return next((a.name for a in approvers if principal in a.principals), f"principal:{principal}")


def excluded_people(request: AccessRequest, approvers: Sequence[Approver]) -> set[str]:
    """Who never counts for ``request``: its requester and its grantee (a principal)."""
    out = {person_of(request.requester, approvers)}
    if request.grantee.principal:
        out.add(person_of(request.grantee.principal, approvers))
    return out


def judge_approval(request: AccessRequest, approval: Approval, approvers: Sequence[Approver],
                   policy: AccessPolicy) -> tuple[str | None, str]:
    """(approver name, "") if ``approval`` may count for ``request``, else (None, why)."""
    owner = next((a for a in approvers if a.key(approval.key_id) is not None), None)
    if owner is None:
        return None, f"key {approval.key_id[:16]} is not a registered approver key"
    if approval.principal not in owner.principals:
        return None, (f"key {approval.key_id[:16]} belongs to approver {owner.name}, "
                      f"not to the certificate identity {approval.principal}")
    if approval.role != policy.approver_role:
        return None, f"approved as {approval.role}; the policy wants {policy.approver_role}"
    if owner.name in excluded_people(request, approvers):
        return None, f"{owner.name} is the requester or the grantee: nobody approves their own access"
    key = owner.key(approval.key_id)
    assert key is not None
    why = key.verify(approval.sig, request.signature_input(), namespace=APPROVAL_NAMESPACE)
    if why is not None:
        return None, f"signature does not verify for this request: {why}"
    return owner.name, ""


def count_approvals(request: AccessRequest, approvals: Sequence[Approval], approvers: Sequence[Approver],
                    policy: AccessPolicy) -> ApprovalCount:
    """Count distinct people whose approvals of ``request`` hold under ``policy``."""
    counted: list[str] = []
    refused: list[tuple[int, str]] = []
    for i, approval in enumerate(approvals):
        name, why = judge_approval(request, approval, approvers, policy)
        if name is None:
            refused.append((i, why))
        elif name in counted:
            refused.append((i, f"{name} already approved: one person counts once"))
        else:
            counted.append(name)
    return ApprovalCount(tuple(sorted(counted)), tuple(refused), needed=policy.approvals)


def check_approver_set(approvers: Sequence[Approver]) -> None:
    """No key and no certificate identity belongs to two approvers. Raises AccessError."""
    keys: dict[str, str] = {}
    principals: dict[str, str] = {}
    for a in approvers:
        for k in a.keys:
            if keys.setdefault(k.key_id, a.name) != a.name:
                raise AccessError(f"key {k.key_id[:16]} is already approver {keys[k.key_id]}'s: one key, one person")
        for p in a.principals:
            if principals.setdefault(p, a.name) != a.name:
                raise AccessError(f"certificate identity {p} is already approver {principals[p]}'s")
