"""What this host holds, as the agent reports it: weight files, the processes holding them, scan problems.

:class:`Inventory` merges the scanner's records with the agent's own runs, scans
files and processes off the event loop, and builds the ``Inventory`` messages
for the control plane: a full report, or the delta since the last one sent.
"""

from __future__ import annotations

import asyncio
import logging
import pwd
import threading
from typing import Any

from custos.agent.canary import Canaries
from custos.agent.config import AgentConfig
from custos.agent.processes import inspect_holders
from custos.agent.scanner import FileRecord, Hasher, Scanner, ScanProblem
from custos.agent.workloads import Supervisor
from custos.v1 import custody_pb2

log = logging.getLogger("custos.agent")

MAX_PROBLEMS_REPORTED = 200


def _problem_text(p: ScanProblem) -> str:
    return f"{p.kind}: {p.path}: {p.message}"


def _user_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class Inventory:
    """What this host holds: weight files (scanner + the agent's own runs) and the processes holding them.

    Scans run in threads; the rest on the event loop. :meth:`records` is thread-safe.
    """

    def __init__(self, cfg: AgentConfig, supervisor: Supervisor, *, hasher: Hasher | None = None,
                 extra_exclude: tuple[str, ...] = ()) -> None:
        self.scan_config = cfg.scan_config(extra_exclude)
        kw: dict[str, Any] = {"hasher": hasher} if hasher is not None else {}
        self.scanner = Scanner(self.scan_config, cfg.state_dir / "scan-cache.sqlite", **kw)
        self.supervisor = supervisor
        self._lock = threading.Lock()
        self._files: dict[str, FileRecord] = {}
        self.processes: list[custody_pb2.ProcessRecord] = []
        self.problems: dict[tuple[str, str], ScanProblem] = {}
        self.ready = False
        self.full_scans = 0
        self._sent_files: dict[str, tuple[int, str, str]] | None = None
        self._sent_procs: frozenset[Any] | None = None
        self._sent_roots: tuple[str, ...] | None = None
        self.guard = "off"  # how opens are checked (custos.agent.guard): fanotify | inotify (degraded) | off
        self.canaries: Canaries | None = None  # decoys as planted are left out (custos.agent.canary)

    def close(self) -> None:
        self.scanner.close()

    def records(self) -> list[FileRecord]:
        """Every weight file known: the scanner's, then the agent's own runs (same path: the run wins)."""
        with self._lock:
            merged = dict(self._files)
        for r in self.supervisor.managed_records():
            merged[r.path] = r
        decoys = self.canaries
        return [r for r in merged.values() if decoys is None or not decoys.hides(r.path, r.sha256)]

    # - scanning -

    async def full_scan(self) -> None:
        result = await asyncio.to_thread(self.scanner.scan)
        with self._lock:
            self._files = result.by_path()
        self._note_problems(result.problems, replace=True)
        self.full_scans += 1
        self.ready = True
        log.info("full scan done", extra={"fields": {
            "files": len(result.records), "hashed": result.stats.hashed, "cache_hits": result.stats.cache_hits,
            "sniffed": result.stats.sniffed, "found_by_format": result.stats.sniff_found,
            "problems": len(result.problems), "elapsed_s": round(result.stats.elapsed_s, 3)}})

    async def rescan(self, paths: list[str]) -> None:
        result = await asyncio.to_thread(self.scanner.rescan_paths, paths)
        with self._lock:
            self._files = result.by_path()
        self._note_problems(result.problems, replace=False)

    def _note_problems(self, problems: tuple[ScanProblem, ...], *, replace: bool) -> None:
        now: dict[tuple[str, str], ScanProblem] = {(p.path, p.kind): p for p in problems}
        for key, p in now.items():
            if key not in self.problems:
                # One line per problem when it appears, not on every scan.
                log.warning("scan problem", extra={"fields": {"path": p.path, "kind": p.kind, "problem": p.message}})
        if replace:
            for key, p in self.problems.items():
                if key not in now:
                    log.info("scan problem resolved", extra={"fields": {"path": p.path, "kind": p.kind}})
            self.problems = now
        else:
            self.problems.update(now)

    def _scan_processes_sync(self) -> list[custody_pb2.ProcessRecord]:
        self.supervisor.refresh_members()
        targets = self.records()
        workload_of = self.supervisor.workload_of()
        holds = inspect_holders(targets).holds if targets else ()
        # One record per process: the control plane keys a LOADED copy by host and pid.
        # A process that maps a file usually also holds it open (Python's mmap keeps a
        # descriptor): "mmap" says more, so it wins.
        by_pid: dict[int, custody_pb2.ProcessRecord] = {}
        for h in holds:
            rec = by_pid.get(h.pid)
            if rec is None:
                by_pid[h.pid] = custody_pb2.ProcessRecord(
                    pid=h.pid, user=h.user, cmdline=" ".join(h.cmdline)[:4096],
                    start_time_unix_ns=int(h.create_time * 1e9), cgroup=h.cgroup[:1024],
                    container_id=h.container_id or "", paths=list(h.paths), how=h.how,
                    workload_id=workload_of.get(h.pid, ""))
                continue
            rec.paths[:] = sorted(set(rec.paths) | set(h.paths))
            if h.how == "mmap":
                rec.how = "mmap"
        out = list(by_pid.values())
        # A supervised workload holds its artifact even when it read the files and closed them.
        held = {(p.workload_id, p.pid) for p in out}
        for w, _pids, paths in self.supervisor.supervised():
            if paths and (w.id, w.pid) not in held:
                out.append(custody_pb2.ProcessRecord(
                    pid=w.pid, user=_user_of(w.uid), cmdline=" ".join(w.argv)[:4096],
                    start_time_unix_ns=int(w.create_time * 1e9), paths=list(paths), how="supervised",
                    workload_id=w.id))
        out.sort(key=lambda p: (p.pid, p.how))
        return out

    async def scan_processes(self) -> None:
        self.processes = await asyncio.to_thread(self._scan_processes_sync)

    # - reports -

    def status(self) -> dict[str, Any]:
        """The inventory's part of the agent's status (counts, the first problems, scan progress)."""
        return {"files": len(self.records()), "processes": len(self.processes),
                "problems": sorted(_problem_text(p) for p in self.problems.values())[:50],
                "full_scans": self.full_scans, "ready": self.ready}

    def _proc_key(self) -> frozenset[Any]:
        return frozenset((p.pid, p.how, tuple(p.paths), p.workload_id) for p in self.processes)

    def _problem_list(self) -> list[str]:
        return [_problem_text(p) for p in list(self.problems.values())[:MAX_PROBLEMS_REPORTED]]

    def full_report(self) -> custody_pb2.Inventory:
        records = self.records()
        roots: tuple[str, ...] = tuple(self.supervisor.managed_roots())
        inv = custody_pb2.Inventory(
            full=True,
            files=[custody_pb2.FileRecord(path=r.path, size=r.size, sha256=r.sha256, form=r.form)
                   for r in sorted(records, key=lambda r: r.path)],
            processes=list(self.processes), problems=self._problem_list(), managed_roots=list(roots),
            canary_paths=self.canaries.paths() if self.canaries is not None else [], guard=self.guard)
        self._sent_files = {r.path: (r.size, r.sha256, r.form) for r in records}
        self._sent_procs = self._proc_key()
        self._sent_roots = roots
        return inv

    def delta_report(self) -> custody_pb2.Inventory | None:
        """Changed and removed files since the last report, or None if nothing changed.

        A changed process list or set of managed roots gives a full report: the
        control plane attributes processes and managed roots against the files
        of the same report.
        """
        if self._sent_files is None:
            return self.full_report()
        roots: tuple[str, ...] = tuple(self.supervisor.managed_roots())
        if self._proc_key() != self._sent_procs or roots != self._sent_roots:
            return self.full_report()
        records = self.records()
        now: dict[str, tuple[int, str, str]] = {r.path: (r.size, r.sha256, r.form) for r in records}
        changed = [r for r in records if self._sent_files.get(r.path) != now[r.path]]
        removed = sorted(p for p in self._sent_files if p not in now)
        if not changed and not removed:
            return None
        self._sent_files = now
        return custody_pb2.Inventory(
            full=False,
            files=[custody_pb2.FileRecord(path=r.path, size=r.size, sha256=r.sha256, form=r.form)
                   for r in sorted(changed, key=lambda r: r.path)],
            removed_paths=removed, processes=list(self.processes), problems=self._problem_list(),
            managed_roots=list(roots), guard=self.guard)

    def forget_sent(self) -> None:
        """After a disconnect: the next report is a full one."""
        self._sent_files = None
        self._sent_procs = None
        self._sent_roots = None
