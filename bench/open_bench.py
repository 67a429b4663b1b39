#!/usr/bin/env python3
"""Kernel-checked opens: what an allowed open of a guarded file costs, and how fast a halt refuses.

(a) open(2)+close(2) of a small file by another process, many times: on an unmarked
    path (the limit, measured in the same run) and on a guarded path whose opener is
    allowed — as a supervised workload's process, and as an allow-listed executable
    (path + SHA-256, digest cached). Median and p99 in µs, and their ratio to the
    unmarked baseline. Every guarded open is one round trip to the responder thread.
(b) From "halt starts" (``Guard.deny_all``, what the halter calls right after it starts
    refusing runs, before any process is signalled) to the first open the kernel refuses,
    seen by an opener that reads in a loop: median and max over the trials.

Needs root (CAP_SYS_ADMIN). Prints figures only when every measurement succeeded.

    python bench/open_bench.py [--opens 20000] [--trials 20] [--dir D]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "agent"))

import psutil

from custos.agent.guard import AllowEntry, Guard, GuardSettings, WorkloadMembers, WorkloadZone

# Opens PATH N times; prints the latency of each (ns) as one JSON list.
OPENER = """
import json, os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
sys.stdin.readline()  # go
out = []
for _ in range(n):
    t = time.perf_counter_ns()
    fd = os.open(path, os.O_RDONLY)
    os.close(fd)
    out.append(time.perf_counter_ns() - t)
print(json.dumps(out), flush=True)
"""

# Opens PATH in a loop; says "ready" after the first open, then the wall time of the first refusal.
PROBE = """
import os, sys, time
path = sys.argv[1]
said = False
while True:
    try:
        fd = os.open(path, os.O_RDONLY)
        os.close(fd)
    except PermissionError:
        print("refused", time.time_ns(), flush=True)
        break
    if not said:
        print("ready", flush=True)
        said = True
"""


class BenchFailed(Exception):
    pass


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def run_opener(path: Path, n: int, *, as_workload: tuple[Guard, list[WorkloadZone], Path] | None = None) -> list[float]:
    p = subprocess.Popen([sys.executable, "-c", OPENER, str(path), str(n)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        if as_workload is not None:
            guard, zones, run_dir = as_workload
            ct = psutil.Process(p.pid).create_time()
            members = WorkloadMembers(workload_id="w-bench", artifact_id="a" * 64, root_pid=p.pid,
                                      root_create_time=ct, members={p.pid: ct})
            zones[:] = [WorkloadZone(members=members, run_dir=str(run_dir), files=())]  # the supervisor's view
            guard.sync_workloads()
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write("go\n")
        p.stdin.flush()
        line = p.stdout.readline()
        if p.wait(120) != 0 or not line:
            raise BenchFailed(f"the opener failed (exit {p.returncode})")
        lat = [x / 1000 for x in json.loads(line)]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if len(lat) != n:
        raise BenchFailed("the opener reported fewer opens than asked")
    return lat


def deny_all_to_refused(guard: Guard, path: Path, trials: int) -> list[float]:
    out = []
    for _ in range(trials):
        guard.lift(None)
        p = subprocess.Popen([sys.executable, "-c", PROBE, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise BenchFailed("the probe could not open the file before the halt")
            time.sleep(0.01)  # well into its loop
            t0 = time.time_ns()
            guard.deny_all(None)
            word, _, t = p.stdout.readline().partition(" ")
            if word != "refused":
                raise BenchFailed("the probe was never refused")
            out.append((int(t) - t0) / 1e6)
        finally:
            p.kill()
            p.wait()
    guard.lift(None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opens", type=int, default=20000)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--dir", default=None)
    ns = ap.parse_args()
    logging.getLogger("custos").setLevel(logging.ERROR)  # the halts' warnings are not figures
    if os.geteuid() != 0:
        print("open_bench: needs root (fanotify permission events need CAP_SYS_ADMIN)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=ns.dir) as d:
        base = Path(d)
        plain = base / "plain" / "w.bin"
        guarded_dir = base / "guarded"
        guarded = guarded_dir / "w.bin"
        run_dir = base / "run"
        in_run = run_dir / "w.bin"
        for f in (plain, guarded, in_run):
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(os.urandom(4096))
        exe = os.path.realpath(sys.executable)
        digest = hashlib.sha256(Path(exe).read_bytes()).hexdigest()
        zones: list[WorkloadZone] = []
        guard = Guard(GuardSettings(protected_paths=(str(guarded_dir),), allow=(AllowEntry(path=exe, sha256=digest),),
                                    watch_registered=False), workloads=lambda: list(zones))
        guard.start()
        try:
            if guard.mode != "fanotify":
                raise BenchFailed(f"no fanotify here: {guard.reason}")
            run_opener(guarded, 200)  # warm: the allow-listed digest is computed once, then cached
            base_lat = run_opener(plain, ns.opens)
            allow_lat = run_opener(guarded, ns.opens)
            wl_lat = run_opener(in_run, ns.opens, as_workload=(guard, zones, run_dir))
            refused = deny_all_to_refused(guard, guarded, ns.trials)
            st = guard.status()
            if st["defaults"] or st.get("failed"):
                raise BenchFailed(f"the responder answered {st['defaults']} opens by default: a partial run")
        except BenchFailed as exc:
            print(f"open_bench: FAILED, no figures: {exc}", file=sys.stderr)
            return 1
        finally:
            guard.close()
    b50, b99 = statistics.median(base_lat), percentile(base_lat, 0.99)
    print(f"open(2)+close(2) of a 4 KiB file by another process, {ns.opens} opens each, µs")
    print(f"    {'path':<46}{'median':>10}{'p99':>10}{'x median':>10}{'x p99':>8}")
    for label, lat in (("unmarked (the limit)", base_lat),
                       ("guarded, opener allow-listed (exe + sha256)", allow_lat),
                       ("guarded, opener a supervised workload", wl_lat)):
        m, p = statistics.median(lat), percentile(lat, 0.99)
        print(f"    {label:<46}{m:>10.1f}{p:>10.1f}{m / b50:>10.1f}{p / b99:>8.1f}")
    print(f"responder: {st['answered']} answered, max {st['max_response_ms']:.2f} ms, "
          f"bound {st['response_timeout_ms']} ms, 0 by default")
    print(f"deny_all (halt starts) -> first open refused, {ns.trials} trials: median "
          f"{statistics.median(refused):.3f} ms, max {max(refused):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
