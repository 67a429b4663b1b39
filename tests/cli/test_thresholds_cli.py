"""Thresholds cannot be borrowed and destroy is final, through the CLI against a real
dev control plane — the attacks of the issue that found them, and their class.

- A production model derived from a drill model is not halted by a drill (2 keys): it
  runs in dry-run; only what the signed drill register declares really halts.
- A production model cannot be declared drillable; a register signed below the rotate
  threshold is refused.
- After a destroy (4 keys), a halt (3) leaves the model destroyed and no lift reaches it
  or its artifacts, named or as a derivative.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers.custos import DevServer


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("thresholds-dev")).start()
    yield server
    server.stop()


def push(srv: DevServer, model: str, root: Path, seed: int, *parent: str) -> dict[str, Any]:
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(random.Random(seed).randbytes(50_000))
    extra = ["--parent", parent[0], "--relation", "fine-tune"] if parent else []
    return dict(json.loads(srv.cli("push", model, str(root), *extra, "-o", "json", check=True).stdout))


def state(srv: DevServer, model: str) -> str:
    return str(json.loads(srv.cli("model", "show", model, "-o", "json", check=True).stdout)["state"])


def settle(srv: DevServer, oid: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        d = dict(json.loads(srv.cli("order", "status", oid, "-o", "json", check=True).stdout))
        if d["state"] != "executing" or time.monotonic() > deadline:
            return d
        time.sleep(0.2)


def test_a_drill_never_halts_a_production_derivative(srv: DevServer, tmp_path: Path) -> None:
    srv.cli("model", "register", "d-drill", "--training-flops", "2e26", "--drill", check=True)
    srv.cli("model", "register", "p-prod", "--training-flops", "3e26", check=True)
    d_art = push(srv, "d-drill", tmp_path / "d", 1)
    p_art = push(srv, "p-prod", tmp_path / "p", 2, d_art["id"])  # P is a fine-tune of D's artifact

    # No register yet: a drill is refused outright, naming the fix.
    res = srv.cli("order", "propose", "--action", "drill", "--model", "d-drill", "--reason", "x", role="executive")
    assert res.returncode == 2 and "drill register" in res.stderr, res.stderr
    # A production model cannot be declared; a register below the rotate threshold is refused.
    res = srv.cli("drill-register", "declare", "--model", "p-prod",
                  *[a for i in (1, 2, 3, 4) for a in ("--key", str(srv.data_dir / "signers" / f"exec{i}.key"))],
                  role="executive")
    assert res.returncode == 6 and "not registered as a drill model" in res.stderr, res.stderr
    res = srv.cli("drill-register", "declare", "--model", "d-drill",
                  *[a for i in (1, 2, 3) for a in ("--key", str(srv.data_dir / "signers" / f"exec{i}.key"))],
                  role="executive")
    assert res.returncode == 2 and "rotate threshold" in res.stderr, res.stderr  # refused as bad input
    shown = srv.declare_drills("d-drill")
    assert shown["models"] == ["d-drill"] and shown["artifacts"] == [d_art["id"]] and shown["version"] == 1

    srv.grant("p-prod")  # before the drill: a drill revokes no production grant either
    oid = srv.propose("drill", "d-drill")
    d = json.loads(srv.cli("order", "status", oid, "-o", "json", check=True).stdout)
    assert d["models"] == ["d-drill"] and d["artifacts"] == 1  # P is not in the signed scope
    assert srv.sign(oid, 1, 2)["state"] in ("executing", "complete")  # the drill threshold
    settle(srv, oid)
    assert state(srv, "d-drill") == "halted"
    assert state(srv, "p-prod") == "active"  # dry-run only
    srv.cli("pull", p_art["id"], str(tmp_path / "p-still-pulls"), check=True)
    report = json.loads(srv.cli("order", "report", oid, "-o", "json", check=True).stdout)
    assert "p-prod" in json.dumps(report)  # reported on, in dry-run
    lift = srv.propose("lift", "d-drill")
    srv.sign(lift, 1, 2, 3)
    settle(srv, lift)
    assert state(srv, "d-drill") == "active"


def test_destroy_is_final_whatever_is_signed_after(srv: DevServer, tmp_path: Path) -> None:
    srv.cli("model", "register", "m-base", "--training-flops", "3e26", check=True)
    srv.cli("model", "register", "m-gone", "--training-flops", "3e26", check=True)
    base = push(srv, "m-base", tmp_path / "b", 3)
    gone = push(srv, "m-gone", tmp_path / "g", 4, base["id"])
    destroy = srv.propose("destroy", "m-gone")
    srv.sign(destroy, 1, 2, 3, 4)
    settle(srv, destroy)
    assert state(srv, "m-gone") == "destroyed"
    # A halt of the model (3 keys) executes — and leaves it destroyed.
    halt = srv.propose("halt", "m-gone")
    srv.sign(halt, 1, 2, 3)
    settle(srv, halt)
    assert state(srv, "m-gone") == "destroyed"
    # No lift names it...
    res = srv.cli("order", "propose", "--action", "lift", "--model", "m-gone", "--reason", "undo", role="executive")
    assert res.returncode == 6 and "cannot be lifted" in res.stderr
    # ...and a halt then lift of its parent reaches it only while halting, never when lifting.
    halt2 = srv.propose("halt", "m-base")
    assert json.loads(srv.cli("order", "status", halt2, "-o", "json", check=True).stdout)["models"] == [
        "m-base", "m-gone"]
    srv.sign(halt2, 1, 2, 3)
    settle(srv, halt2)
    lift = srv.propose("lift", "m-base")
    d = json.loads(srv.cli("order", "status", lift, "-o", "json", check=True).stdout)
    assert d["models"] == ["m-base"] and d["artifacts"] == 1
    srv.sign(lift, 1, 2, 3)
    settle(srv, lift)
    assert state(srv, "m-base") == "active" and state(srv, "m-gone") == "destroyed"
    pulled = srv.cli("pull", gone["id"], str(tmp_path / "never"))
    assert pulled.returncode != 0 and not (tmp_path / "never").exists()
    report = json.loads(srv.cli("order", "report", destroy, "-o", "json", check=True).stdout)
    assert {c["state"] for c in report["copies"] if c["location_kind"] == "object-store"} == {"shredded"}


def test_a_drill_model_holding_production_bytes_cannot_be_declared(srv: DevServer, tmp_path: Path) -> None:
    """A drill artifact pushed with a production artifact's weights would let a 2-key drill stop
    production by content: the register that declares it is refused."""
    srv.cli("model", "register", "x-prod", "--training-flops", "3e26", check=True)
    srv.cli("model", "register", "x-drill", "--training-flops", "2e26", "--drill", check=True)
    push(srv, "x-prod", tmp_path / "p", 77)
    root = tmp_path / "d"
    root.mkdir()
    (root / "model.safetensors").write_bytes(random.Random(77).randbytes(50_000))  # the same bytes
    (root / "extra.bin").write_bytes(b"drill")
    srv.cli("push", "x-drill", str(root), check=True)
    res = srv.cli("drill-register", "declare", "--model", "x-drill",
                  *[a for i in (1, 2, 3, 4) for a in ("--key", str(srv.data_dir / "signers" / f"exec{i}.key"))],
                  role="executive")
    assert res.returncode == 6 and "must not share weights" in res.stderr, res.stderr
