"""`custos audit verify` against a real dev server whose SQLite store an attacker rewrites.

The server runs with a long checkpoint interval: its checkpoints come from graceful stops,
so each test knows where they are."""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from custos.core.audit_chain import GENESIS_HASH, TrustedState, event_hash
from custos.core.canonical import decode_canonical, encode_canonical
from tests.cli.test_cli import one_line_error
from tests.servers.custos import DevServer


@pytest.fixture
def srv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DevServer]:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the default state lives here
    server = DevServer(tmp_path / "d", extra=["--checkpoint-interval", "3600"]).start()
    yield server
    server.stop()


def settle(srv: DevServer) -> None:
    """Restart: a graceful stop signs a checkpoint over the head."""
    assert srv.stop() == 0, srv.log()
    srv.start()


def register(srv: DevServer, *names: str) -> None:
    for name in names:
        srv.cli("model", "register", name, "--training-flops", "1", check=True)


def verify(srv: DevServer, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    res = srv.cli("audit", "verify", "-o", "json", *args)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout)


def rewrite_store(srv: DevServer, *, edit_seq: int | None = None, drop_checkpoints: bool = False) -> None:
    """As an attacker with the SQLite file (server stopped): edit an event, recompute the whole chain
    and the head, and delete every checkpoint."""
    db = sqlite3.connect(srv.data_dir / "custos.db", isolation_level=None)
    rows = db.execute("SELECT key, value FROM kv WHERE key LIKE 'audit/events/%' ORDER BY key").fetchall()
    rev = db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0] + 1
    prev = GENESIS_HASH
    for key, value in rows:
        rec = decode_canonical(value)["event"]
        rec["prev"] = prev
        if rec["seq"] == edit_seq:
            rec["principal"] = "mallory"
        prev = event_hash(rec)
        db.execute("UPDATE kv SET value = ?, mod_revision = ? WHERE key = ?",
                   (encode_canonical({"event": rec, "hash": prev}), rev, key))
    db.execute("UPDATE kv SET value = ?, mod_revision = ? WHERE key = 'audit/head'",
               (encode_canonical({"hash": prev, "seq": len(rows)}), rev))
    if drop_checkpoints:
        db.execute("DELETE FROM kv WHERE key LIKE 'audit/checkpoint%'")
    db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
    db.close()


def test_first_use_is_said_and_later_runs_must_extend_it(srv: DevServer, tmp_path: Path) -> None:
    register(srv, "a1")
    settle(srv)
    res = srv.cli("audit", "verify", check=True)
    state_dir = tmp_path / "state" / "custos" / "audit"
    [state_file] = state_dir.glob("*.json")
    assert "first use: no trusted state in" in res.stdout and str(state_file) in res.stdout
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600 and stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    state = TrustedState.decode(state_file.read_bytes())
    assert f"trusting this log and key {state.key_id}" in res.stdout
    pub = (srv.data_dir / "audit-signing.pub").read_text()
    assert state.key in _raw_hex(pub) and state.checkpoint_seq == state.events > 0
    register(srv, "a2")
    settle(srv)
    rc, v = verify(srv)
    assert rc == 0 and v["ok"] and not v["first_use"] and v["state_file"] == str(state_file)
    assert v["trusted_now"]["checkpoint_seq"] > v["trusted_before"]["checkpoint_seq"] == state.checkpoint_seq
    assert "extends the trusted state" in srv.cli("audit", "verify", check=True).stdout


def _raw_hex(pem: str) -> str:

    return serialization.load_pem_public_key(pem.encode()).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def test_edit_rechain_and_delete_every_checkpoint_fails(srv: DevServer, tmp_path: Path) -> None:
    register(srv, "b1", "b2", "b3")
    settle(srv)
    state = tmp_path / "trusted.json"
    assert verify(srv, "--state", str(state))[0] == 0
    trusted = TrustedState.decode(state.read_bytes())
    before = state.read_bytes()
    srv.stop()
    rewrite_store(srv, edit_seq=2, drop_checkpoints=True)
    srv.start()
    res = srv.cli("audit", "verify", "--state", str(state))
    assert res.returncode == 7, res.stdout
    assert f"rollback: trusted checkpoint {trusted.checkpoint_seq} missing: there are no checkpoints" in res.stdout
    assert "left as it was" in res.stdout and state.read_bytes() == before
    # Restarted again, the control plane signs the rewritten head: still not the log that was verified.
    settle(srv)
    rc, v = verify(srv, "--state", str(state))
    assert rc == 7 and v["problems"][0].startswith(f"rewritten: checkpoint {trusted.checkpoint_seq} is not the one")


def test_rollback_to_an_older_copy_of_the_store_fails(srv: DevServer, tmp_path: Path) -> None:
    register(srv, "c1")
    settle(srv)
    srv.stop()
    old = tmp_path / "old"
    old.mkdir()
    for f in srv.data_dir.glob("custos.db*"):
        shutil.copy2(f, old / f.name)
    srv.start()
    register(srv, "c2", "c3")
    settle(srv)
    rc, v = verify(srv)
    assert rc == 0, v
    newest = v["trusted_now"]
    srv.stop()
    for f in srv.data_dir.glob("custos.db*"):
        f.unlink()
    for f in old.iterdir():
        shutil.copy2(f, srv.data_dir / f.name)
    srv.start()
    rc, v = verify(srv)
    assert rc == 7 and v["problems"][0].startswith(f"rollback: trusted checkpoint {newest['checkpoint_seq']} missing")
    assert any(p.startswith("truncated: the log ends at event") for p in v["problems"]), v["problems"]


