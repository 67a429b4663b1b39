"""The audit log, client side: events page by page, signed checkpoints, and verification that accepts
only a log that extends what this verifier verified before.

The checkpoint key is, first found: the one given (``key``, or CUSTOS_AUDIT_PUBKEY: a PEM public key
file), the one pinned in the trusted state, or, on first use, the one the server presents (with a
warning). The trusted state (:class:`custos.core.audit_chain.TrustedState`) is a private file:
``state_file``, else CUSTOS_AUDIT_STATE, else one per control plane (address and CA certificate)
under ``$XDG_STATE_HOME/custos/audit/`` (default ``~/.local/state``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custos.client.connection import ClientConfig
from custos.client.session import Client
from custos.core.audit_chain import DEFAULT_POLICY, CheckpointPolicy, LogVerification, TrustedState, raw_key, verify_log
from custos.errors import CustosError, IntegrityError, InvalidInput
from custos.fs.private import private_dir, write_private
from custos.v1 import audit_pb2

PAGE = 5000


def all_events(client: Client) -> list[audit_pb2.AuditEvent]:
    """Every event, oldest first, fetched a page at a time."""
    events: list[audit_pb2.AuditEvent] = []
    after = 0
    while True:
        resp = client.call(client.audit.ListEvents, audit_pb2.ListEventsRequest(after_seq=after, limit=PAGE),
                           audit_pb2.ListEventsResponse)
        events += list(resp.events)
        if not resp.next_after_seq:
            return events
        after = resp.next_after_seq


def get_checkpoints(client: Client) -> audit_pb2.GetCheckpointsResponse:
    """The signed checkpoints and the public key the server says signs them."""
    return client.call(client.audit.GetCheckpoints, audit_pb2.GetCheckpointsRequest(),
                       audit_pb2.GetCheckpointsResponse)


def load_public_key(path: str | Path, what: str = "audit key") -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file. Raises InvalidInput if it cannot be read or is another kind."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"{what} {path}: not an Ed25519 public key")
    return key


def pinned_key() -> Ed25519PublicKey | None:
    """The audit key pinned by CUSTOS_AUDIT_PUBKEY, or None. Raises InvalidInput if it cannot be read
    or is not an Ed25519 public key."""
    path = os.environ.get("CUSTOS_AUDIT_PUBKEY")
    return load_public_key(path, "CUSTOS_AUDIT_PUBKEY") if path else None


# -- the trusted state -------------------------------------------------------


def default_state_file(config: ClientConfig) -> Path:
    """Where the trusted state of the control plane at ``config`` lives by default: one file per
    address and CA, so a new deployment on a reused address starts afresh. Raises InvalidInput if the
    CA certificate cannot be read."""
    try:
        ca = config.ca.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read CA certificate {config.ca}: {exc.strerror}") from None
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    ident = hashlib.sha256(config.addr.encode() + b"\x00" + ca).hexdigest()[:16]
    return base / "custos" / "audit" / f"{re.sub(r'[^A-Za-z0-9.-]', '_', config.addr)[:64]}-{ident}.json"


def state_file_for(client: Client, given: str | Path | None = None) -> tuple[Path, bool]:
    """(path of the trusted state, whether it is the default one). Raises InvalidInput."""
    chosen = given or os.environ.get("CUSTOS_AUDIT_STATE")
    return (Path(chosen), False) if chosen else (default_state_file(client.config), True)


def load_state(path: Path) -> TrustedState | None:
    """The trusted state in ``path``, or None if there is none yet. Raises InvalidInput if it cannot be
    read or is not a trusted state: never a silent return to trust on first use."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInput(f"cannot read the trusted audit state {path}: {exc.strerror}") from None
    try:
        return TrustedState.decode(data)
    except InvalidInput as exc:
        raise InvalidInput(f"trusted audit state {path}: {exc} (move it away to start over)") from None


def save_state(path: Path, state: TrustedState) -> None:
    """Write ``state`` to ``path`` (0600, atomically). Raises InvalidInput if it cannot be written."""
    try:
        write_private(path, state.encode())
    except OSError as exc:
        raise InvalidInput(f"cannot write the trusted audit state {path}: {exc.strerror}") from None


