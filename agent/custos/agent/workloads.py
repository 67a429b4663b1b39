"""Supervised workloads: `custos run` on a verified, decrypted artifact, then nothing left behind.

For each run the agent, as this host (its own certificate, a live lease):

1. resolves the artifact (an explicit id, or the model's newest stored one);
2. unwraps the data key (Keys.UnwrapDataKey, audited; refused without a live lease);
3. pulls with :func:`custos.client.transfer.pull_into` — every file verified against the
   manifest — into a private directory: ``/dev/shm/custos-agent-HOST/RUN/artifact``
   when /dev/shm exists and has room, else ``STATE_DIR/runs/RUN/artifact``; the
   key is zeroized as soon as the pull ends;
4. records the copy (Registry.RecordCopy, form plaintext) and lists the
   directory in ``Inventory.managed_roots``;
5. starts the command as the requesting user, in its own session, with
   ``CUSTOS_ARTIFACT_DIR`` set, and tracks its whole process tree (descendants,
   its session, and — the agent being a child subreaper — orphans it leaves);
6. when the command exits: stops what is left of its tree, wipes the directory
   (overwrite, then unlink) and reports the exit code.

Runs are refused while the lease is not live and for halted artifacts; a halt
(custos.agent.halt) stops running ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from custos.agent.blocks import HaltBlocks, ManifestCache
from custos.agent.processes import inspect_holders, process_tree, stop_processes
from custos.agent.scanner import FileRecord
from custos.agent.wipe import check_inside, wipe_tree
from custos.blobs.base import BlobStore
from custos.client.transfer import manifest_of, pull_into
from custos.core.keymaterial import zeroize
from custos.errors import CustosError, FailedPrecondition, InvalidInput
from custos.v1 import keys_pb2, registry_pb2

log = logging.getLogger("custos.agent.workloads")

SHM = Path("/dev/shm")  # noqa: S108 - RAM-backed; the base is created 0711 and its owner checked
SHM_HEADROOM = 64 << 20
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_ARGV = 4096
KEEP_FINISHED = 200
WORKLOAD_ID = re.compile(r"^w-[0-9a-f]{16}$")


class ControlPlaneCalls(Protocol):
    """The unary calls a run makes as this host (implemented over the custody stream's channel)."""
    async def unwrap(self, artifact: str, purpose: str) -> keys_pb2.UnwrapDataKeyResponse: ...
    async def record_copy(self, artifact_id: str, path: str, form: int) -> None: ...
    async def newest_artifact(self, model: str) -> str: ...


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A checked `custos run` request, with the identity of who asked (from SO_PEERCRED)."""

    model: str
    artifact: str
    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str]
    detach: bool
    uid: int
    gid: int

    @classmethod
    def parse(cls, data: dict[str, Any], *, uid: int, gid: int) -> RunRequest:
        """Raises InvalidInput naming the bad field."""
        model = data.get("model")
        if not isinstance(model, str) or not MODEL_NAME.match(model):
            raise InvalidInput(f"bad model name {model!r}")
        artifact = data.get("artifact") or ""
        if not isinstance(artifact, str) or (artifact and not re.fullmatch(r"[0-9a-f]{8,64}", artifact)):
            raise InvalidInput(f"bad artifact id {artifact!r}: want at least 8 hex digits")
        argv = data.get("argv")
        if (not isinstance(argv, list) or not argv or len(argv) > MAX_ARGV
                or not all(isinstance(a, str) and "\0" not in a for a in argv) or not argv[0]):
            raise InvalidInput("argv must be a non-empty list of strings (the command after --)")
        cwd = data.get("cwd") or "/"
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            raise InvalidInput("cwd must be an absolute path")
        env = data.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) and "=" not in k
                                                and "\0" not in k + v for k, v in env.items()):
            raise InvalidInput("env must map names to strings")
        detach = data.get("detach", False)
        if not isinstance(detach, bool):
            raise InvalidInput("detach must be true or false")
        return cls(model=model, artifact=artifact, argv=tuple(argv), cwd=cwd, env=dict(env), detach=detach,
                   uid=uid, gid=gid)


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

    def as_dict(self) -> dict[str, Any]:
        return {"workload_id": self.id, "model": self.model, "artifact_id": self.artifact_id,
                "argv": list(self.argv), "uid": self.uid, "state": self.state, "pid": self.pid,
                "pids": sorted(self.members), "artifact_dir": str(self.artifact_dir or ""),
                "exit_code": self.exit_code, "stopped": self.stop_reason, "error": self.error,
                "started_unix_ns": self.started_unix_ns, "ended_unix_ns": self.ended_unix_ns}


@dataclass(frozen=True, slots=True)
class WorkloadView:
    """What a halt needs to know about one workload (a snapshot)."""

    id: str
    artifact_id: str
    pids: tuple[int, ...]
    run_dir: Path | None
    records: tuple[FileRecord, ...]


def _alive(pid: int, create_time: float) -> bool:
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _sessions() -> dict[int, list[int]]:
    """Session id -> pids, from /proc (Linux); {} elsewhere."""
    out: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for n in names:
        if not n.isdigit():
            continue
        try:
            with open(f"/proc/{n}/stat", "rb") as f:
                data = f.read()
            # pid (comm) state ppid pgrp session ... — comm may hold spaces and parentheses
            rest = data[data.rindex(b")") + 2:].split()
            out.setdefault(int(rest[3]), []).append(int(n))
        except (OSError, ValueError, IndexError):
            continue
    return out


def become_subreaper() -> bool:
    """Make orphaned descendants reparent to this process (Linux prctl); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(36, 1, 0, 0, 0)) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