def test_a_log_re_signed_with_another_key_fails(srv: DevServer, tmp_path: Path) -> None:
    register(srv, "d1", "d2")
    settle(srv)
    old_pub = tmp_path / "old.pub"
    shutil.copy2(srv.data_dir / "audit-signing.pub", old_pub)
    assert verify(srv)[0] == 0
    srv.stop()
    rewrite_store(srv, edit_seq=1, drop_checkpoints=True)
    for name in ("audit-signing.key", "audit-signing.pub"):
        (srv.data_dir / name).unlink()  # the server makes a new key and signs with it
    srv.start()
    settle(srv)
    # dev.env now pins the new key: it is not the one the trusted state pins.
    rc, v = verify(srv)
    assert rc == 7 and any(p.startswith("key changed") for p in v["problems"]), v["problems"]
    # Against the key that was trusted, every checkpoint is forged.
    rc, v = verify(srv, "--key", str(old_pub))
    assert rc == 7 and any("bad signature" in p for p in v["problems"]), v["problems"]
    rc, v = verify(srv, "--key", str(old_pub), "--state", str(tmp_path / "fresh.json"))
    assert rc == 7 and "bad signature" in v["problems"][0]


def test_bad_state_files_and_limits_are_clear_errors(srv: DevServer, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"{not a state")
    # A damaged state is an error, never a silent return to trust on first use.
    one_line_error(srv.cli("audit", "verify", "--state", str(garbage)), 2, "trusted audit state")
    assert garbage.read_bytes() == b"{not a state"
    one_line_error(srv.cli("audit", "verify", "--state", str(tmp_path / "no" / "such" / "dir.json")), 2,
                   "cannot lock the trusted audit state")
    one_line_error(srv.cli("audit", "verify", "--max-events", "0"), 2, "checkpoint policy")
    one_line_error(srv.cli("audit", "verify", "--key", str(garbage)), 2, "cannot read audit key")


def test_list_filters_follow_and_export_for_a_siem(srv: DevServer, tmp_path: Path) -> None:
    import base64
    import subprocess

    from tests.servers.custos import CUSTOS

    register(srv, "f1", "f2")
    rows = json.loads(srv.cli("audit", "list", "--action", "RegisterModel", "-o", "json", check=True).stdout)
    assert [r["object"] for r in rows] == ["model/f1", "model/f2"]
    assert all(r["time"].endswith("Z") and "T" in r["time"] for r in rows), "RFC 3339"
    assert json.loads(srv.cli("audit", "list", "--principal", "nobody*", "-o", "json", check=True).stdout) == []
    assert json.loads(srv.cli("audit", "list", "--object", "model/f2", "-o", "json", check=True).stdout)[0][
        "object"] == "model/f2"
    assert json.loads(srv.cli("audit", "list", "--since", "2099-01-01T00:00:00Z", "-o", "json",
                              check=True).stdout) == []
    assert len(json.loads(srv.cli("audit", "list", "--since", "1h", "-o", "json", check=True).stdout)) >= 2
    one_line_error(srv.cli("audit", "list", "--since", "yesterday"), 2, "want a duration")
    one_line_error(srv.cli("audit", "list", "--since", "2026-01-01T00:00:00"), 2, "time zone")

    follow = subprocess.Popen([*CUSTOS, "audit", "list", "--follow", "--interval", "0.2", "--action",
                               "RegisterModel", "-o", "json"], env=srv.client_env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert follow.stdout is not None
        seen = [json.loads(follow.stdout.readline())["object"] for _ in range(2)]
        assert seen == ["model/f1", "model/f2"]
        register(srv, "f3")
        assert json.loads(follow.stdout.readline())["object"] == "model/f3", "the new event, as it is written"
    finally:
        follow.terminate()
        follow.wait(10)

    settle(srv)
    srv.cli("audit", "verify", check=True)  # the auditor's trusted state: export checks against it
    out = tmp_path / "audit.jsonl"
    srv.cli("audit", "export", "--format", "jsonl", "--out", str(out), check=True)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines and [x["seq"] for x in lines] == list(range(1, len(lines) + 1))
    prev = GENESIS_HASH
    for x in lines:  # the receiver re-verifies the chain from the exported bytes alone
        stored = decode_canonical(base64.b64decode(x["stored_b64"]))
        assert stored["event"]["prev"] == prev and event_hash(stored["event"]) == stored["hash"] == x["hash"]
        prev = x["hash"]
    # A rewritten log is not exported as if it were sound.
    srv.stop()
    rewrite_store(srv, edit_seq=1, drop_checkpoints=True)
    srv.start()
    res = srv.cli("audit", "export")
    assert res.returncode == 7 and "refusing" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert srv.cli("audit", "export", "--unverified", check=True).stdout.count("\n") >= len(lines)
