"""CI: install the agent alone (custos + custos-agent, no extras) in a fresh venv, start it, and
check what it loaded.

A dev control plane runs from the CI venv (the one running this script); the agent runs from
the fresh venv as `custos agent run --dev` until its custody lease is live and its first
inventory is sent, then reports the modules it has imported. It fails if any of hvac, aetcd,
requests, urllib3, boto3, botocore or prometheus_client is among them, or if the fresh venv
holds more distributions than the agent declares.

Usage: python .ci/agent_only.py WORKDIR
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("hvac", "aetcd", "requests", "urllib3", "boto3", "botocore", "s3transfer", "prometheus_client")

# Runs inside the agent-only venv: the CLI's own entry point, plus a watcher thread that
# waits for a live lease and a full inventory, records sys.modules and stops the agent.
PROBE = r"""
import json, os, signal, sys, threading, time
from pathlib import Path

from custos.cli.main import main
from custos.client.localagent import LocalClient

out, sock = Path(sys.argv[1]), Path(sys.argv[2])

def watch():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            st = LocalClient(sock, timeout=2).status()
            if st["lease"]["state"] == "live" and st["inventory"]["ready"]:
                out.write_text(json.dumps({"status": st, "modules": sorted(sys.modules)}))
                os.kill(os.getpid(), signal.SIGTERM)
                return
        except Exception:
            pass
        time.sleep(0.2)
    out.write_text(json.dumps({"error": "no live lease within 60 s"}))
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
sys.exit(main(sys.argv[3:]))
"""


def run(cmd: list[str], **kw: object) -> None:
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def main() -> int:
    work = Path(sys.argv[1]).resolve()
    venv = work / "agent-venv"
    run([sys.executable, "-m", "venv", "--clear", str(venv)])
    py = str(venv / "bin" / "python")
    # Build from a copy: an install from a source tree writes build/ and *.egg-info into it.
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__"))
    run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(src), str(src / "agent")])
    listed = subprocess.run([py, "-m", "pip", "list", "--format", "json", "--exclude", "pip",
                             "--exclude", "setuptools", "--exclude", "wheel"],
                            check=True, capture_output=True, text=True).stdout
    dists = sorted(d["name"].lower() for d in json.loads(listed))
    print(f"agent-only install: {len(dists)} distributions: {', '.join(dists)}")
    heavy = [d for d in dists if d in ("hvac", "aetcd", "boto3", "botocore", "requests", "prometheus-client")]
    if heavy:
        print(f"FAIL: the agent's install pulls {heavy}")
        return 1

    data, scan = work / "server", work / "scan"
    scan.mkdir(parents=True, exist_ok=True)
    (scan / "weights.safetensors").write_bytes(os.urandom(4096))
    log = open(work / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "custos.cli.main", "server", "--dev", "--data-dir", str(data),
                               "--listen", "127.0.0.1:0"], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (data / "dev.env").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                print("FAIL: the dev server did not start:\n" + (work / "server.log").read_text())
                return 1
            time.sleep(0.1)
        report, sock = work / "agent-modules.json", work / "agent.sock"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOS_")}
        agent = subprocess.run(
            [py, "-c", PROBE, str(report), str(sock), "agent", "run", "--dev", "--data-dir", str(data),
             "--scan", str(scan), "--name", "agent-only", "--state-dir", str(work / "agent-state"),
             "--socket", str(sock)],
            env=env, capture_output=True, text=True, timeout=120, check=False, cwd=work)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    if not report.exists():
        print(f"FAIL: the agent exited {agent.returncode} before reporting:\n{agent.stderr[-4000:]}")
        return 1
    got = json.loads(report.read_text())
    if "error" in got:
        print(f"FAIL: {got['error']}\n{agent.stderr[-4000:]}")
        return 1
    loaded = sorted({m.split(".")[0] for m in got["modules"]} & set(FORBIDDEN))
    print(f"agent-only run: lease {got['status']['lease']['state']}, "
          f"{got['status']['inventory']['files']} files inventoried, {len(got['modules'])} modules loaded")
    if loaded:
        print(f"FAIL: the running agent imported {loaded}")
        return 1
    print(f"agent-only run: none of {', '.join(FORBIDDEN)} loaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
