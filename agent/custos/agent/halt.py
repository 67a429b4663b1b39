"""Local halts: stop what holds plaintext of a scope, wipe what the agent manages, refuse new runs.

:meth:`Halter.halt_local` is the one path every halt on this host takes — an
order's halt (after the order handler verified it), a drill's dry run, the
fail-closed halt when the custody lease lapses, the halt when the control plane
removes this host, and the agent's own shutdown:

1. refuse new pulls and runs of the scope from this moment on;
2. zeroize the data keys of pulls in flight;
3. find the processes: every supervised workload of the scope (its whole
   process tree) and every process holding plaintext of the scope open or
   memory-mapped — the agent's own copies and, where it knows the artifact's
   manifest, any other copy its inventory found;
4. SIGTERM, grace, SIGKILL, confirm each one gone (custos.agent.processes);
5. wipe the plaintext directories the agent manages (overwrite, then unlink);
6. return evidence: pids stopped, paths wiped, and what remains and why
   (copies the agent does not manage are reported, never deleted).

A dry run stops and wipes nothing and refuses nothing; it says what it would do.
:meth:`Halter.lift_local` ends a refusal. Explicit scopes survive an agent
restart (STATE_DIR/halts.json); the "everything" refusal of fail-closed does not
need to, because a restarted agent has no lease until it reconnects.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from custos.agent.blocks import HaltBlocks, ManifestCache
from custos.agent.processes import inspect_holders, stop_processes
from custos.agent.scanner import FileRecord
from custos.agent.workloads import Supervisor
from custos.core.manifest import is_artifact_id
from custos.errors import InvalidInput
from custos.v1 import custody_pb2

log = logging.getLogger("custos.agent.halt")


# -- evidence ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HaltEvidence:
    """What one local halt did (or, dry run, would do)."""

    scope: tuple[str, ...] | None
    reason: str
    dry_run: bool
    pids_stopped: tuple[int, ...] = ()
    paths_wiped: tuple[str, ...] = ()
    remaining: tuple[str, ...] = ()
    would_stop: tuple[str, ...] = ()
    workloads_stopped: tuple[str, ...] = ()
    started_unix_ns: int = 0
    done_unix_ns: int = 0

    @property
    def complete(self) -> bool:
        """True when nothing remains (every process gone, every managed copy wiped)."""
        return not self.remaining

    def to_ack(self, *, order_id: str, verified: bool, outcome: str, received_unix_ns: int) -> custody_pb2.OrderAck:
        """The OrderAck carrying this evidence."""
        return custody_pb2.OrderAck(
            order_id=order_id, verified=verified, outcome=outcome, reason=self.reason,
            pids_stopped=list(self.pids_stopped), paths_wiped=list(self.paths_wiped),
            remaining=list(self.remaining), would_stop=list(self.would_stop),
            received_unix_ns=received_unix_ns, done_unix_ns=self.done_unix_ns)

    def as_dict(self) -> dict[str, Any]:
        return {"scope": list(self.scope) if self.scope is not None else None, "reason": self.reason,
                "dry_run": self.dry_run, "pids_stopped": list(self.pids_stopped),
                "paths_wiped": list(self.paths_wiped), "remaining": list(self.remaining),
                "would_stop": list(self.would_stop), "workloads_stopped": list(self.workloads_stopped),
                "started_unix_ns": self.started_unix_ns, "done_unix_ns": self.done_unix_ns}


def _check_scope(scope: Iterable[str] | None) -> frozenset[str] | None:
    if scope is None:
        return None
    if isinstance(scope, str):
        raise InvalidInput("halt scope must be a collection of artifact ids (or None for all), not one string")
    out = frozenset(scope)
    bad = [a for a in out if not isinstance(a, str) or not is_artifact_id(a)]
    if bad:
        raise InvalidInput(f"halt scope: bad artifact id {str(bad[0])[:80]!r}")
    if not out:
        raise InvalidInput("halt scope is empty: name artifacts, or None for everything")
    return out


def _describe_pid(pid: int) -> str:
    try:
        p = psutil.Process(pid)
        cmd = " ".join(p.cmdline())[:120]
        return f"{p.username()}: {cmd}"
    except Exception:  # noqa: BLE001 - description only
        return "?"


@dataclass(slots=True)
class _Plan:
    pids: dict[int, str] = field(default_factory=dict)  # pid -> why
    wipe: dict[str, str] = field(default_factory=dict)  # run dir -> workload id
    workloads: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)


class Halter:
    """Executes local halts. Thread-safe; :meth:`halt_local` blocks (run it off the event loop).

    ``records`` returns the inventory's current file records (for copies the
    agent does not manage). ``deny_opens(scope, drill)`` (the guard's deny-all) runs as
    soon as the scope is refused, before any process is signalled; ``allow_opens(scope)``
    when it is lifted. Neither may raise.
    """

    def __init__(self, *, supervisor: Supervisor, blocks: HaltBlocks, manifests: ManifestCache,
                 records: Callable[[], list[FileRecord]], grace_s: float = 10.0,
                 kill_wait_s: float = 5.0,
                 deny_opens: Callable[[frozenset[str] | None, bool], None] | None = None,
                 allow_opens: Callable[[frozenset[str] | None], None] | None = None) -> None:
        self.supervisor = supervisor
        self.blocks = blocks
        self.manifests = manifests
        self.records = records
        self.grace_s = grace_s
        self.kill_wait_s = kill_wait_s
        self.deny_opens = deny_opens
        self.allow_opens = allow_opens
        self._lock = threading.Lock()

    def halt_local(self, scope: Collection[str] | None, *, reason: str, dry_run: bool = False,
                   drill: bool = False) -> HaltEvidence:
        """Halt ``scope`` (artifact ids; None = everything this agent covers) on this host.

        A ``drill`` reaches only what is the scope's alone: supervised workloads of other
        artifacts, their files, and any bytes that another artifact the agent knows also
        holds are spared — so a drill artifact registered with production bytes cannot
        stop production by content.

        Raises InvalidInput (bad scope or reason). Never raises for a process
        that will not die or a file that will not go: those are in ``remaining``.
        """
        s = _check_scope(scope)
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 2000:
            raise InvalidInput("a halt needs a reason (1-2000 characters)")
        started = time.time_ns()
        with self._lock:
            if not dry_run:
                self.blocks.block(s, reason)
                if self.deny_opens is not None:
                    self.deny_opens(s, drill)  # kernel-checked opens of the scope refused from here on
                self.supervisor.zeroize_keys(s)
                self.supervisor.mark_stopping(s, reason)
            plan = self._plan(s, drill=drill)
            if dry_run:
                would = [f"stop pid {pid} ({_describe_pid(pid)}): {why}" for pid, why in sorted(plan.pids.items())]
                would += [f"wipe {d} (workload {w})" for d, w in sorted(plan.wipe.items())]
                ev = HaltEvidence(scope=_tuple(s), reason=reason, dry_run=True, would_stop=tuple(would),
                                  remaining=tuple(plan.remaining), started_unix_ns=started,
                                  done_unix_ns=time.time_ns())
                log.info("halt dry run", extra={"fields": {"scope": _scope_text(s), "would_stop": len(would)}})
                return ev
            results = stop_processes(sorted(plan.pids), self.grace_s, kill_wait_s=self.kill_wait_s) \
                if plan.pids else []
            stopped: list[int] = []
            remaining = list(plan.remaining)
            for r in results:
                self.supervisor.note_exit(r.pid, r.exit_code)
                if r.exited:
                    stopped.append(r.pid)
                else:
                    remaining.append(f"pid {r.pid} ({r.name or '?'}): {r.error or r.refused or 'still running'}")
            wiped: list[str] = []
            for run_dir in sorted(plan.wipe):
                files, failures = self.supervisor.wipe_run_dir(Path(run_dir))
                wiped.extend(files)
                remaining.extend(f"not wiped: {f}" for f in failures)
            ev = HaltEvidence(scope=_tuple(s), reason=reason, dry_run=False, pids_stopped=tuple(stopped),
                              paths_wiped=tuple(wiped), remaining=tuple(remaining),
                              workloads_stopped=tuple(plan.workloads), started_unix_ns=started,
                              done_unix_ns=time.time_ns())
        log.warning("local halt done", extra={"fields": {
            "scope": _scope_text(s), "reason": reason, "pids_stopped": list(stopped),
            "workloads_stopped": list(plan.workloads), "files_wiped": len(wiped), "remaining": list(remaining)[:20],
            "elapsed_ms": round((ev.done_unix_ns - started) / 1e6, 1)}})
        return ev

    def lift_local(self, scope: Collection[str] | None) -> None:
        """Stop refusing ``scope`` (None: the refuse-everything state). Stopped workloads are not restarted.

        Raises InvalidInput.
        """
        s = _check_scope(scope)
        self.blocks.unblock(s)
        if self.allow_opens is not None:
            self.allow_opens(s)
        log.info("local halt lifted", extra={"fields": {"scope": _scope_text(s)}})

    def _plan(self, scope: frozenset[str] | None, *, drill: bool = False) -> _Plan:
        plan = _Plan()
        me = os.getpid()
        managed_paths: set[str] = set()
        managed_records: list[FileRecord] = []
        spared_paths: set[str] = set()  # a drill's: files and processes of workloads outside its scope
        spared_pids: set[int] = set()
        for w in self.supervisor.snapshot_for_halt():
            if scope is not None and w.artifact_id not in scope:
                if drill:
                    spared_paths.update(r.path for r in w.records)
                    spared_pids.update(w.pids)
                continue
            plan.workloads.append(w.id)
            for pid in w.pids:
                if pid != me:
                    plan.pids.setdefault(pid, f"supervised workload {w.id}")
            if w.run_dir is not None:
                plan.wipe[str(w.run_dir)] = w.id
            managed_records.extend(w.records)
            managed_paths.update(r.path for r in w.records)
        # Other copies of the scope the inventory found, by the manifests the agent knows.
        ids = sorted(scope) if scope is not None else self.manifests.known()
        digests: dict[str, str] = {}
        for aid in ids:
            m = self.manifests.get(aid)
            if m is None:
                plan.remaining.append(f"artifact {aid[:12]}: manifest unknown to this agent; "
                                      "copies outside its own runs were not looked for")
                continue
            for f in m.files:
                if f.size > 0:
                    digests.setdefault(f.sha256, aid)
        if drill and scope is not None:
            for aid in self.manifests.known():
                m = self.manifests.get(aid) if aid not in scope else None
                for f in m.files if m is not None else ():
                    digests.pop(f.sha256, None)  # bytes another artifact holds too: not the drill's
        others = [r for r in self.records() if r.form == "plaintext" and r.sha256 in digests
                  and r.path not in managed_paths and r.path not in spared_paths]
        by_dir: dict[str, int] = {}
        for r in others:
            d = os.path.dirname(r.path)
            by_dir[d] = by_dir.get(d, 0) + 1
        for d, n in sorted(by_dir.items()):
            plan.remaining.append(f"{d}: {n} plaintext file(s) of the scope, not managed by this agent (not wiped)")
        targets = managed_records + others
        if targets:
            scan = inspect_holders(targets)
            for h in scan.holds:
                if h.pid != me and h.pid not in spared_pids:
                    plan.pids.setdefault(h.pid, f"holds {len(h.paths)} file(s) of the scope ({h.how})")
            for pid, why in scan.inaccessible:
                plan.remaining.append(f"pid {pid}: could not be inspected ({why})")
        return plan


def _tuple(scope: frozenset[str] | None) -> tuple[str, ...] | None:
    return None if scope is None else tuple(sorted(scope))


def _scope_text(scope: frozenset[str] | None) -> str:
    return "all" if scope is None else ",".join(sorted(a[:12] for a in scope))


def iso_utc(unix_s: float) -> str:
    """A wall-clock time for log lines and reasons: 2025-01-31T12:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


