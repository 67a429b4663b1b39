"""Canaries: decoy weight files agents plant on their hosts; any open of one is an incident.

``custos canary plant --host H --path P [--model M]`` records a canary (state
``pending``) and sends ``PlantCanary`` down the host's custody stream — at once if
the host's stream is here and leased, else when it next connects with a lease
(every replica follows ``canaries/`` through the Store's watch and sends pending
canaries to its own hosts). The agent writes the decoys (custos.agent.canary) and
answers ``CanaryPlanted`` with each file's path, size and SHA-256: the canary is
then ``planted`` (or ``failed``, with the agent's reason). Canaries an agent plants
from its own config arrive the same way, with the id ``config_canary_id(host, dir)``.

Custody ingestion skips the files at a canary's paths whose SHA-256 is the
canary's (:meth:`CanaryService.screen`): they are never copies nor unregistered
weights. A file there with other bytes is reported as any file and raises a
``canary-opened`` alert (its bytes changed: someone wrote to it). Decoy bytes never
hide registered weights: a canary whose reported SHA-256 is a registered file's is
refused, and ingestion never skips a registered hash.

An open of a canary reaches the control plane as ``AccessEvent(kind="canary")``
(custody raises ``canary-opened``); :meth:`CanaryService.run` watches ``alerts/`` and
kicks the incident correlation at once for such alerts, so one becomes a high
incident within seconds whatever ``[rules] interval_s`` is.

Store keys:
    canaries/{id}               the canary record
    hostcanaries/{host}/{id}    index by host
Plant and remove are audited (``PlantCanary``, ``RemoveCanary`` by the caller), and
so is every change an agent reports (``CanaryPlanted`` by the host). Specified in
docs/agent.md ("Canaries") and docs/api.md.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from custos.controlplane.audit import Caller, Plan, current_caller
from custos.controlplane.custody import Custody
from custos.controlplane.registry import Registry
from custos.controlplane.store.base import Txn
from custos.core.canaries import (
    MAX_FILES,
    check_canary_dir,
    check_canary_id,
    check_decoy_name,
    config_canary_id,
)
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.hosts import validate_host_name
from custos.core.rules import RULES, Finding
from custos.errors import Conflict, CustosError, FailedPrecondition, InvalidInput, NotFound, Unauthorized
from custos.v1 import canaries_pb2, canaries_pb2_grpc, custody_pb2

log = logging.getLogger("custos.canaries")

MAX_PER_HOST = 100
MAX_DECOY_SIZE = 1 << 46
# Alerts that must become incidents at once, not at the next rules round.
PROMPT_RULES = frozenset({"canary-opened"})
STATES = ("pending", "planted", "failed", "removed")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _key(cid: str) -> str:
    return f"canaries/{cid}"


def _check_model_name(model: str) -> str:
    if not isinstance(model, str) or len(model) > 128 or any(ord(c) < 0x20 for c in model):
        raise InvalidInput("canary model: at most 128 printable characters")
    return model


def _files_of(msg: custody_pb2.CanaryPlanted, d: str) -> list[dict[str, Any]]:
    """The decoy files an agent reported, checked: directly in ``d``, sizes and hashes well formed."""
    if not 1 <= len(msg.files) <= MAX_FILES:
        raise InvalidInput(f"a canary has 1 to {MAX_FILES} files, got {len(msg.files)}")
    out, seen = [], set()
    for f in msg.files:
        head, _, name = f.path.rpartition("/")
        if head != d:
            raise InvalidInput(f"decoy {f.path[:200]!r} is not in the canary's directory {d}")
        check_decoy_name(name)
        if not _SHA256.fullmatch(f.sha256) or not 0 < f.size <= MAX_DECOY_SIZE or f.path in seen:
            raise InvalidInput(f"decoy {f.path[:200]!r}: bad size or SHA-256, or listed twice")
        seen.add(f.path)
        out.append({"path": f.path, "sha256": f.sha256, "size": int(f.size)})
    return sorted(out, key=lambda f: f["path"])


class CanaryService:
    """Canary records, their delivery to agents, and the decoys custody ingestion must skip.

    Hooks into ``custody``: ``on_leased`` (a stream got its lease: send it the host's pending
    canaries), ``on_canary`` (an agent's ``CanaryPlanted``), ``screen_decoys`` (ingestion).
    """

    def __init__(self, registry: Registry, custody: Custody) -> None:
        self.registry = registry
        self.custody = custody
        self.store = registry.store
        self.audit = registry.audit
        # host -> decoy path -> (sha256, canary id, model), from every record ever planted (removed too:
        # a decoy stays a decoy while its bytes are the planted ones). Loaded by load(), kept by the watch.
        self._decoys: dict[str, dict[str, tuple[str, str, str]]] = {}
        self._leased: dict[str, tuple[Any, set[str]]] = {}  # host -> (its leased stream's queue, canaries sent)
        self._tasks: set[asyncio.Task[Any]] = set()
        custody.on_leased = self.on_leased
        custody.on_canary = self.on_planted
        custody.screen_decoys = self.screen

    # -- records ------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read every canary (at start; the watch keeps the view current)."""
        for e in await self.store.range("canaries/"):
            self._learn(decode_canonical(e.value))

    def _learn(self, rec: Mapping[str, Any]) -> None:
        decoys = self._decoys.setdefault(rec["host"], {})
        for path in [p for p, v in decoys.items() if v[1] == rec["id"]]:
            del decoys[path]
        for f in rec.get("files", []):
            decoys[f["path"]] = (f["sha256"], rec["id"], rec.get("model", ""))

    async def get(self, ref: str) -> dict[str, Any]:
        """A canary by id or unique prefix (6+ hex digits). Raises InvalidInput, NotFound."""
        entry = await self.store.find_by_id("canary", "canaries/", ref, min_hex=6, max_hex=16)
        return dict(decode_canonical(entry.value))

    async def _of_host(self, host: str) -> list[dict[str, Any]]:
        prefix = f"hostcanaries/{host}/"
        keys = [_key(e.key[len(prefix):]) for e in await self.store.range(prefix)]
        return [dict(decode_canonical(e.value)) for e in (await self.store.get_many(keys)).values()]

    async def list_canaries(self, *, host: str = "") -> list[dict[str, Any]]:
        """Every canary (of one host), oldest first. Raises InvalidInput for a bad host name."""
        if host:
            validate_host_name(host)
            recs = await self._of_host(host)
        else:
            recs = [dict(decode_canonical(e.value)) for e in await self.store.range("canaries/")]
        return sorted(recs, key=lambda r: (r["created_at_ns"], r["id"]))

    async def plant(self, caller: Caller, *, host: str, path: str, model: str) -> tuple[dict[str, Any], bool]:
        """Record a canary (pending) and send it to the host if its stream is here. Returns the
        record and whether it was sent now. Raises InvalidInput, NotFound (host, model),
        FailedPrecondition (a removed host, too many canaries), Conflict (one is at that path)."""
        cid = secrets.token_hex(8)

        async def plan() -> tuple[Plan, dict[str, Any]]:
            validate_host_name(host)
            check_canary_dir(path)
            _check_model_name(model)
            entry = await self.store.get(f"hosts/{host}")
            if entry is None:
                raise NotFound(f"host {host!r} not found")
            state = decode_canonical(entry.value)["state"]
            if state not in ("enrolled", "pending"):
                raise FailedPrecondition(f"host {host!r} is {state}: no canary can be planted there")
            if model:
                await self.registry.get_model(model)
            live = [r for r in await self._of_host(host) if r["state"] != "removed"]
            if any(r["path"] == path for r in live):
                raise Conflict(f"a canary is already at {host}:{path}")
            if len(live) >= MAX_PER_HOST:
                raise FailedPrecondition(f"host {host!r} already has {MAX_PER_HOST} canaries")
            rec = {"created_at_ns": time.time_ns(), "created_by": caller.principal, "error": "", "files": [],
                   "host": host, "id": cid, "model": model, "origin": "control-plane", "path": path,
                   "planted_at_ns": 0, "removed_at_ns": 0, "removed_by": "", "state": "pending"}
            txn = Txn(checks={_key(cid): 0}, puts={_key(cid): encode_canonical(rec),
                                                   f"hostcanaries/{host}/{cid}": b"{}"})
            return Plan(txn, f"ok: {host}:{path}"[:1000]), rec

        rec = await self.audit.mutate(caller, "PlantCanary", f"canary/{cid}", plan)
        self._learn(rec)
        return rec, self._push(rec)

    async def remove(self, caller: Caller, *, ref: str) -> dict[str, Any]:
        """Mark a canary removed (kept for the record; its decoys stay decoys while their bytes
        are the planted ones). The decoy files stay on the host for its operator to delete.
        Raises InvalidInput, NotFound, FailedPrecondition (removed already)."""
        cid = (await self.get(ref))["id"]
        now = time.time_ns()

        async def plan() -> tuple[Plan, dict[str, Any]]:
            entry = await self.store.get(_key(cid))
            if entry is None:
                raise NotFound(f"canary {cid} not found")
            rec = dict(decode_canonical(entry.value))
            if rec["state"] == "removed":
                raise FailedPrecondition(f"canary {cid} was removed already")
            rec.update(state="removed", removed_at_ns=now, removed_by=caller.principal)
            return Plan(Txn(checks={_key(cid): entry.mod_revision}, puts={_key(cid): encode_canonical(rec)})), rec

        rec = await self.audit.mutate(caller, "RemoveCanary", f"canary/{cid}", plan)
        self._learn(rec)
        return rec

    # -- the agent's answer -------------------------------------------------------------------

    async def on_planted(self, host: str, msg: custody_pb2.CanaryPlanted, caller: Caller) -> None:
        """Record what an agent planted (or could not). Never raises: a bad report is logged
        (and, once it reaches the record, audited as refused) and changes nothing."""
        try:
            await self._planted(host, msg, caller)
        except CustosError as exc:
            log.warning("canary report of %s refused: %s", host, exc)

    async def _planted(self, host: str, msg: custody_pb2.CanaryPlanted, caller: Caller) -> None:
        cid = check_canary_id(msg.canary_id)
        d = check_canary_dir(msg.dir)
        error = msg.error.strip()[:300]
        files = [] if error else _files_of(msg, d)
        entry = await self.store.get(_key(cid))
        old = dict(decode_canonical(entry.value)) if entry is not None else None
        if old is not None and old["state"] == "removed":
            return  # its agent still reports it: nothing to change
        if old is not None and (old["host"], old["path"]) == (host, d) and old["error"] == error \
                and old["files"] == files and old["state"] == ("failed" if error else "planted"):
            return  # reported again on a reconnect: no change, no event
        index, _ = await self.custody._manifest_index()  # the registered hashes, as ingestion sees them

        async def plan() -> tuple[Plan, dict[str, Any]]:
            entry = await self.store.get(_key(cid))
            puts: dict[str, bytes] = {}
            if entry is None:
                # Only an agent's own config canary may appear unasked: its id is fixed by host and path.
                if cid != config_canary_id(host, d):
                    raise Unauthorized(f"host {host!r} reported canary {cid}, which was never asked of it")
                if len([r for r in await self._of_host(host) if r["state"] != "removed"]) >= MAX_PER_HOST:
                    raise FailedPrecondition(f"host {host!r} already has {MAX_PER_HOST} canaries")
                rec: dict[str, Any] = {
                    "created_at_ns": time.time_ns(), "created_by": host, "error": "", "files": [], "host": host,
                    "id": cid, "model": "", "origin": "agent-config", "path": d, "planted_at_ns": 0,
                    "removed_at_ns": 0, "removed_by": "", "state": "pending"}
                puts[f"hostcanaries/{host}/{cid}"] = b"{}"
            else:
                rec = dict(decode_canonical(entry.value))
                if rec["host"] != host:
                    raise Unauthorized(f"canary {cid} belongs to host {rec['host']!r}, not {host!r}")
                if rec["path"] != d:
                    raise InvalidInput(f"canary {cid} is at {rec['path']}, reported at {d}")
                if rec["state"] == "removed":
                    raise FailedPrecondition(f"canary {cid} was removed")
            clash = [f["path"] for f in files if index.refs(f["sha256"])]
            if clash:
                # Never let a "decoy" hide registered bytes from copy accounting.
                rec.update(state="failed", files=[], error=f"refused: {clash[0][:200]} holds registered weights")
            elif error:
                rec.update(state="failed", files=[], error=error)
            else:
                rec.update(state="planted", files=files, error="", planted_at_ns=rec["planted_at_ns"] or time.time_ns())
            puts[_key(cid)] = encode_canonical(rec)
            result = f"ok: {rec['state']}, {len(rec['files'])} files" + (f": {rec['error']}" if rec["error"] else "")
            return Plan(Txn(checks={_key(cid): entry.mod_revision if entry else 0}, puts=puts), result[:1000]), rec

        rec = await self.audit.mutate(caller, "CanaryPlanted", f"canary/{cid}", plan)
        self._learn(rec)
        log.warning("canary %s on %s: %s", cid, host, rec["state"],
                    extra={"fields": {"canary": cid, "host": host, "path": d, "state": rec["state"],
                                      "files": len(rec["files"]), "error": rec["error"]}})

    # -- custody ingestion --------------------------------------------------------------------

    def screen(self, host: str, files: dict[str, dict[str, Any]], index: Any) -> list[dict[str, Any]]:
        """Drop from an inventory (path -> {form, sha256, size}) the decoys of this host's canaries
        whose bytes are still those planted; return an alert for each decoy whose bytes changed.
        Registered hashes are never dropped."""
        decoys = self._decoys.get(host)
        if not decoys:
            return []
        alerts = []
        for path, (sha, cid, model) in decoys.items():
            f = files.get(path)
            if f is None:
                continue
            if f["sha256"] == sha and not index.refs(sha):
                del files[path]
                continue
            finding = Finding(rule="canary-opened", key=(host, cid, path, f["sha256"]), at_ns=time.time_ns(),
                              host=host, model=model,
                              detail=f"canary {cid}: decoy {path} changed: sha256 {f['sha256'][:16]}, "
                                     f"planted {sha[:16]} (someone wrote to it)")
            alerts.append(finding.alert(RULES["canary-opened"].severity))
        return alerts

    # -- delivery -----------------------------------------------------------------------------

    def _message(self, rec: Mapping[str, Any]) -> custody_pb2.ControlMessage:
        return custody_pb2.ControlMessage(plant_canary=custody_pb2.PlantCanary(
            canary_id=rec["id"], path=rec["path"], model=rec["model"]))

    def _push(self, rec: Mapping[str, Any]) -> bool:
        """Send a pending canary to its host's leased stream here, once per stream."""
        if rec["state"] != "pending":
            return False
        held = self._leased.get(rec["host"])
        if held is None or self.custody.streams.get(rec["host"]) is not held[0]:
            return False
        q, sent = held
        if rec["id"] in sent:
            return True
        sent.add(rec["id"])
        q.put_nowait(self._message(rec))
        return True

    def on_leased(self, host: str, q: Any) -> None:
        """A stream of ``host`` here got its lease: from now on it may carry canaries (never
        before: a stream's first message must be its lease or the orders it missed)."""
        self._leased[host] = (q, set())
        self._spawn(self._catch_up(host))

    async def _catch_up(self, host: str) -> None:
        try:
            for rec in await self._of_host(host):
                self._push(rec)
        except CustosError as exc:
            log.warning("pending canaries of %s not sent (next connection): %s", host, exc)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def run(self, stop: asyncio.Event, *, kick: Callable[[], None] | None = None) -> None:
        """Follow ``canaries/`` (records planted or changed on any replica: the decoy view, and
        delivery to hosts connected here) and, with ``kick``, ``alerts/`` (an alert of a
        PROMPT_RULES rule runs the incident correlation now)."""
        loops = [self._follow("canaries/", self._on_record, stop)]
        if kick is not None:
            loops.append(self._follow("alerts/", lambda rec: self._on_alert(rec, kick), stop))
        await asyncio.gather(*loops)

    async def _follow(self, prefix: str, handle: Callable[[dict[str, Any]], None], stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async for key in self.store.watch(prefix):
                    entry = await self.store.get(key)
                    if entry is not None:
                        handle(dict(decode_canonical(entry.value)))
            except CustosError as exc:
                log.warning("watch of %s failed, retrying: %s", prefix, exc)
                await asyncio.sleep(1.0)
                if prefix == "canaries/":
                    await self._reload()

    async def _reload(self) -> None:
        try:
            self._decoys = {}
            await self.load()
            for host in list(self._leased):
                await self._catch_up(host)
        except CustosError as exc:
            log.warning("canary reload failed, the watch will retry: %s", exc)

    def _on_record(self, rec: dict[str, Any]) -> None:
        self._learn(rec)
        self._push(rec)

    @staticmethod
    def _on_alert(rec: Mapping[str, Any], kick: Callable[[], None]) -> None:
        if rec.get("rule") in PROMPT_RULES and rec.get("state") == "open":
            kick()


# -- the servicer ---------------------------------------------------------------------------------


def canary_pb(r: Mapping[str, Any]) -> canaries_pb2.Canary:
    return canaries_pb2.Canary(
        id=r["id"], host=r["host"], path=r["path"], model=r["model"], state=r["state"], origin=r["origin"],
        files=[custody_pb2.CanaryFile(path=f["path"], size=f["size"], sha256=f["sha256"]) for f in r["files"]],
        error=r["error"], created_at_unix_ns=r["created_at_ns"], created_by=r["created_by"],
        planted_at_unix_ns=r["planted_at_ns"], removed_at_unix_ns=r["removed_at_ns"], removed_by=r["removed_by"])


class CanariesServicer(canaries_pb2_grpc.CanariesServicer):
    def __init__(self, service: CanaryService) -> None:
        self.s = service

    async def Plant(self, req: canaries_pb2.PlantCanaryRequest,
                    ctx: grpc.aio.ServicerContext) -> canaries_pb2.PlantCanaryResponse:
        rec, delivered = await self.s.plant(current_caller.get(), host=req.host, path=req.path, model=req.model)
        return canaries_pb2.PlantCanaryResponse(canary=canary_pb(rec), delivered=delivered)

    async def List(self, req: canaries_pb2.ListCanariesRequest,
                   ctx: grpc.aio.ServicerContext) -> canaries_pb2.ListCanariesResponse:
        rows = await self.s.list_canaries(host=req.host)
        return canaries_pb2.ListCanariesResponse(canaries=[canary_pb(r) for r in rows])

    async def Remove(self, req: canaries_pb2.RemoveCanaryRequest,
                     ctx: grpc.aio.ServicerContext) -> canaries_pb2.RemoveCanaryResponse:
        return canaries_pb2.RemoveCanaryResponse(canary=canary_pb(await self.s.remove(current_caller.get(),
                                                                                     ref=req.id)))
