"""Run `custos server --dev` as a real process, and the CLI against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.servers.ports import free_port, wait_for_port

CUSTOS = [sys.executable, "-m", "custos.cli.main"]


def parse_env_file(path: Path) -> dict[str, str]:
    import shlex

    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export "):].partition("=")
            env[k] = shlex.split(v)[0] if v else ""
    return env


class DevServer:
    def __init__(self, data_dir: Path, *, store: str | None = None, port: int | None = None,
                 extra: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.store = store
        self.port = port or free_port()
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    def start(self, timeout: float = 30) -> DevServer:
        env_file = self.data_dir / "dev.env"
        if env_file.exists():
            env_file.unlink()
        args = [*CUSTOS, "server", "--dev", "--data-dir", str(self.data_dir),
                "--listen", f"127.0.0.1:{self.port}", *self.extra]
        if self.store:
            args += ["--store", self.store]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "server.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while not env_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"custos server did not start:\n{self.log()}")
            time.sleep(0.05)
        wait_for_port(self.port, timeout=max(1.0, deadline - time.monotonic()))
        self.env = parse_env_file(env_file)
        return self

    def log(self) -> str:
        try:
            return (self.data_dir / "server.log").read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def client_env(self, role: str = "security-team") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOS_")}
        env.update(self.env)
        env["CUSTOS_ROLE"] = role
        # The audit verifier's trusted state: under the test's data dir, never the user's home.
        env.setdefault("XDG_STATE_HOME", str(self.data_dir / "client-state"))
        return env

    def cli(self, *args: str, role: str = "security-team", check: bool = False,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*CUSTOS, *args], env=self.client_env(role), capture_output=True,
                             text=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise AssertionError(f"custos {' '.join(args)} failed ({res.returncode}):\n"
                                 f"{res.stdout}\n{res.stderr}")
        return res

    def propose(self, action: str, model: str, *extra: str) -> str:
        """Propose an order as the dev executive; its id."""
        out = self.cli("order", "propose", "--action", action, "--model", model, "--reason", f"test {action}",
                       "-o", "json", *extra, role="executive", check=True).stdout
        return str(json.loads(out)["id"])

    def sign(self, oid: str, *which: int) -> dict[str, Any]:
        """Sign order ``oid`` with dev keys exec<i> for each i in ``which``; the order after the last."""
        d: dict[str, Any] = {}
        for i in which:
            d = json.loads(self.cli("order", "sign", oid, "--key", str(self.data_dir / "signers" / f"exec{i}.key"),
                                    "-o", "json", role="executive", check=True).stdout)
        return d

    def grant(self, model: str, **kw: Any) -> Any:
        """An active access grant on ``model``: requested as sec1, approved by sec2 (tests/servers/access)."""
        from tests.servers.access import grant

        return grant(self.env, model, **kw)

    def declare_drills(self, *models: str, keys: tuple[int, ...] = (1, 2, 3, 4)) -> dict[str, Any]:
        """Declare ``models`` drillable in the signed drill register (dev keys; rotate threshold 4)."""
        args = [a for m in models for a in ("--model", m)]
        args += [a for i in keys for a in ("--key", str(self.data_dir / "signers" / f"exec{i}.key"))]
        out = self.cli("drill-register", "declare", *args, "-o", "json", role="executive", check=True).stdout
        return dict(json.loads(out))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)
