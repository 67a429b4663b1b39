"""Bad input to the agent: one clear error at start-up, or one clear log line and the agent goes on."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from custos.agent.config import AgentConfig, load_agent_config
from custos.agent.halt import HaltBlocks, ManifestCache
from custos.agent.inventory import Inventory
from custos.agent.workloads import _DROP_PRIVILEGES, Supervisor
from custos.errors import InvalidInput
from custos.fs.hashing import hash_file
from tests import ROOT
from tests.servers.custos import CUSTOS

GOOD = """
name = "host-1"
state_dir = "state"
socket = "run/agent.sock"
[control_plane]
addr = "127.0.0.1:7443"
ca_file = "ca.pem"
[scan]
roots = ["root"]
"""


@pytest.mark.parametrize(("text", "needle"), [
    ("name = \"host-1\"\n[scan\nroots = []", "config"),  # TOML syntax
    (GOOD.replace("roots =", "rootz ="), "unknown key(s) ['rootz'] at [scan]"),
    (GOOD + "interval = \"fast\"\n", "scan.interval must be a int or float, got str"),
    (GOOD + "interval = 0\n", "scan.interval must be between"),
    (GOOD + "watch = 1\n", "scan.watch must be a bool"),
    (GOOD.replace('addr = "127.0.0.1:7443"', ""), "control_plane.addr is required"),
    (GOOD.replace('addr = "127.0.0.1:7443"', 'addr = "no-port"'), "control_plane.addr must be HOST:PORT"),
    (GOOD.replace('"host-1"', '"Host_1"'), "bad host name"),
    (GOOD.replace('roots = ["root"]', "roots = []"), "scan.roots must list at least one directory"),
    (GOOD.replace('roots = ["root"]', 'roots = ["root", 3]'), "scan.roots must be a list of non-empty strings"),
    (GOOD + "[workloads]\nallowed_uids = [-1]\n", "workloads.allowed_uids must be a list of integers"),
    (GOOD + "[lease]\nheartbeat_interval = -1\n", "lease.heartbeat_interval must be between"),
    (GOOD + "[log]\nlevel = \"loud\"\n", "log.level must be"),
    (GOOD + "[control_plane.extra]\n", "unknown key(s) ['extra'] at [control_plane]"),
])
def test_malformed_config_is_one_clear_error(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    with pytest.raises(InvalidInput) as err:
        load_agent_config(cfg)
    msg = str(err.value)
    assert needle in msg and str(cfg) in msg
    assert "\n" not in msg


def test_good_config_resolves_paths_against_its_directory(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(GOOD)
    c = load_agent_config(cfg)
    assert c.state_dir == tmp_path / "state"
    assert c.scan_roots == (tmp_path / "root",)
    assert c.ca_file == tmp_path / "ca.pem"
    # The agent never scans its own state (hash cache, identity, plaintext of runs).
    assert c.scan_config().is_excluded(str(tmp_path / "state"))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOS_")}
    return subprocess.run([*CUSTOS, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
                          check=False)


def test_agent_run_with_a_bad_config_exits_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(GOOD + "frequency = 3\n")
    res = _cli("agent", "run", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("custos: error: config ") and "frequency" in lines[0]


def test_agent_run_without_enrollment_says_how_to_enroll(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(GOOD)
    res = _cli("agent", "run", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 6
    assert "not enrolled" in res.stderr and "custos agent enroll" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_run_without_an_agent_is_a_clear_error(tmp_path: Path) -> None:
    res = _cli("run", "--socket", str(tmp_path / "none.sock"), "--model", "m", "--artifact", "ab" * 32, "--",
               "true", cwd=tmp_path)
    assert res.returncode == 5
    assert "no agent is listening" in res.stderr


async def test_file_vanishing_mid_hash_is_logged_and_the_scan_goes_on(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The scanner reports the vanished file; the agent logs it once and keeps the rest of the inventory."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "keep.safetensors").write_bytes(os.urandom(1000))
    doomed = root / "doomed.safetensors"
    doomed.write_bytes(os.urandom(1000))

    def vanishing_hasher(path: str) -> tuple[int, str]:
        if path == str(doomed):
            os.unlink(path)  # gone between the walk and the read
        return hash_file(path)

    cfg = AgentConfig(name="h", state_dir=tmp_path / "state", socket_path=tmp_path / "s", addr="x:1",
                      ca_file=tmp_path / "ca.pem", scan_roots=(root,), scan_min_size=0)
    cfg.state_dir.mkdir()
    sup = Supervisor(name="h", state_dir=cfg.state_dir, plaintext_dir=tmp_path / "plain", calls=None,  # type: ignore[arg-type]
                     blocks=HaltBlocks(None), manifests=ManifestCache(tmp_path / "m"), refusal=lambda: "test",
                     open_blobs=lambda url: None)  # type: ignore[arg-type,return-value]
    inv = Inventory(cfg, sup, hasher=vanishing_hasher)
    try:
        with caplog.at_level(logging.WARNING, logger="custos.agent"):
            await inv.full_scan()
            await inv.full_scan()
        problems = [r for r in caplog.records if r.getMessage() == "scan problem"]
        assert len(problems) == 1  # logged when it appeared, not again
        fields = problems[0].fields  # type: ignore[attr-defined]
        assert fields["kind"] == "vanished" and fields["path"] == str(doomed)
        report = inv.full_report()
        assert [f.path for f in report.files] == [str(root / "keep.safetensors")]
        assert not any("vanished" in p for p in report.problems)  # resolved on the second scan
    finally:
        inv.close()


def test_the_example_config_is_valid() -> None:
    c = load_agent_config(ROOT / "deploy" / "agent.example.toml")
    assert c.name == "gpu-node-17" and c.heartbeat_interval == 0 and c.scan_roots


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_another_users_workload_starts_as_that_user_with_its_environment(tmp_path: Path) -> None:
    """The privilege drop `custos run` uses when the caller is not the agent's user."""

    def drop(cwd: str) -> subprocess.CompletedProcess[str]:
        r, w = os.pipe()
        os.write(w, json.dumps({"FOO": "from the caller", "PATH": "/usr/bin:/bin",
                                "LD_PRELOAD": "/nonexistent.so"}).encode())
        os.close(w)
        try:
            return subprocess.run([sys.executable, "-I", "-S", "-c", _DROP_PRIVILEGES, str(r), "65534", "65534",
                                   "65534", cwd, "sh", "-c", 'echo "$(id -u) $(id -g) $(pwd) $FOO"'],
                                  pass_fds=(r,), env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                                  timeout=30, check=False)
        finally:
            os.close(r)

    res = drop("/")
    assert res.returncode == 0, res.stderr
    # The privileged interpreter started with a clean environment; the caller's
    # (LD_PRELOAD included) reached only the command, running as the caller.
    assert res.stdout.strip() == "65534 65534 / from the caller"
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    res = drop(str(private))  # the directory is entered as the caller, not as root
    assert res.returncode == 126 and "cannot enter" in res.stderr
