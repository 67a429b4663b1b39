"""Who can reach a model's weights now (``custos access who``), and how many per model
(the ``custos_access_holders`` gauge, the ``access-holders-over-cap`` rule).

A holder is anyone or anything that can obtain plaintext of the model's weights now:

- ``grant``: an active access grant naming the model (its principal, or each of its hosts);
- ``workload``: a supervised run on a host that has the model's files loaded;
- ``plaintext-copy``: a host holding a plaintext copy (or a process that has it loaded)
  that is not known to be gone: present, partial, residual after a halt, or stale (the
  host went out of contact with it);
- ``vault-policy``: a Vault / OpenBao ACL policy that allows decrypt, plaintext data keys
  or export on the model's Transit key (the control plane's own policy is one: it is a
  holder). Read from Vault; what cannot be read is a problem line, not an error.

The count is of distinct principals, hosts and policies. ``AccessWho.refresh`` (run by
the replica that leads the rules) writes each model's count to the Store, so every
replica's ``/metrics`` exports the same numbers and the rules engine raises its alert
from them:

    meta/access-holders/{model}   {"at_ns", "count", "digest", "names", "problems"}
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from custos.controlplane.access import AccessService
from custos.controlplane.keys.base import KeyProvider
from custos.controlplane.periodic import pause, safe, spaced
from custos.controlplane.registry import Registry
from custos.controlplane.rules.engine import HOLDERS_PREFIX
from custos.controlplane.store.base import MAX_TXN_OPS, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.errors import CustosError
from custos.v1 import access_pb2

log = logging.getLogger("custos.access")

PLAINTEXT_FORMS = ("plaintext", "loaded")
# A copy in one of these states may still be read: only gone, wiped, stopped (and the
# other final states of a shutdown) are known not to be.
LIVE_COPY_STATES = ("present", "partial", "residual", "stale")
MAX_NAMES = 20  # holder names kept in the Store record, for the alert's text
DUTY = 0.05  # at most this share of the time in refreshes (one reads every copy record)


@dataclass(frozen=True, slots=True)
class Holder:
    """One way to the plaintext: ``kind`` grant | workload | plaintext-copy | vault-policy."""

    kind: str
    principal: str = ""
    host: str = ""
    detail: str = ""
    grant_id: str = ""
    until_ns: int = 0
    policy: str = ""

    @property
    def identity(self) -> str:
        """Who it is, for counting: ``principal:P``, ``host:H`` or ``vault-policy:NAME``."""
        if self.policy:
            return f"vault-policy:{self.policy}"
        return f"principal:{self.principal}" if self.principal else f"host:{self.host}"

    def to_pb(self) -> access_pb2.AccessHolder:
        return access_pb2.AccessHolder(kind=self.kind, principal=self.principal, host=self.host,
                                       detail=self.detail, grant_id=self.grant_id, until_unix_ns=self.until_ns)


@dataclass(frozen=True)
class Holders:
    """Every holder of one model's weights now, and what could not be looked at."""

    model: str
    holders: tuple[Holder, ...]
    problems: tuple[str, ...] = ()

    @property
    def identities(self) -> list[str]:
        return sorted({h.identity for h in self.holders})

    @property
    def count(self) -> int:
        return len(self.identities)

    @property
    def digest(self) -> str:
        """Names this set of holders (an alert is raised once per set over the cap)."""
        return hashlib.sha256("\x00".join(self.identities).encode()).hexdigest()[:24]

    def to_pb(self, cap: int = 0) -> access_pb2.WhoResponse:
        return access_pb2.WhoResponse(model=self.model, holders=[h.to_pb() for h in self.holders],
                                      principals=self.count, cap=cap, problems=list(self.problems))


def grant_holders(grants: Sequence[dict[str, Any]]) -> list[Holder]:
    """Holders from active grants (``AccessService.view`` dicts): the principal, or each host."""
    out = []
    for g in grants:
        what = (f"{len(g['artifacts'])} artifact(s), requested by {g['requester']}: {g['reason']}"
                + (" (BREAK-GLASS)" if g["break_glass"] else ""))[:300]
        common = {"kind": "grant", "detail": what, "grant_id": g["id"], "until_ns": int(g["not_after_ns"])}
        if g["principal"]:
            out.append(Holder(principal=g["principal"], **common))
        out += [Holder(host=h, **common) for h in g["hosts"]]
    return out


def copy_holders(copies: Sequence[dict[str, Any]]) -> list[Holder]:
    """Holders from copy records: plaintext or loaded, on a host, not known to be gone."""
    out = []
    for c in copies:
        if c["form"] not in PLAINTEXT_FORMS or c["state"] not in LIVE_COPY_STATES or not c["host"]:
            continue
        supervised = bool(c.get("workload_id")) or (c["location_kind"] == "process"
                                                    and "(supervised)" in str(c.get("evidence", "")))
        where = c["location"].split(":", 1)[1] if ":" in c["location"] else c["location"]
        if supervised:
            detail = f"supervised run, pid {where}, artifact {c['artifact_id'][:12]}"
        else:
            detail = f"{c['form']} copy at {where} ({c['state']}), artifact {c['artifact_id'][:12]}"
        out.append(Holder(kind="workload" if supervised else "plaintext-copy", host=c["host"], detail=detail[:300]))
    return out


