"""Kernel-checked opens end to end: a dev control plane and two real agent processes (as root).

Agent ``a`` guards with fanotify (``[guard] mode = "auto"``, root); agent ``b`` runs without
CAP_SYS_ADMIN (setpriv), so it falls back to inotify and says so. Every opener is a real
process, every refusal the kernel's EPERM, every alert read back from the control plane.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from custos.v1 import custody_pb2
from tests.e2e.conftest import AgentProc, Api, make_weights, server_config, unique, wait_until
from tests.servers.custos import CUSTOS, DevServer

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="fanotify needs root (CI runs as root)")

# A supervised workload that reads its weights in a loop and says when that changes (and every
# 100 reads), with the time; on SIGTERM it says "term" and exits.
READER = r"""
import os, signal, sys, time
path = os.path.join(os.environ["CUSTOS_ARTIFACT_DIR"], "model-00001.safetensors")
def term(*_):
    print("term", 0, time.time_ns(), flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, term)
last, n = None, 0
while True:
    try:
        with open(path, "rb") as f:
            f.read(4096)
        state = "ok"
    except OSError as e:
        state = "err%d" % e.errno
    n += 1
    if state != last or n % 100 == 0:
        print(state, n, time.time_ns(), flush=True)
        last = state
    time.sleep(0.002)