class Supervisor:
    """Starts, tracks and cleans up supervised workloads. Methods named ``*_for_halt``,
    :meth:`zeroize_keys`, :meth:`mark_stopping`, :meth:`note_exit`, :meth:`wipe_run_dir`,
    :meth:`managed_records`, :meth:`managed_roots` and :meth:`refresh_members` are
    thread-safe; :meth:`start` and :meth:`stop` run on the event loop.
    """

    def __init__(self, *, name: str, state_dir: Path, plaintext_dir: Path | None, calls: ControlPlaneCalls,
                 blocks: HaltBlocks, manifests: ManifestCache, refusal: Callable[[], str | None],
                 open_blobs: Callable[[str], BlobStore], stop_grace: float = 10.0,
                 on_change: Callable[[], None] | None = None) -> None:
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
        self._lock = threading.RLock()
        self._workloads: dict[str, Workload] = {}
        self._keys: dict[str, tuple[str, bytearray]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._exit_codes: dict[int, int | None] = {}
        self._wipe_lock = threading.Lock()
        self._wiped: dict[str, list[str]] = {}

    # - plaintext locations -

    def bases(self) -> list[Path]:
        """Every directory runs may use (for exclusion from scans and start-up cleanup)."""
        if self.plaintext_dir is not None:
            return [self.plaintext_dir]
        return [SHM / f"custos-agent-{self.name}", self.state_dir / "runs"]

    def _base_for(self, need: int) -> Path:
        if self.plaintext_dir is not None:
            base = self.plaintext_dir
        else:
            base = self.state_dir / "runs"
            try:
                if SHM.is_dir() and shutil.disk_usage(SHM).free >= need + SHM_HEADROOM:
                    base = SHM / f"custos-agent-{self.name}"
            except OSError:
                pass
        return _private_base(base)

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
        """Wipe one run directory (must lie inside a plaintext base). Returns (wiped, failures).

        Idempotent: a workload's exit and a halt may both wipe the same run; the
        second caller gets the first one's list of wiped files, so a halt's
        evidence is complete whichever came first.
        """
        key = str(run_dir)
        with self._wipe_lock:
            for base in self.bases():
                try:
                    path = check_inside(base, run_dir)
                except FailedPrecondition:
                    continue
                wiped, failures = wipe_tree(path)
                done = self._wiped.setdefault(key, [])
                done.extend(wiped)
                if len(self._wiped) > 4 * KEEP_FINISHED:
                    self._wiped.pop(next(iter(self._wiped)))
                return list(done), failures
        return [], [f"{run_dir}: not inside the agent's plaintext directories; left alone"]

    def refresh_members(self) -> None:
        """Update each running workload's process set: its tree, its session, pids seen before
        that still live. Reaps zombies this agent adopted as a subreaper."""
        with self._lock:
            running = [(w, w.pid, dict(w.members)) for w in self._workloads.values()
                       if w.state == "running" and w.pid]
            roots = {w.pid for w in self._workloads.values() if w.pid}
        sessions = _sessions() if running else {}
        for w, root, known in running:
            pids = set(process_tree(root)) | set(sessions.get(root, ()))
            fresh: dict[int, float] = {}
            for pid in pids:
                if pid in known:
                    fresh[pid] = known[pid]
                    continue
                try:
                    fresh[pid] = psutil.Process(pid).create_time()
                except psutil.Error:
                    continue
            for pid, ct in known.items():
                if pid not in fresh and _alive(pid, ct):
                    fresh[pid] = ct  # reparented away from the tree, still ours
            with self._lock:
                if w.state == "running":
                    w.members = fresh
        self._reap_adopted(roots)

    @staticmethod
    def _reap_adopted(roots: set[int]) -> None:
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        for c in children:
            if c.pid in roots:
                continue  # a workload root: its own watcher reaps it
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(c.pid, os.WNOHANG)

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
            if art.model != req.model:
                raise InvalidInput(f"artifact {art.id[:12]} belongs to model {art.model!r}, not {req.model!r}")
            blocked = self.blocks.refusal(art.id)
            if blocked:
                raise FailedPrecondition(f"refusing to run artifact {art.id[:12]}: halted ({blocked})")
            manifest = manifest_of(art)
            self.manifests.put(art.id, manifest)
            base = self._base_for(manifest.total_size)
            run_dir = base / wl.id
            os.mkdir(run_dir, 0o700)
            with self._lock:
                wl.run_dir = run_dir
                wl.artifact_dir = run_dir / "artifact"
            blobs = self.open_blobs(art.blob_store)
            objects = {o.path: o.key for o in art.objects}
            await asyncio.to_thread(pull_into, blobs, data_key=key, artifact_id=art.id, manifest=manifest,
                                    objects=objects, dest=run_dir / "artifact", workers=4)
        finally:
            zeroize(key)
            with self._lock:
                self._keys.pop(wl.id, None)
        records = []
        for f in manifest.files:
            p = run_dir / "artifact" / f.path
            st = os.stat(p, follow_symlinks=False)
            records.append(FileRecord(path=str(p), size=st.st_size, sha256=f.sha256, device=st.st_dev,
                                      inode=st.st_ino, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns))
        if req.uid != os.geteuid():
            _chown_tree(run_dir, req.uid, req.gid)
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
        argv, cwd, popen_env = list(req.argv), req.cwd, env
        env_pipe: tuple[int, int] | None = None
        if req.uid != os.geteuid():
            # Another user's run: a fresh, isolated interpreter with a clean environment
            # drops to that user, then enters the caller's directory and execs with the
            # caller's environment (read from a pipe). Nothing runs privileged with
            # the caller's environment (LD_PRELOAD and friends), and the agent itself
            # never fork()s with gRPC's threads alive (subprocess uses vfork here).
            data = json.dumps(env).encode()
            if len(data) >= _ENV_PIPE_MAX:
                raise InvalidInput("the environment is too large to pass to another user's workload")
            env_pipe = os.pipe()
            argv = [sys.executable, "-I", "-S", "-c", _DROP_PRIVILEGES, str(env_pipe[0]), str(req.uid),
                    str(req.gid), ",".join(map(str, _groups_of(req.uid, req.gid))), req.cwd, *req.argv]
            cwd, popen_env = "/", {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        log_file = None
        if len(fds) == 3:
            stdin, stdout, stderr = fds
        else:
            stdin = subprocess.DEVNULL
            logs = self.state_dir / "workloads"
            logs.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(logs / f"{wl.id}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            if req.uid != os.geteuid():
                os.fchown(fd, req.uid, req.gid)
            log_file = stdout = stderr = fd
        # Checked and started under the lock: a halt either sees the pid or makes this refuse.
        with self._lock:
            if wl.stop_reason:
                raise FailedPrecondition(f"refusing to run: {wl.stop_reason}")
            why = self.refusal() or self.blocks.refusal(wl.artifact_id)
            if why:
                raise FailedPrecondition(f"refusing to run: {why}")
            try:
                proc = subprocess.Popen(argv, cwd=cwd, env=popen_env, stdin=stdin, stdout=stdout,
                                        stderr=stderr, start_new_session=True, close_fds=True,
                                        pass_fds=(env_pipe[0],) if env_pipe else ())
            except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
                raise InvalidInput(f"cannot start {req.argv[0]!r} in {req.cwd}: {exc.strerror}") from None
            except OSError as exc:
                raise FailedPrecondition(f"cannot start {req.argv[0]!r}: {exc.strerror}") from None
            finally:
                if log_file is not None:
                    os.close(log_file)
                if env_pipe is not None:
                    os.close(env_pipe[0])
                    try:
                        os.write(env_pipe[1], data)  # fits the pipe buffer: never blocks
                    except OSError:
                        pass  # the child died; its exit says why
                    os.close(env_pipe[1])
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
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(wl.pid)
        except (AttributeError, OSError):
            self._spawn_task(self._poll_exit(wl))
            return

        def ready() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            self._spawn_task(self._finish(wl))

        loop.add_reader(fd, ready)

    def _spawn_task(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _poll_exit(self, wl: Workload) -> None:
        # Without pidfds: look every 100 ms (a zombie has exited; the reap below collects it).
        while True:
            try:
                if psutil.Process(wl.pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.Error:
                break
            await asyncio.sleep(0.1)
        await self._finish(wl)

    def _reap(self, wl: Workload) -> int | None:
        code: int | None = None
        for _ in range(10):
            try:
                pid, status = os.waitpid(wl.pid, os.WNOHANG)
            except ChildProcessError:
                break  # reaped by the halt's stop_processes; it noted the code
            if pid:
                code = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.01)
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
            members = dict(wl.members)
        leftovers = [p for p in leftovers if _alive(p, members[p])]
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

        wiped = []
        for base in self.bases():
            try:
                entries = list(os.scandir(base))
            except OSError:
                continue
            for e in entries:
                if not WORKLOAD_ID.match(e.name):
                    continue
                paths: list[str] = []
                for dirpath, _dirs, files in os.walk(e.path):
                    paths.extend(os.path.join(dirpath, f) for f in files)
                holders = {h.pid for h in inspect_holders(paths).holds} if paths else set()
                if holders:
                    stop_processes(sorted(holders), min(self.stop_grace, 5.0))
                _files, failures = self.wipe_run_dir(Path(e.path))
                wiped.append(e.path)
                log.warning("wiped plaintext left by an earlier agent run", extra={"fields": {
                    "dir": e.path, "stopped": sorted(holders), "failures": failures[:10]}})
        return wiped


def _private_base(base: Path) -> Path:
    """Create (0711: others may traverse to their own run, not list) or check the base. Raises FailedPrecondition."""
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o711)
        st = os.lstat(base)
    except OSError as exc:
        raise FailedPrecondition(f"cannot create the plaintext directory {base}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        # Someone else made it (e.g. in /dev/shm, which everyone can write): never put plaintext there.
        raise FailedPrecondition(f"{base} exists and is not a directory owned by this agent: refusing to use it")
    if stat.S_IMODE(st.st_mode) != 0o711:
        os.chmod(base, 0o711)  # noqa: S103 - traverse only: each run dir inside is 0700
    return base


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirs, files in os.walk(top):
        for n in dirs + files:
            os.chown(os.path.join(dirpath, n), uid, gid, follow_symlinks=False)


# Runs as root in a fresh `python -I -S` with a clean environment; stdlib only.
# argv: ENV_FD UID GID GROUPS CWD CMD [ARG...]
_DROP_PRIVILEGES = """
import json, os, sys, warnings  # every import first: the interpreter may be unreadable to the user
fd, uid, gid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with os.fdopen(fd, "rb") as f:
    env = json.loads(f.read())
os.setgroups([int(g) for g in sys.argv[4].split(",") if g])
os.setgid(gid)
os.setuid(uid)
if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
    os._exit(126)
try:
    os.chdir(sys.argv[5])
except OSError as e:
    sys.stderr.write("custos run: cannot enter %s: %s\\n" % (sys.argv[5], e.strerror))
    os._exit(126)
try:
    os.execvpe(sys.argv[6], sys.argv[6:], env)
except OSError as e:
    sys.stderr.write("custos run: cannot start %r: %s\\n" % (sys.argv[6], e.strerror))
    os._exit(127)
"""
_ENV_PIPE_MAX = 60 << 10


def _groups_of(uid: int, gid: int) -> list[int]:
    try:
        return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        return []
