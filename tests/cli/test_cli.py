"""The CLI against a real dev server process: output, errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from custos.cli.demo import generate_model
from tests.servers.custos import DevServer
from tests.servers.ports import free_port


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("cli-dev")).start()
    yield server
    server.stop()


def one_line_error(res, code: int, needle: str) -> None:  # type: ignore[no-untyped-def]
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert needle in lines[0], lines[0]


def test_register_show_list_json(srv: DevServer, tmp_path: Path) -> None:
    r = srv.cli("model", "register", "cli-base", "--training-flops", "2e26", "-o", "json", check=True)
    m = json.loads(r.stdout)
    assert m["name"] == "cli-base" and m["covered"] is True and m["state"] == "active"
    generate_model(tmp_path / "w", seed=7, layers=2, width=64)
    r = srv.cli("artifact", "register", "cli-base", str(tmp_path / "w"), "-o", "json", check=True)
    art = json.loads(r.stdout)
    assert art["created"] is True and len(art["files"]) == 3
    r = srv.cli("artifact", "register", "cli-base", str(tmp_path / "w"), "-o", "json", check=True)
    assert json.loads(r.stdout)["created"] is False
    shown = json.loads(srv.cli("artifact", "show", art["id"][:10], "-o", "json", check=True).stdout)
    assert shown["id"] == art["id"]
    models = json.loads(srv.cli("model", "list", "-o", "json", check=True).stdout)
    assert "cli-base" in [x["name"] for x in models]
    text = srv.cli("model", "show", "cli-base", check=True).stdout
    assert "covered:     yes" in text and art["id"] in text


def test_derivative_lineage_and_copies(srv: DevServer, tmp_path: Path) -> None:
    srv.cli("model", "register", "lin-base", "--training-flops", "2e26", check=True)
    srv.cli("model", "register", "lin-ft", "--training-flops", "2e26", check=True)
    generate_model(tmp_path / "a", seed=11, layers=2, width=32)
    generate_model(tmp_path / "b", seed=12, layers=2, width=32)
    a = json.loads(srv.cli("artifact", "register", "lin-base", str(tmp_path / "a"), "-o", "json",
                           check=True).stdout)
    b = json.loads(srv.cli("artifact", "register", "lin-ft", str(tmp_path / "b"), "--parent",
                           a["id"][:12], "--relation", "fine-tune", "-o", "json", check=True).stdout)
    lin = json.loads(srv.cli("lineage", "lin-base", "--descendants", "-o", "json", check=True).stdout)
    assert {"parent": a["id"], "child": b["id"], "relation": "fine-tune"} in lin["edges"]
    up = json.loads(srv.cli("lineage", b["id"], "--ancestors", "-o", "json", check=True).stdout)
    assert a["id"] in [n["artifact_id"] for n in up["nodes"]]
    tree = srv.cli("lineage", "lin-base", check=True).stdout
    assert "[fine-tune]" in tree and "lin-ft" in tree
    listed = json.loads(srv.cli("artifact", "list", "--model", "lin-ft", "-o", "json", check=True).stdout)
    assert [x["id"] for x in listed] == [b["id"]] and listed[0]["parents"][0]["relation"] == "fine-tune"
    every = json.loads(srv.cli("artifact", "list", "-o", "json", check=True).stdout)
    assert {a["id"], b["id"]} <= {x["id"] for x in every}
    assert b["id"][:16] in srv.cli("artifact", "list", check=True).stdout
    assert srv.cli("artifact", "register", "lin-ft", str(tmp_path / "b"), "-o", "id", check=True).stdout.strip() \
        == b["id"], "-o id prints only the id"
    one_line_error(srv.cli("artifact", "list", "--model", "no-such-model"), 3, "no-such-model")
    copies = json.loads(srv.cli("copies", "lin-base", "-o", "json", check=True).stdout)
    assert set(copies["models"]) == {"lin-base", "lin-ft"}
    assert {c["artifact_id"] for c in copies["copies"]} == {a["id"], b["id"]}
    assert all(c["form"] == "plaintext" for c in copies["copies"])


def test_audit_list_and_verify(srv: DevServer) -> None:
    srv.cli("model", "register", "audited", "--training-flops", "1", check=True)
    events = json.loads(srv.cli("audit", "list", "-o", "json", check=True).stdout)
    assert any(e["object"] == "model/audited" and e["principal"] == "dev-security-team"
               for e in events)
    v = json.loads(srv.cli("audit", "verify", "-o", "json", role="auditor", check=True).stdout)
    assert v["ok"] is True and v["events"] == len(events) and v["warnings"] == []


def test_unknown_model(srv: DevServer) -> None:
    one_line_error(srv.cli("model", "show", "no-such-model"), 3, "not found")
    one_line_error(srv.cli("copies", "no-such-model"), 3, "not found")


def test_unreadable_dir(srv: DevServer, tmp_path: Path) -> None:
    srv.cli("model", "register", "dirs", "--training-flops", "1", check=True)
    one_line_error(srv.cli("artifact", "register", "dirs", str(tmp_path / "missing")), 2,
                   "missing")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "w.bin").write_bytes(b"x")
    os.chmod(locked / "w.bin", 0)
    try:
        res = srv.cli("artifact", "register", "dirs", str(locked))
        if os.geteuid() != 0:  # root reads anything
            one_line_error(res, 2, "w.bin")
    finally:
        os.chmod(locked / "w.bin", 0o600)


def test_path_attack_from_the_cli(srv: DevServer, tmp_path: Path) -> None:
    srv.cli("model", "register", "attack", "--training-flops", "1", check=True)
    (tmp_path / "secret").write_text("x")
    art = tmp_path / "art"
    art.mkdir()
    (art / "w.bin").write_bytes(b"w")
    (art / "link").symlink_to(tmp_path / "secret")
    one_line_error(srv.cli("artifact", "register", "attack", str(art)), 2, "symlink leaves")
    assert json.loads(srv.cli("model", "show", "attack", "-o", "json", check=True).stdout)["artifacts"] == []


def test_permission_denied(srv: DevServer) -> None:
    one_line_error(srv.cli("model", "register", "x", "--training-flops", "1", role="auditor"), 4,
                   "may not call RegisterModel")
    one_line_error(srv.cli("audit", "list", role="executive"), 4, "may not call ListEvents")


def test_bad_input(srv: DevServer) -> None:
    one_line_error(srv.cli("model", "register", "Bad Name", "--training-flops", "1"), 2,
                   "bad model name")
    one_line_error(srv.cli("model", "register", "ok-name", "--training-flops", "lots"), 2,
                   "--training-flops")
    one_line_error(srv.cli("artifact", "show", "xyz"), 2, "artifact id")
    one_line_error(srv.cli("artifact", "register", "audited", ".", "--parent", "abcdef12",
                           "--relation", "cousin"), 2, "unknown relation")


def test_unreachable_server(srv: DevServer) -> None:
    env_port = free_port()
    res = srv.cli("model", "list", "--addr", f"127.0.0.1:{env_port}", "--timeout", "3")
    one_line_error(res, 5, "cannot reach the control plane")


def test_not_configured(tmp_path: Path) -> None:

    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOS_")}
    res = subprocess.run([sys.executable, "-m", "custos.cli.main", "model", "list"], env=env,
                         capture_output=True, text=True, check=False)
    one_line_error(res, 2, "not configured")


@pytest.mark.parametrize("argv", [
    [b"model", b"register", b"a\xff", b"--training-flops", b"1"],
    [b"host", b"add", b"\xc3\x28"],
    [b"order", b"propose", b"--action", b"halt", b"--model", b"m", b"--reason", b"r\xfe"],
    [b"copies", b"\xed\xa0\x80"],  # an encoded lone surrogate
    [b"pull", b"0" * 12, b"/tmp/\xff"],
], ids=lambda a: b" ".join(a)[:24].decode("latin-1"))
def test_arguments_without_a_utf8_form_are_refused_cleanly(argv: list[bytes]) -> None:
    """Bytes the shell passes that are not UTF-8: exit 2 with a sentence, never a traceback."""

    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOS_")}
    res = subprocess.run([sys.executable.encode(), b"-m", b"custos.cli.main", *argv], env=env,
                         capture_output=True, timeout=60, check=False)
    assert res.returncode == 2, res.stderr
    assert b"not valid UTF-8" in res.stderr and b"Traceback" not in res.stderr
