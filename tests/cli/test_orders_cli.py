"""Orders end to end through the CLI against a real dev control plane (no agents):
3-of-5 halt refuses unwraps and suspends the key, a quorum lift restores pulls,
4-of-5 destroy shreds key and ciphertext, and a destroy cannot be lifted."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.custos import DevServer


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("orders-dev")).start()
    yield server
    server.stop()


def weights(root: Path, seed: int) -> Path:
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(random.Random(seed).randbytes(200_000))
    return root


def wait_state(srv: DevServer, oid: str, want: str, timeout: float = 20) -> dict:  # type: ignore[type-arg]
    import time

    deadline = time.monotonic() + timeout
    while True:
        d = json.loads(srv.cli("order", "status", oid, "-o", "json", check=True).stdout)
        if d["state"] == want or time.monotonic() > deadline:
            return d  # type: ignore[no-any-return]
        time.sleep(0.2)


def test_halt_lift_destroy(srv: DevServer, tmp_path: Path) -> None:
    srv.cli("model", "register", "base", "--training-flops", "3e26", check=True)
    srv.cli("model", "register", "chat", "--training-flops", "3e26", check=True)
    base = json.loads(srv.cli("push", "base", str(weights(tmp_path / "b", 1)), "-o", "json", check=True).stdout)
    chat = json.loads(srv.cli("push", "chat", str(weights(tmp_path / "c", 2)), "--parent", base["id"],
                              "--relation", "fine-tune", "-o", "json", check=True).stdout)

    srv.grant("base")  # access to both (derivatives per the default policy), revoked by the halt
    srv.cli("pull", base["id"], str(tmp_path / "granted"), check=True)
    oid = srv.propose("halt", "base")
    d = json.loads(srv.cli("order", "status", oid, "-o", "json", check=True).stdout)
    assert d["models"] == ["base", "chat"] and d["artifacts"] == 2  # derivatives resolved
    assert srv.sign(oid, 1, 2)["state"] == "proposed"
    # The same key twice does not count twice.
    assert srv.sign(oid, 2)["missing"] == 1
    assert srv.sign(oid, 3)["state"] in ("executing", "complete")
    for name, art in (("base", base), ("chat", chat)):
        refused = srv.cli("pull", art["id"], str(tmp_path / f"p-{name}"))
        assert refused.returncode == 6 and "halted" in refused.stderr, refused.stderr
        shown = json.loads(srv.cli("model", "show", name, "-o", "json", check=True).stdout)
        assert shown["state"] == "halted"
    d = wait_state(srv, oid, "complete")
    assert d["state"] == "complete"
    report = json.loads(srv.cli("order", "report", oid, "-o", "json", check=True).stdout)
    assert {c["state"] for c in report["copies"] if c["location_kind"] == "object-store"} == {"key-suspended"}
    md = srv.cli("order", "report", oid, "--png", str(tmp_path / "halt.png"), check=True).stdout
    assert "# Order report: halt base" in md and (tmp_path / "halt.png").read_bytes()[:4] == b"\x89PNG"
    # An executive alone cannot lift it: a lift needs its own quorum.
    lift = srv.propose("lift", "base")
    assert srv.sign(lift, 4, 5)["state"] == "proposed"
    assert srv.cli("pull", base["id"], str(tmp_path / "still-refused")).returncode == 6
    srv.sign(lift, 1)
    wait_state(srv, lift, "complete")
    # A lift does not restore the grants the halt revoked: access is asked for again.
    res = srv.cli("pull", base["id"], str(tmp_path / "after-lift"))
    assert res.returncode == 4 and "no active access grant" in res.stderr, res.stderr
    srv.grant("base")
    srv.cli("pull", base["id"], str(tmp_path / "after-lift"), check=True)

    destroy = srv.propose("destroy", "chat")
    assert srv.sign(destroy, 1, 2, 3)["state"] == "proposed"  # destroy needs 4
    srv.sign(destroy, 4)
    wait_state(srv, destroy, "complete")
    blobs = srv.data_dir / "blobs" / "objects" / "artifacts"
    assert not (blobs / chat["id"]).exists() or not any((blobs / chat["id"]).iterdir())
    assert (blobs / base["id"]).exists()  # the parent was not in the destroy's scope
    gone = srv.cli("pull", chat["id"], str(tmp_path / "gone"))
    assert gone.returncode != 0 and not (tmp_path / "gone").exists()
    # A destroy cannot be lifted.
    res = srv.cli("order", "propose", "--action", "lift", "--model", "chat", "--reason", "undo",
                  role="executive")
    assert res.returncode == 6 and "cannot be lifted" in res.stderr


def test_roles_and_offline_signing(srv: DevServer, tmp_path: Path) -> None:
    srv.cli("model", "register", "offline", "--training-flops", "3e26", "--drill", check=True)
    srv.declare_drills("offline")
    denied = srv.cli("order", "propose", "--action", "halt", "--model", "offline", "--reason", "x")
    assert denied.returncode == 4  # the security team cannot propose orders
    oid = srv.propose("drill", "offline")
    export = tmp_path / "order.bin"
    srv.cli("order", "export", oid, "--file", str(export), role="executive", check=True)
    sig = tmp_path / "sig.json"
    srv.cli("order", "sign-file", str(export), "--key", str(srv.data_dir / "signers" / "exec5.key"),
            "--out", str(sig), check=True)
    d = json.loads(srv.cli("order", "attach", oid, str(sig), "-o", "json", role="executive", check=True).stdout)
    assert len(d["signed_by"]) == 1 and d["state"] == "proposed"
    # A signature over a tampered export is refused: it does not count.
    bad = export.read_bytes().replace(b"drill", b"halt!")
    export.write_bytes(bad)
    res = srv.cli("order", "sign-file", str(export), "--key", str(srv.data_dir / "signers" / "exec4.key"),
                  "--out", str(tmp_path / "bad.json"))
    assert res.returncode == 2