class AccessWho:
    """Answers ``Who`` for the Access servicer and keeps the per-model counts in the Store."""

    def __init__(self, *, access: AccessService, registry: Registry, keys: KeyProvider, cap: int = 0,
                 interval_s: float = 30.0, clock: Callable[[], int] = time.time_ns) -> None:
        self.access = access
        self.registry = registry
        self.store = registry.store
        self.keys = keys
        self.cap = cap
        self.interval_s = interval_s
        self.clock = clock

    async def holders(self, model: str, *, active: Sequence[dict[str, Any]] | None = None) -> Holders:
        """Every holder of ``model``'s weights now. ``active``: every active grant, when the
        caller has read them already (a pass over all models). Raises InvalidInput, NotFound."""
        m = await self.registry.get_model(model)
        problems: list[str] = []
        grants = (await self.access.list_requests(states=["active"], model=model) if active is None
                  else [g for g in active if model in g["models"]])
        holders = grant_holders(grants)
        # The model's own artifacts: a derivative's copies are the derivative's (ask about it).
        _, _, copies = await self.registry.list_copies(model, include_derivatives=False)
        holders += copy_holders(copies)
        if m["state"] != "active":
            problems.append(f"model {model} is {m['state']}: its Transit key is "
                            f"{'deleted' if m['state'] == 'destroyed' else 'suspended'}, no Vault policy "
                            f"can decrypt with it" + ("" if m["state"] == "destroyed" else " until a lift"))
        else:
            try:
                found = await asyncio.to_thread(self.keys.key_policies, model)
            except CustosError as exc:
                problems.append(f"Vault policies not read: {exc}"[:300])
            else:
                problems += found.problems
                holders += [Holder(kind="vault-policy", policy=r.policy, detail=r.describe()[:300])
                            for r in found.reach]
        order = {"grant": 0, "workload": 1, "plaintext-copy": 2, "vault-policy": 3}
        holders.sort(key=lambda h: (order.get(h.kind, 9), h.identity, h.detail))
        return Holders(model, tuple(holders), tuple(problems))

    async def who(self, model: str) -> access_pb2.WhoResponse:
        """The ``Who`` RPC's answer. Raises InvalidInput, NotFound."""
        return (await self.holders(model)).to_pb(self.cap)

    async def refresh(self) -> dict[str, int]:
        """Count every model's holders and write the counts that changed; drop those of models
        no longer registered. Returns model -> count."""
        now = self.clock()
        old = {e.key[len(HOLDERS_PREFIX):]: e for e in await self.store.range(HOLDERS_PREFIX)}
        counts: dict[str, int] = {}
        puts: dict[str, bytes] = {}
        active = await self.access.list_requests(states=["active"])
        for m in await self.registry.list_models():
            name = m["name"]
            h = await self.holders(name, active=active)
            counts[name] = h.count
            rec = {"at_ns": now, "count": h.count, "digest": h.digest, "names": h.identities[:MAX_NAMES],
                   "problems": list(h.problems)[:5]}
            prev = old.get(name)
            if prev is not None:
                p = decode_canonical(prev.value)
                if (p["count"], p["digest"], p["problems"]) == (rec["count"], rec["digest"], rec["problems"]):
                    continue  # unchanged: keep the write (and the revision) for when it changes
            puts[f"{HOLDERS_PREFIX}{name}"] = encode_canonical(rec)
        deletes = [e.key for name, e in old.items() if name not in counts]
        await self.store.put_many(puts)
        step = MAX_TXN_OPS - 10
        for i in range(0, len(deletes), step):
            await self.store.commit(Txn(deletes=deletes[i:i + step]))
        return counts

    async def run(self, stop: asyncio.Event, is_leader: Callable[[], bool] = lambda: True) -> None:
        """Refresh the counts every ``interval_s`` while this replica leads the rules, less often
        when a refresh (which reads every copy record) would take more than ``DUTY`` of the time."""
        while not stop.is_set():
            took = 0.0
            if is_leader():
                started = time.monotonic()
                await safe(self.refresh(), "access holders refresh")
                took = time.monotonic() - started
            await pause(spaced(self.interval_s, took, DUTY), stop)


async def stored_counts(store: Any) -> dict[str, dict[str, Any]]:
    """model -> the record ``refresh`` wrote (count, digest, names, problems, at_ns)."""
    return {e.key[len(HOLDERS_PREFIX):]: dict(decode_canonical(e.value)) for e in await store.range(HOLDERS_PREFIX)}