"""
OPEN = "import sys\nopen(sys.argv[1], 'rb').read()\n"


class UnprivilegedAgent(AgentProc):
    """An agent without CAP_SYS_ADMIN: fanotify_init refuses it, the guard falls back to inotify."""

    def start(self) -> AgentProc:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", *CUSTOS, "agent", "run",
             "--config", str(self.config)],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until(lambda: self.socket.exists() or self.proc.poll() is not None, 30,  # type: ignore[union-attr]
                   f"agent {self.name} to open its socket")
        assert self.proc.poll() is None, f"agent {self.name} exited:\n{self.log()}"
        return self


@dataclass
class Setup:
    server: DevServer
    api: Api
    a: AgentProc
    b: AgentProc
    weights: Path
    artifact: str
    scripts: Path
    protected: Path


def _guard(ag: AgentProc, text: str) -> None:
    ag.config.write_text(ag.config.read_text() + "\n[guard]\n" + text + "\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("guard")
    server = DevServer(base / "cp", extra=["--config", str(server_config(base / "cp.toml"))]).start()
    agents: list[AgentProc] = []
    api: Api | None = None
    try:
        server.cli("model", "register", "m1", "--training-flops", "3e26", check=True)
        weights = make_weights(base / "weights", seed=11)
        pushed = json.loads(server.cli("push", "m1", str(weights), "-o", "json", check=True).stdout)
        scripts = base / "scripts"
        scripts.mkdir()
        (scripts / "reader.py").write_text(READER)
        protected = base / "b-protected"
        (protected / "deep").mkdir(parents=True)
        (protected / "deep" / "weights.bin").write_bytes(b"protected bytes")
        a = AgentProc(base / "a", unique("guard-a"), server)
        _guard(a, 'mode = "auto"\nresponse_timeout_ms = 250')
        b = UnprivilegedAgent(base / "b", unique("guard-b"), server)
        _guard(b, f'mode = "auto"\nprotected_paths = ["{protected}"]')
        agents = [a, b]
        for ag in agents:
            ag.enroll()
            ag.start()
        api = Api(server)
        for ag in agents:
            wait_until(ag.lease_live, 30, f"{ag.name} to hold a live lease")
        server.grant("m1", hosts=[ag.name for ag in agents], duration_s=3600)
        s = Setup(server=server, api=api, a=a, b=b, weights=weights, artifact=pushed["id"], scripts=scripts,
                  protected=protected)
    except BaseException:
        for ag in agents:
            print(f"--- agent {ag.name} log ---\n{ag.log()[-4000:]}")
        print(f"--- control plane log ---\n{server.log()}")
        for ag in agents:
            ag.stop()
        if api is not None:
            api.close()
        server.stop()
        raise
    try:
        yield s
    finally:
        for ag in agents:
            ag.stop()
        api.close()
        server.stop()


def start_reader(s: Setup, ag: AgentProc) -> dict[str, Any]:
    res = ag.run("--model", "m1", "--artifact", s.artifact, "--detach", "-o", "json", "--",
                 sys.executable, str(s.scripts / "reader.py"))
    assert res.returncode == 0, res.stderr
    run = json.loads(res.stdout)
    run["log"] = ag.state_dir / "workloads" / f"{run['workload_id']}.log"
    wait_until(lambda: "ok" in states(run), 20, "the workload to read its weights")
    return run


def reader_lines(run: dict[str, Any]) -> list[tuple[str, int, int]]:
    try:
        text = Path(run["log"]).read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def states(run: dict[str, Any]) -> list[str]:
    return [st for st, _n, _t in reader_lines(run)]


def alerts(s: Setup, host: str, rule: str) -> list[Any]:
    resp = s.api.alerts.ListAlerts(custody_pb2.ListAlertsRequest(host=host), timeout=10)
    return [a for a in resp.alerts if a.rule == rule]


def test_an_unlisted_open_is_refused_and_alerted_within_1s_while_the_workload_reads_on(setup: Setup) -> None:
    s = setup
    run = start_reader(s, s.a)
    target = Path(run["artifact_dir"]) / "model-00001.safetensors"
    reads_before = reader_lines(run)[-1][1]
    t0 = time.monotonic()
    thief = subprocess.run([sys.executable, "-c", OPEN, str(target)], capture_output=True, text=True, timeout=30,
                           check=False)
    assert thief.returncode != 0 and "Operation not permitted" in thief.stderr, thief.stderr  # EPERM
    cat = subprocess.run([shutil.which("cat") or "cat", str(target)], capture_output=True, timeout=30, check=False)
    assert cat.returncode == 1 and b"Operation not permitted" in cat.stderr
    found = wait_until(lambda: [a for a in alerts(s, s.a.name, "open-denied") if str(target) in a.detail],
                       5, "the open-denied alert", interval=0.02)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, f"the alert took {elapsed:.3f} s"  # the bound
    al = found[0]
    assert al.severity == "high" and al.model == "m1" and al.artifact_id == s.artifact
    for part in ("pid ", "exe ", "user root", "cgroup ", "container ", str(target)):
        assert part in al.detail, al.detail
    wait_until(lambda: len({a.id for a in alerts(s, s.a.name, "open-denied")}) >= 2, 5, "one alert per process")
    # The supervised workload was never refused and read on.
    wait_until(lambda: reader_lines(run)[-1][1] > reads_before + 200, 10, "the workload to read on")
    assert set(states(run)) == {"ok"}, states(run)
    st = s.a.status()["guard"]
    assert st["mode"] == "fanotify" and st["denied"] >= 2 and st["zones"]["workload"] >= 1
    assert st["max_response_ms"] < 250 and st["defaults"] == 0
    # The same opener again: the kernel refuses it again, the control plane keeps one alert for it.
    n = len(alerts(s, s.a.name, "open-denied"))
    subprocess.run([sys.executable, "-c", OPEN, str(target)], capture_output=True, timeout=30, check=False)
    time.sleep(0.5)
    assert len(alerts(s, s.a.name, "open-denied")) == n + 1  # a new pid is a new alert
    os.kill(run["pid"], 15)


def test_a_read_of_registered_weights_on_a_scan_root_raises_weights_read(setup: Setup) -> None:
    s = setup
    copy = s.a.root / "stray-copy"
    make_weights(copy, seed=11)  # the registered bytes, under a scan root, outside any run
    f = copy / "model-00001.safetensors"
    wait_until(lambda: s.a.status()["guard"]["registered_watched"] >= 3, 20,
               "the agent to watch the registered files it found")
    # A reader that lingers a moment (as one that sends the bytes somewhere does): notifications
    # hold nobody, so a process gone before its event is read is named by its pid alone.
    res = subprocess.run([sys.executable, "-c", OPEN + "import time\ntime.sleep(1)\n", str(f)],
                         capture_output=True, timeout=30, check=False)
    assert res.returncode == 0  # notification mode blocks nothing
    found = wait_until(lambda: [a for a in alerts(s, s.a.name, "weights-read") if str(f) in a.detail], 5,
                       "the weights-read alert", interval=0.05)
    al = found[0]
    assert al.severity == "high" and al.model == "m1" and "pid " in al.detail and "fanotify-notify" in al.detail
    assert "time.sleep" in al.detail and "user root" in al.detail


def test_without_cap_sys_admin_the_agent_falls_back_to_inotify_and_says_degraded(setup: Setup) -> None:
    s = setup
    hosts = wait_until(lambda: (h := {x["name"]: x for x in json.loads(
        s.server.cli("hosts", "-o", "json", check=True).stdout)}) and h[s.b.name]["guard"] and h, 20,
                       "the hosts' guard modes")
    assert hosts[s.b.name]["guard"] == "inotify (degraded)"
    assert hosts[s.a.name]["guard"] == "fanotify"
    table = s.server.cli("hosts", check=True).stdout
    assert "GUARD" in table and "inotify (degraded)" in table
    st = s.b.status()["guard"]
    assert st["mode"] == "inotify (degraded)" and "no CAP_SYS_ADMIN" in st["reason"]
    f = s.protected / "deep" / "weights.bin"
    res = subprocess.run([shutil.which("cat") or "cat", str(f)], capture_output=True, timeout=30, check=False)
    assert res.returncode == 0  # detection only
    found = wait_until(lambda: [a for a in alerts(s, s.b.name, "weights-read") if str(f) in a.detail], 5,
                       "the inotify alert", interval=0.05)
    assert "no pid" in found[0].detail and "inotify" in found[0].detail


def test_at_a_halt_opens_are_refused_before_the_workload_is_killed(setup: Setup) -> None:
    s = setup
    run = start_reader(s, s.a)
    halt = s.server.propose("halt", "m1")
    s.server.sign(halt, 1, 2, 3)
    wait_until(lambda: "term" in states(run) or not Path(f"/proc/{run['pid']}").exists(), 30,
               "the workload to be stopped")
    lines = reader_lines(run)
    first_refused = next(((n, t) for st, n, t in lines if st.startswith("err")), None)
    term = next((t for st, _n, t in lines if st == "term"), None)
    denied_at = s.a.status()["guard"]["denied_all_at_unix_ns"]
    quorum = json.loads(s.server.cli("order", "report", halt, "-o", "json", check=True).stdout)["quorum_at_ns"]
    assert first_refused is not None and term is not None, lines[-5:]
    print(f"\nhalt on {s.a.name}, from quorum: deny-all +{(denied_at - quorum) / 1e6:.1f} ms, first refused open "
          f"+{(first_refused[1] - quorum) / 1e6:.1f} ms (read #{first_refused[0]}), SIGTERM seen by the workload "
          f"+{(term - quorum) / 1e6:.1f} ms")
    assert quorum <= denied_at
    assert lines[next(i for i, ln in enumerate(lines) if ln[0].startswith("err"))][0] == "err1"  # EPERM
    assert denied_at <= first_refused[1] < term, (denied_at, first_refused, term)
    assert all(st == "ok" for st, _n, t in lines if t < denied_at)
    # A refusal of the workload itself is an alert too (the halted scope refuses everyone).
    wait_until(lambda: [a for a in alerts(s, s.a.name, "open-denied") if f"pid {run['pid']}," in a.detail
                        and "halted" in a.detail], 5, "the workload's refusal as an alert")
