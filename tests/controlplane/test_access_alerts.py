"""An agent's AccessEvents become custody alerts: one per (host, pid, path, kind), bad ones nothing.

A real Custody on a real SQLite Store; the events are what agents send on the custody
stream (custody_pb2.AccessEvent), well formed or not.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custos.controlplane import custody as custody_mod
from custos.controlplane.audit import AuditLog
from custos.controlplane.custody import Custody
from custos.controlplane.registry import Registry
from custos.controlplane.store.sqlite import SQLiteStore
from custos.v1 import custody_pb2


class Env:
    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = SQLiteStore(tmp / "custos.db")
        self.custody = Custody(Registry(self.store, AuditLog(self.store, Ed25519PrivateKey.generate())), ca=None)
        self.seen: list[dict[str, Any]] = []

        async def on_alert(a: dict[str, Any]) -> None:
            self.seen.append(a)

        self.custody.on_alert = on_alert

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def access(self, host: str = "gpu-1", **kw: Any) -> dict[str, Any] | None:
        base: dict[str, Any] = {"kind": "denied", "mode": "fanotify-perm", "pid": 4242, "exe": "/usr/bin/cat",
                                "exe_sha256": "e" * 64, "user": "mallory", "cgroup": "/user.slice/u-1001",
                                "container_id": "", "cmdline": "cat /data/w.safetensors",
                                "path": "/data/w.safetensors", "at_unix_ns": 1}
        base.update(kw)
        return self.run(self.custody.on_access(host, custody_pb2.AccessEvent(**base)))

    def alerts(self) -> list[dict[str, Any]]:
        return self.run(self.custody.list_alerts())

    def close(self) -> None:
        self.run(self.store.close())
        self.loop.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


@pytest.mark.parametrize(("kind", "rule"), [("denied", "open-denied"), ("read", "weights-read"),
                                            ("canary", "canary-opened")])
def test_each_kind_is_its_rule_with_the_opener_in_the_detail(env: Env, kind: str, rule: str) -> None:
    a = env.access(kind=kind, canary_id="c-1" if kind == "canary" else "")
    assert a is not None and a["rule"] == rule and a["severity"] == "high" and a["state"] == "open"
    for part in ("pid 4242", "/usr/bin/cat", "user mallory", "cgroup /user.slice/u-1001", "container -",
                 "/data/w.safetensors", "fanotify-perm"):
        assert part in a["detail"], (part, a["detail"])
    if kind == "canary":
        assert "canary c-1" in a["detail"]
    assert env.alerts() == [a] and env.seen == [a]


def test_the_same_opener_is_one_alert_and_a_new_pid_a_new_one(env: Env) -> None:
    first = env.access()
    assert first is not None
    assert env.access(at_unix_ns=99, cmdline="cat again") is None  # same host, pid, path, kind
    assert env.access(pid=4243) is not None
    assert env.access(kind="read") is not None  # another kind
    assert env.access(path="/data/other.safetensors") is not None
    assert env.access(host="gpu-2") is not None
    assert len(env.alerts()) == 5 and len(env.seen) == 5


def test_without_a_pid_one_alert_per_path_and_ten_minutes(env: Env) -> None:
    ten_min = 600 * 10**9
    assert env.access(pid=0, mode="inotify", kind="read", at_unix_ns=ten_min * 5) is not None
    assert env.access(pid=0, mode="inotify", kind="read", at_unix_ns=ten_min * 5 + 10) is None
    assert env.access(pid=0, mode="inotify", kind="read", at_unix_ns=ten_min * 6) is not None
    a = env.alerts()[0]
    assert "unknown process" in a["detail"] and "no pid" in a["detail"]


@pytest.mark.parametrize("bad", [
    {"kind": "exfiltrated"},
    {"kind": ""},
    {"path": "relative/w.bin"},
    {"path": ""},
    {"path": "/data/\x00w"},
    {"path": "/" + "a" * 5000},
    {"pid": -1},
])
def test_malformed_events_change_nothing(env: Env, bad: dict[str, Any]) -> None:
    assert env.access(**bad) is None
    assert env.alerts() == [] and env.seen == []


def test_agent_strings_are_bounded_and_one_line(env: Env) -> None:
    a = env.access(exe="/x\n" * 5000, cmdline="evil\nforged line " * 1000, user="u" * 500, detail="d\n" * 5000)
    assert a is not None and "\n" not in a["detail"] and len(a["detail"]) < 3000


def test_a_flood_of_new_pids_is_capped_per_host(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(custody_mod, "ACCESS_ALERTS_PER_MINUTE", 5)
    got = [env.access(pid=1000 + i) for i in range(8)]
    assert sum(a is not None for a in got) == 5
    assert env.access(host="gpu-2", pid=1) is not None  # another host has its own budget


def test_an_artifact_names_the_model_only_when_valid(env: Env) -> None:
    a = env.access(artifact_id="not-an-id", sha256="zz")
    assert a is not None and a["artifact_id"] == "" and a["model"] == ""


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["denied", "read", "canary"]), st.integers(1, 4),
                          st.sampled_from(["/a", "/b/c", "/d e"])), max_size=25))
def test_alerts_are_exactly_the_distinct_openers(events: list[tuple[str, int, str]]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="access-alerts-"))
    e = Env(tmp)
    try:
        for kind, pid, path in events:
            e.access(kind=kind, pid=pid, path=path, at_unix_ns=pid)
        got = {(a["rule"], a["detail"].split(" by pid ")[1].split(",")[0], a["detail"].split(": ")[1].split(" by")[0])
               for a in e.alerts()}
        rules = custody_mod.ACCESS_RULES
        assert got == {(rules[k], str(p), path) for k, p, path in events}
    finally:
        e.close()
        shutil.rmtree(tmp, ignore_errors=True)