@contextlib.contextmanager
def locked_state(path: Path, *, make_dir: bool = False) -> Iterator[None]:
    """Hold an exclusive lock beside ``path`` (``make_dir``: create its private directory first), so
    that two verifiers never interleave: one that saw less must not overwrite a newer state. Raises
    InvalidInput if the lock cannot be taken."""
    try:
        if make_dir:
            private_dir(path.parent)
        fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except (OSError, CustosError) as exc:
        raise InvalidInput(f"cannot lock the trusted audit state {path}: "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- verification ------------------------------------------------------------


@dataclass
class AuditVerification:
    """The outcome of verifying the log (truthy only when it all checked out), with what to warn
    about and what was trusted before (``previous`` None: first use)."""

    result: LogVerification
    events: list[audit_pb2.AuditEvent]
    warnings: list[str] = field(default_factory=list)
    events_after_last_checkpoint: int = 0
    state_file: Path | None = None
    previous: TrustedState | None = None
    saved: bool = False

    def __bool__(self) -> bool:
        return bool(self.result)


def _served_key(cps: audit_pb2.GetCheckpointsResponse, warnings: list[str]) -> Ed25519PublicKey | None:
    if len(cps.public_key) != 32:
        if cps.public_key:
            warnings.append("the server presents a malformed audit key")
        return None
    return Ed25519PublicKey.from_public_bytes(cps.public_key)


def _verify(events: list[audit_pb2.AuditEvent], cps: audit_pb2.GetCheckpointsResponse, *,
            key: Ed25519PublicKey | None, state: TrustedState | None, policy: CheckpointPolicy,
            now_ns: int) -> AuditVerification:
    warnings: list[str] = []
    served = _served_key(cps, warnings)
    if key is None and state is not None:
        try:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(state.key))
        except ValueError:
            raise InvalidInput("the trusted audit state pins a key that is not an Ed25519 key") from None
    if key is None:
        key = served
        warnings.append("audit key not pinned (set CUSTOS_AUDIT_PUBKEY): trusting the key the server "
                        "presents")
    elif served is not None and raw_key(key) != raw_key(served):
        warnings.append("the server presents a different audit key than the trusted one")
    result = verify_log([e.stored for e in events], [(cp.body, cp.signature) for cp in cps.checkpoints], key,
                        policy=policy, now_ns=now_ns, trusted=state)
    return AuditVerification(result=result, events=events, warnings=warnings, previous=state,
                             events_after_last_checkpoint=result.events_after_last_checkpoint)


def verify_audit(client: Client, *, state_file: str | Path | None = None, key: Ed25519PublicKey | None = None,
                 policy: CheckpointPolicy = DEFAULT_POLICY, now_ns: int | None = None,
                 update: bool = True) -> AuditVerification:
    """Fetch every checkpoint and event; verify the hash chain, the checkpoint chain and its gaps,
    the signatures against the trusted key, and that the log extends the trusted state. When it all
    holds and ``update``, the state advances to what was verified. Raises InvalidInput for an
    unreadable key or state file, or a state file that cannot be written."""
    path, default = state_file_for(client, state_file)
    if not update:
        return _verify_against(client, path, key, policy, now_ns)
    with locked_state(path, make_dir=default):
        v = _verify_against(client, path, key, policy, now_ns)
        if v and v.result.trusted_next is not None:
            save_state(path, v.result.trusted_next)
            v.saved = True
    return v


def _verify_against(client: Client, path: Path, key: Ed25519PublicKey | None, policy: CheckpointPolicy,
                    now_ns: int | None) -> AuditVerification:
    state = load_state(path)
    key = key or pinned_key()
    cps = get_checkpoints(client)  # first: a checkpoint signed after the events were read would look like a truncation
    v = _verify(all_events(client), cps, key=key, state=state, policy=policy,
                now_ns=now_ns if now_ns is not None else time.time_ns())
    v.state_file = path
    return v


def verified_events(client: Client) -> list[audit_pb2.AuditEvent]:
    """Every event, after verifying the log as ``verify_audit`` does against the trusted state (read,
    not advanced). Raises IntegrityError if the log fails verification, InvalidInput for an unreadable
    pinned key or trusted state."""
    v = verify_audit(client, update=False)
    if not v:
        raise IntegrityError(f"the audit log fails verification at event {v.result.first_bad_seq}: "
                             f"{'; '.join(v.result.problems)[:300]} — refusing to build a report from it")
    return v.events
