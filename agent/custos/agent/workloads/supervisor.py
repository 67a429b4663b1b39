"""Supervised workloads: `custos run` on a verified, decrypted artifact, then nothing left behind.

For each run the agent, as this host (its own certificate, a live lease):

1. resolves the artifact (an explicit id, or the model's newest stored one);
2. unwraps the data key (Keys.UnwrapDataKey, audited; refused without a live lease);
3. pulls with :func:`custos.client.pull.pull_artifact` — every file verified against the
   manifest — into a private directory (:mod:`.rundirs`): ``/dev/shm/custos-agent-HOST/RUN/artifact``
   when /dev/shm exists and has room, else ``STATE_DIR/runs/RUN/artifact``; the
   key is zeroized as soon as the pull ends;
4. records the copy (Registry.RecordCopy, form plaintext) and lists the
   directory in ``Inventory.managed_roots``;
5. starts the command as the requesting user, in its own session, with
   ``CUSTOS_ARTIFACT_DIR`` set, and tracks its whole process tree (descendants,
   its session, and — the agent being a child subreaper — orphans it leaves) (:mod:`.process`);
6. when the command exits: stops what is left of its tree, wipes the directory
   (overwrite, then unlink) and reports the exit code.

Runs are refused while the lease is not live and for halted artifacts; a halt
(custos.agent.halt) stops running ones.

A run whose unwrap needed an access grant (the response names it, its ``not_after``
and the policy's ``on_expiry``) follows that grant while it runs (:meth:`Supervisor._follow_grant`):
every ``grant_check_interval`` seconds, and just after ``not_after``, it asks the control
plane (Access.Get). An extended grant (still active, a later ``not_after``) keeps it going;
a grant no longer active — revoked (by hand, or by a halt or destroy order of its model),
expired — stops it when ``on_expiry`` is ``stop`` (the default for covered models), with
the reason "access grant ID16 STATE", by the same path as any stop (its tree stopped,
its plaintext wiped, the copy's end reported). If the control plane cannot be asked at
``not_after``, the run stops too (fail closed). With ``on_expiry`` ``run`` it keeps running
(no new unwrap succeeds without a grant).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from custos.agent.blocks import HaltBlocks, ManifestCache
from custos.agent.processes import stop_processes
from custos.agent.scanner import FileRecord
from custos.agent.workloads.process import Launch, alive, exited, members, reap, reap_adopted, sessions, watch_exit
from custos.agent.workloads.request import RunRequest
from custos.agent.workloads.rundirs import PlaintextDirs, chown_tree, file_records
from custos.blobs.base import BlobStore
from custos.client.pull import manifest_of, pull_artifact
from custos.core.keymaterial import zeroize
from custos.errors import CustosError, FailedPrecondition, InvalidInput, NotFound
from custos.v1 import access_pb2, keys_pb2, registry_pb2

log = logging.getLogger("custos.agent.workloads")

KEEP_FINISHED = 200
PULL_WORKERS = 4
GRANT_CHECK_INTERVAL = 10.0
GRANT_CHECK_TIMEOUT = 10.0  # one Access.Get: at not_after, an unreachable control plane stops the run
GRANT_EXPIRY_SLACK_NS = 50_000_000  # ask just after not_after, so the control plane sees it ended


class ControlPlaneCalls(Protocol):
    """The unary calls a run makes as this host (implemented over the custody stream's channel)."""
    async def unwrap(self, artifact: str, purpose: str) -> keys_pb2.UnwrapDataKeyResponse: ...
    async def record_copy(self, artifact_id: str, path: str, form: int) -> None: ...
    async def newest_artifact(self, model: str) -> str: ...
    async def get_grant(self, grant_id: str) -> access_pb2.AccessGrant: ...


@dataclass(eq=False)
class Workload:
    """One supervised run. Mutable; guarded by the supervisor's lock."""

    id: str
    model: str
    artifact_id: str
    argv: tuple[str, ...]
    uid: int
    detach: bool
    state: str = "pulling"  # pulling | running | exited | stopped | failed
    pid: int = 0
    create_time: float = 0.0
    run_dir: Path | None = None
    artifact_dir: Path | None = None
    records: list[FileRecord] = field(default_factory=list)
    members: dict[int, float] = field(default_factory=dict)  # pid -> create time
    exit_code: int | None = None
    stop_reason: str | None = None
    error: str | None = None
    started_unix_ns: int = field(default_factory=time.time_ns)
    ended_unix_ns: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    proc: subprocess.Popen[bytes] | None = None
    grant_id: str = ""  # the access grant its unwrap used ("" if none was needed)
    grant_not_after_unix_ns: int = 0
    grant_on_expiry: str = ""  # stop | run

    def as_dict(self) -> dict[str, Any]:
        return {"workload_id": self.id, "model": self.model, "artifact_id": self.artifact_id,
                "argv": list(self.argv), "uid": self.uid, "state": self.state, "pid": self.pid,
                "pids": sorted(self.members), "artifact_dir": str(self.artifact_dir or ""),
                "exit_code": self.exit_code, "stopped": self.stop_reason, "error": self.error,
                "started_unix_ns": self.started_unix_ns, "ended_unix_ns": self.ended_unix_ns,
                "grant_id": self.grant_id, "grant_not_after_unix_ns": self.grant_not_after_unix_ns,
                "grant_on_expiry": self.grant_on_expiry}


@dataclass(frozen=True, slots=True)
class WorkloadView:
    """What a halt needs to know about one workload (a snapshot)."""

    id: str
    artifact_id: str
    pids: tuple[int, ...]
    run_dir: Path | None
    records: tuple[FileRecord, ...]


class Supervisor:
    """Starts, tracks and cleans up supervised workloads. Methods named ``*_for_halt``,
    :meth:`zeroize_keys`, :meth:`mark_stopping`, :meth:`note_exit`, :meth:`wipe_run_dir`,
    :meth:`managed_records`, :meth:`managed_roots` and :meth:`refresh_members` are
    thread-safe; :meth:`start` and :meth:`stop` run on the event loop.
    """

    def __init__(self, *, name: str, state_dir: Path, plaintext_dir: Path | None, calls: ControlPlaneCalls,
                 blocks: HaltBlocks, manifests: ManifestCache, refusal: Callable[[], str | None],
                 open_blobs: Callable[[str], BlobStore], stop_grace: float = 10.0,
                 on_change: Callable[[], None] | None = None,
                 grant_check_interval: float = GRANT_CHECK_INTERVAL) -> None:
        self.name = name
        self.state_dir = state_dir
        self.plaintext_dir = plaintext_dir
        self.calls = calls
        self.blocks = blocks
        self.manifests = manifests
        self.refusal = refusal
        self.open_blobs = open_blobs
        self.stop_grace = stop_grace
        self.on_change = on_change or (lambda: None)
        self.grant_check_interval = grant_check_interval
        self.dirs = PlaintextDirs(name=name, state_dir=state_dir, plaintext_dir=plaintext_dir,
                                  remember=4 * KEEP_FINISHED)
        self._lock = threading.RLock()
        self._workloads: dict[str, Workload] = {}
        self._keys: dict[str, tuple[str, bytearray]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._exit_codes: dict[int, int | None] = {}

    # - plaintext locations -

    def bases(self) -> list[Path]:
        """Every directory runs may use (for exclusion from scans and start-up cleanup)."""
        return self.dirs.bases()

    # - queries -

    def get(self, wid: str) -> Workload | None:
        with self._lock:
            return self._workloads.get(wid)

    def list_workloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [w.as_dict() for w in self._workloads.values()]

    def active(self) -> list[Workload]:
        with self._lock:
            return [w for w in self._workloads.values() if w.state in ("pulling", "running")]

    def managed_records(self) -> list[FileRecord]:
        with self._lock:
            return [r for w in self._workloads.values() if w.state == "running" for r in w.records]

    def managed_roots(self) -> list[str]:
        with self._lock:
            return sorted(str(w.artifact_dir) for w in self._workloads.values()
                          if w.state == "running" and w.artifact_dir is not None)

    def supervised(self) -> list[tuple[Workload, tuple[int, ...], tuple[str, ...]]]:
        """(workload, member pids, artifact file paths) of running workloads."""
        with self._lock:
            return [(w, tuple(sorted(w.members)), tuple(r.path for r in w.records))
                    for w in self._workloads.values() if w.state == "running"]

    def workload_of(self) -> dict[int, str]:
        with self._lock:
            return {pid: w.id for w in self._workloads.values() if w.state == "running" for pid in w.members}

    # - for halts (any thread) -

    def zeroize_keys(self, scope: Collection[str] | None) -> None:
        with self._lock:
            for aid, key in self._keys.values():
                if scope is None or aid in scope:
                    zeroize(key)

    def mark_stopping(self, scope: Collection[str] | None, reason: str) -> None:
        with self._lock:
            for w in self._workloads.values():
                if w.state in ("pulling", "running") and (scope is None or w.artifact_id in scope):
                    w.stop_reason = w.stop_reason or reason

    def snapshot_for_halt(self) -> list[WorkloadView]:
        self.refresh_members()
        with self._lock:
            return [WorkloadView(id=w.id, artifact_id=w.artifact_id, pids=tuple(sorted(w.members)),
                                 run_dir=w.run_dir, records=tuple(w.records))
                    for w in self._workloads.values() if w.state in ("pulling", "running")
                    or (w.run_dir is not None and w.run_dir.exists())]

    def note_exit(self, pid: int, code: int | None) -> None:
        with self._lock:
            self._exit_codes[pid] = code

    def wipe_run_dir(self, run_dir: Path) -> tuple[list[str], list[str]]:
        """Wipe one run directory (must lie inside a plaintext base). Returns (wiped, failures);
        idempotent (see :meth:`PlaintextDirs.wipe`)."""
        return self.dirs.wipe(run_dir)

    def refresh_members(self) -> None:
        """Update each running workload's process set: its tree, its session, pids seen before
        that still live. Reaps zombies this agent adopted as a subreaper."""
        with self._lock:
            running = [(w, w.pid, dict(w.members)) for w in self._workloads.values()
                       if w.state == "running" and w.pid]
            roots = {w.pid for w in self._workloads.values() if w.pid}
        by_session = sessions() if running else {}
        for w, root, known in running:
            fresh = members(root, known, by_session)
            with self._lock:
                if w.state == "running":
                    w.members = fresh
        reap_adopted(roots)

    # - starting -

    async def start(self, req: RunRequest, fds: list[int]) -> Workload:
        """Pull the artifact and start the workload. The caller keeps (and closes) ``fds``.

        Raises FailedPrecondition (no live lease, halted, not connected), InvalidInput
        (bad request, wrong model, command not found), Unauthorized, NotFound,
        IntegrityError (tampered ciphertext), BackendUnavailable.
        """
        why = self.refusal()
        if why:
            raise FailedPrecondition(f"refusing to run: {why}")
        if req.artifact and len(req.artifact) == 64:
            blocked = self.blocks.refusal(req.artifact)
            if blocked:
                raise FailedPrecondition(f"refusing to run artifact {req.artifact[:12]}: halted ({blocked})")
        aid = req.artifact or await self.calls.newest_artifact(req.model)
        wid = "w-" + secrets.token_hex(8)
        wl = Workload(id=wid, model=req.model, artifact_id=aid, argv=req.argv, uid=req.uid, detach=req.detach)
        with self._lock:
            self._workloads[wid] = wl
            self._prune()
        try:
            await self._prepare(wl, req)
            self._spawn(wl, req, fds)
        except BaseException as exc:
            await self._fail(wl, exc)
            raise
        self._watch(wl)
        if wl.grant_id:
            self._spawn_task(self._follow_grant(wl))
        self.on_change()
        log.info("workload started", extra={"fields": {
            "workload_id": wid, "model": req.model, "artifact_id": wl.artifact_id, "pid": wl.pid,
            "uid": req.uid, "artifact_dir": str(wl.artifact_dir), "argv0": req.argv[0]}})
        return wl

    async def _prepare(self, wl: Workload, req: RunRequest) -> None:
        resp = await self.calls.unwrap(wl.artifact_id, f"run {wl.id}")
        key = bytearray(resp.data_key)
        with self._lock:
            self._keys[wl.id] = (resp.artifact.id, key)
        try:
            art = resp.artifact
            with self._lock:
                wl.artifact_id = art.id
                wl.grant_id = resp.grant_id
                wl.grant_not_after_unix_ns = resp.grant_not_after_unix_ns
                wl.grant_on_expiry = resp.grant_on_expiry or "stop"
            if art.model != req.model:
                raise InvalidInput(f"artifact {art.id[:12]} belongs to model {art.model!r}, not {req.model!r}")
            blocked = self.blocks.refusal(art.id)
            if blocked:
                raise FailedPrecondition(f"refusing to run artifact {art.id[:12]}: halted ({blocked})")
            manifest = manifest_of(art)
            self.manifests.put(art.id, manifest)  # a halt during the pull knows what to look for
            run_dir = self.dirs.base_for(manifest.total_size) / wl.id
            os.mkdir(run_dir, 0o700)
            with self._lock:
                wl.run_dir = run_dir
                wl.artifact_dir = run_dir / "artifact"
            blobs = self.open_blobs(art.blob_store)
            await asyncio.to_thread(pull_artifact, blobs, data_key=key, artifact=art, dest=run_dir / "artifact",
                                    manifest=manifest, workers=PULL_WORKERS)
        finally:
            zeroize(key)
            with self._lock:
                self._keys.pop(wl.id, None)
        records = file_records(run_dir / "artifact", manifest)
        if req.uid != os.geteuid():
            chown_tree(run_dir, req.uid, req.gid)
        with self._lock:
            wl.records = records
        try:
            await self.calls.record_copy(art.id, str(run_dir / "artifact"), registry_pb2.COPY_FORM_PLAINTEXT)
        except CustosError as exc:
            # The inventory reports the copy too (as managed); the run need not fail.
            log.warning("could not record the run's plaintext copy", extra={"fields": {
                "workload_id": wl.id, "error": str(exc)}})

    def _spawn(self, wl: Workload, req: RunRequest, fds: list[int]) -> None:
        assert wl.artifact_dir is not None
        env = dict(req.env)
        env.update(CUSTOS_ARTIFACT_DIR=str(wl.artifact_dir), CUSTOS_WORKLOAD_ID=wl.id,
                   CUSTOS_ARTIFACT_ID=wl.artifact_id, CUSTOS_MODEL=wl.model)
        launch = Launch(req, env, fds, self.state_dir / "workloads" / f"{wl.id}.log")
        # Checked and started under the lock: a halt either sees the pid or makes this refuse.
        with self._lock:
            try:
                if wl.stop_reason:
                    raise FailedPrecondition(f"refusing to run: {wl.stop_reason}")
                why = self.refusal() or self.blocks.refusal(wl.artifact_id)
                if why:
                    raise FailedPrecondition(f"refusing to run: {why}")
                proc = launch.start()
            finally:
                launch.close()
            wl.proc = proc
            wl.pid = proc.pid
            try:
                wl.create_time = psutil.Process(proc.pid).create_time()
            except psutil.Error:
                wl.create_time = time.time()
            wl.members = {proc.pid: wl.create_time}
            wl.state = "running"

    async def _fail(self, wl: Workload, exc: BaseException) -> None:
        with self._lock:
            wl.state = "failed"
            wl.error = str(exc) if isinstance(exc, CustosError) else type(exc).__name__
            wl.ended_unix_ns = time.time_ns()
            run_dir = wl.run_dir
        if run_dir is not None:
            await asyncio.to_thread(self.wipe_run_dir, run_dir)
        wl.done.set()
        log.warning("workload not started", extra={"fields": {"workload_id": wl.id, "error": wl.error}})

    # - exits -

    def _watch(self, wl: Workload) -> None:
        if not watch_exit(wl.pid, lambda: self._spawn_task(self._finish(wl))):
            self._spawn_task(self._poll_exit(wl))

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _poll_exit(self, wl: Workload) -> None:
        await exited(wl.pid)
        await self._finish(wl)

    def _reap(self, wl: Workload) -> int | None:
        code = reap(wl.pid)
        with self._lock:
            if code is None:
                code = self._exit_codes.pop(wl.pid, None)
            else:
                self._exit_codes.pop(wl.pid, None)
            if wl.proc is not None:
                # Collected here: keep subprocess from polling a pid that may be reused.
                wl.proc.returncode = code if code is not None else -1
        return code

    async def _finish(self, wl: Workload) -> None:
        code = self._reap(wl)
        with self._lock:
            leftovers = [pid for pid, ct in wl.members.items() if pid != wl.pid]
            known = dict(wl.members)
        leftovers = [p for p in leftovers if alive(p, known[p])]
        if leftovers:
            results = await asyncio.to_thread(stop_processes, leftovers, min(self.stop_grace, 5.0))
            log.info("stopped what the workload left running", extra={"fields": {
                "workload_id": wl.id, "pids": [r.pid for r in results if r.exited]}})
        wiped: list[str] = []
        if wl.run_dir is not None:
            wiped, failures = await asyncio.to_thread(self.wipe_run_dir, wl.run_dir)
            if failures:
                log.error("plaintext not fully wiped", extra={"fields": {
                    "workload_id": wl.id, "failures": failures[:20]}})
        with self._lock:
            wl.exit_code = code
            wl.state = "stopped" if wl.stop_reason else "exited"
            wl.ended_unix_ns = time.time_ns()
            wl.members = {}
        self.on_change()
        wl.done.set()
        log.info("workload ended", extra={"fields": {
            "workload_id": wl.id, "exit_code": code, "stopped": wl.stop_reason, "files_wiped": len(wiped)}})

    # - access grants -

    async def _follow_grant(self, wl: Workload) -> None:
        """Follow a running workload's access grant until it ends (see the module docstring)."""
        gid = wl.grant_id
        interval = max(0.05, self.grant_check_interval)
        not_after = wl.grant_not_after_unix_ns
        fields: dict[str, Any] = {"workload_id": wl.id, "grant_id": gid}
        while not wl.done.is_set():
            left_s = (not_after + GRANT_EXPIRY_SLACK_NS - time.time_ns()) / 1e9
            delay = min(interval, left_s) if left_s > 0 else min(interval, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wl.done.wait(), timeout=max(0.05, delay))
                return
            try:
                async with asyncio.timeout(min(GRANT_CHECK_TIMEOUT, max(1.0, interval))):
                    g = await self.calls.get_grant(gid)
            except NotFound:
                state = "not found"
            except (CustosError, TimeoutError) as exc:
                if time.time_ns() < not_after:
                    log.warning("could not check the workload's access grant; will retry",
                                extra={"fields": {**fields, "error": str(exc) or "no answer"}})
                    continue
                await self._grant_ended(wl, f"access grant {gid[:16]} could not be checked at its expiry "
                                            f"(failing closed: {exc or 'no answer'})")
                return
            else:
                state = g.state
                if state == "active":
                    if g.not_after_unix_ns != not_after:
                        log.info("access grant extended", extra={"fields": {
                            **fields, "not_after_unix_ns": g.not_after_unix_ns}})
                        not_after = g.not_after_unix_ns
                        with self._lock:
                            wl.grant_not_after_unix_ns = not_after
                    continue
            await self._grant_ended(wl, f"access grant {gid[:16]} {state}")
            return

    async def _grant_ended(self, wl: Workload, reason: str) -> None:
        fields = {"workload_id": wl.id, "grant_id": wl.grant_id, "reason": reason}
        if wl.grant_on_expiry == "run":
            log.warning("access grant ended; its policy lets the workload run (no new unwrap will succeed)",
                        extra={"fields": fields})
            return
        log.warning("access grant ended: stopping the workload", extra={"fields": fields})
        await self.stop(wl, reason)

    async def stop(self, wl: Workload, reason: str) -> None:
        """Stop one workload (its whole tree) and wait for its clean-up."""
        with self._lock:
            if wl.state not in ("pulling", "running"):
                return
            wl.stop_reason = wl.stop_reason or reason
        self.refresh_members()
        with self._lock:
            pids = sorted(wl.members)
        if pids:
            results = await asyncio.to_thread(stop_processes, pids, self.stop_grace)
            for r in results:
                self.note_exit(r.pid, r.exit_code)
        await wl.done.wait()

    async def close(self) -> None:
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(t), timeout=10)
        for base in self.bases():
            with contextlib.suppress(OSError):
                base.rmdir()  # only when empty: nothing of ours left in /dev/shm

    def _prune(self) -> None:
        done = [w for w in self._workloads.values() if w.state in ("exited", "stopped", "failed")]
        for w in done[: max(0, len(done) - KEEP_FINISHED)]:
            del self._workloads[w.id]

    # - start-up -

    def cleanup_leftovers(self) -> list[str]:
        """Wipe run directories a previous agent left (it died before cleaning up), stopping
        whatever still holds their files first. Returns the directories wiped."""
        return self.dirs.cleanup_leftovers(self.stop_grace)
