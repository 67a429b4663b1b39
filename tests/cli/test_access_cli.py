"""`custos access` against a real dev server process: request, show, approve as another person,
offline approval with ssh-keygen, revoke, policies, approvers, break-glass, identities."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from custos.cli.demo import generate_model
from custos.cli.main import hoist_options
from custos.client.signerkeys import load_private_key
from tests.servers.custos import CUSTOS, DevServer


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("access-cli")).start()
    yield server
    server.stop()


def cli(srv: DevServer, *args: str, identity: str = "", role: str = "security-team",
        check: bool = False) -> subprocess.CompletedProcess[str]:
    """The CLI as a dev identity (``--identity sec2``), or by role."""
    lead = ("--identity", identity) if identity else ()
    return srv.cli(*lead, *args, role=role, check=check)


def refused(res: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    last = [ln for ln in res.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("custos: error:") and needle in last, res.stderr


def push_model(srv: DevServer, tmp_path: Path, name: str, seed: int) -> str:
    srv.cli("model", "register", name, "--training-flops", "3e26", check=True)
    generate_model(tmp_path / name, seed=seed, layers=2, width=32, shards=1)
    return str(json.loads(srv.cli("push", name, str(tmp_path / name), "-o", "json", check=True).stdout)["id"])


def request(srv: DevServer, model: str, *extra: str, reason: str = "restore drill") -> dict[str, Any]:
    out = cli(srv, "access", "request", "--model", model, "--principal", "dev-security-team", "--for", "1h",
              "--reason", reason, "-o", "json", *extra, check=True).stdout
    return dict(json.loads(out))


def key(srv: DevServer, name: str) -> str:
    return str(srv.data_dir / "approvers" / f"{name}.key")


def test_request_show_approve_as_another_person_then_pull(srv: DevServer, tmp_path: Path) -> None:
    art = push_model(srv, tmp_path, "acc-base", 1)
    refused(srv.cli("pull", art, str(tmp_path / "before")), 4, "no active access grant")
    text = cli(srv, "access", "request", "--model", "acc-base", "--principal", "dev-security-team", "--for", "4h",
               "--reason", "restore drill: verify the backup", check=True).stdout
    assert art in text and "restore drill: verify the backup" in text and "principal dev-security-team" in text
    rid = text.split("request id ")[1].split()[0]
    shown = cli(srv, "access", "show", rid[:12], check=True).stdout
    assert art in shown and "reason:     restore drill: verify the backup" in shown
    assert "state:      pending" in shown and "0/1 counted" in shown and "requester:  dev-security-team" in shown
    d = json.loads(cli(srv, "access", "show", rid, "-o", "json", check=True).stdout)
    assert d["verified"] is True and d["artifacts"] == [art] and d["duration_s"] == 4 * 3600
    pending = json.loads(cli(srv, "access", "pending", "-o", "json", check=True).stdout)
    assert pending[-1]["id"] == rid

    # sec1 is the requester (the default dev identity is theirs): never counts, clear error.
    for who in ("", "sec1"):
        res = cli(srv, "access", "approve", rid, "--key", key(srv, "sec1"), identity=who)
        refused(res, 2, "nobody approves their own access")
        assert "restore drill: verify the backup" in res.stderr  # shown what they were about to sign

    res = cli(srv, "access", "approve", rid, "--key", key(srv, "sec2"), identity="sec2", check=True)
    assert art in res.stderr and "grant active until" in res.stdout
    d = json.loads(cli(srv, "access", "show", rid, "-o", "json", check=True).stdout)
    assert d["state"] == "active" and d["counted"] == ["sec2"] and d["not_after_unix_ns"] > 0
    assert [a["principal"] for a in d["approvals"]] == ["sec2"]
    srv.cli("pull", art, str(tmp_path / "after"), check=True)
    active = json.loads(cli(srv, "access", "list", "--state", "active", "--model", "acc-base", "-o", "json",
                            check=True).stdout)
    assert [g["id"] for g in active] == [rid]

    cli(srv, "access", "revoke", rid, "--reason", "restore done", check=True)
    assert json.loads(cli(srv, "access", "show", rid, "-o", "json", check=True).stdout)["state"] == "revoked"
    refused(srv.cli("pull", art, str(tmp_path / "revoked")), 4, "no active access grant")


def test_request_needs_a_grantee_and_a_reason(srv: DevServer, tmp_path: Path) -> None:
    push_model(srv, tmp_path, "acc-args", 2)
    refused(cli(srv, "access", "request", "--model", "acc-args", "--for", "1h", "--reason", "x"), 2,
            "--principal P")
    refused(cli(srv, "access", "request", "--model", "acc-args", "--for", "1h", "--reason", "x",
                "--principal", "a", "--host", "h"), 2, "exactly one")
    refused(cli(srv, "access", "request", "--model", "acc-args", "--principal", "a", "--for", "soon",
                "--reason", "x"), 2, "bad duration")
    refused(cli(srv, "access", "request", "--model", "acc-args", "--principal", "a", "--for", "9h",
                "--reason", "x"), 2, "longer than the policy allows")


def _ssh_keygen() -> str:
    path = shutil.which("ssh-keygen")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("ssh-keygen is required in CI and is missing (apt-get install openssh-client)", pytrace=False)
        pytest.skip("ssh-keygen not installed")
    return path


def test_offline_approval_with_ssh_keygen_then_extend_with_sign_file(srv: DevServer, tmp_path: Path) -> None:
    ssh_keygen = _ssh_keygen()
    art = push_model(srv, tmp_path, "acc-offline", 3)
    rid = request(srv, "acc-offline")["id"]
    # sec2's approver key as an OpenSSH private key file, as ssh-keygen wants it.
    ssh_key = tmp_path / "sec2_ed25519"
    ssh_key.write_bytes(load_private_key(key(srv, "sec2"), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    ssh_key.chmod(0o600)
    exported = tmp_path / "req.bin"
    cli(srv, "access", "export", rid, "--file", str(exported), identity="sec2", check=True)
    assert exported.read_bytes().startswith(b"custos.v1.access-approval\x00")
    # Another namespace (an order's) does not verify for an access request.
    subprocess.run([ssh_keygen, "-Y", "sign", "-n", "custos-order", "-f", str(ssh_key), str(exported)],
                   check=True, capture_output=True)
    refused(cli(srv, "access", "attach", rid, "--sigfile", f"{exported}.sig", identity="sec2"), 2,
            "does not verify")
    Path(f"{exported}.sig").unlink()
    subprocess.run([ssh_keygen, "-Y", "sign", "-n", "custos-access", "-f", str(ssh_key), str(exported)],
                   check=True, capture_output=True)
    res = cli(srv, "access", "attach", rid, "--sigfile", f"{exported}.sig", identity="sec2", check=True)
    assert "grant active until" in res.stdout
    srv.cli("pull", art, str(tmp_path / "pulled"), check=True)
    before = json.loads(cli(srv, "access", "show", rid, "-o", "json", check=True).stdout)["not_after_unix_ns"]

    # An extension: a request with extends=ID, approved offline with sign-file.
    ext = json.loads(cli(srv, "access", "extend", rid, "--for", "2h", "--reason", "the run needs longer", "-o", "json",
                         check=True).stdout)
    assert ext["extends"] == rid and ext["state"] == "pending"
    cli(srv, "access", "export", ext["id"], "--file", str(tmp_path / "ext.bin"), check=True)
    cli(srv, "access", "sign-file", str(tmp_path / "ext.bin"), "--key", key(srv, "sec2"), check=True)
    res = cli(srv, "access", "attach", ext["id"], "--sigfile", str(tmp_path / "ext.bin.sig.json"), identity="sec2",
              check=True)
    assert "extension applied" in res.stdout
    after = json.loads(cli(srv, "access", "show", rid, "-o", "json", check=True).stdout)["not_after_unix_ns"]
    assert after > before


def test_policy_show_and_set(srv: DevServer, tmp_path: Path) -> None:
    push_model(srv, tmp_path, "acc-policy", 4)
    p = json.loads(cli(srv, "access", "policy", "show", "acc-policy", "-o", "json", check=True).stdout)
    assert p["required"] is True and p["approvals"] == 1 and p["covered"] is True and p["is_default"] is True
    assert p["on_expiry"] == "stop"
    # The two-person rule cannot be turned off for a covered model.
    refused(cli(srv, "access", "policy", "set", "acc-policy", "--not-required", role="admin"), 2,
            "must require at least 1 approval")
    refused(cli(srv, "access", "policy", "set", "acc-policy", "--approvals", "0", role="admin"), 2, "approvals")
    refused(cli(srv, "access", "policy", "set", "acc-policy", "--approvals", "2"), 4, "may not call SetPolicy")
    s = json.loads(cli(srv, "access", "policy", "set", "acc-policy", "--approvals", "2", "--max-lifetime", "2h",
                       "--no-derivatives", "--on-expiry", "run", "-o", "json", role="admin", check=True).stdout)
    assert (s["approvals"], s["max_lifetime_s"], s["derivatives"], s["on_expiry"]) == (2, 7200, False, "run")
    assert s["break_glass"] is True and s["required"] is True  # fields not given keep their values
    text = cli(srv, "access", "policy", "show", "acc-policy", check=True).stdout
    assert "2 from security-team" in text and "max lifetime:  2h" in text
    # Uncovered models may opt out.
    srv.cli("model", "register", "acc-small", "--training-flops", "1e20", check=True)
    u = json.loads(cli(srv, "access", "policy", "show", "acc-small", "-o", "json", check=True).stdout)
    assert u["required"] is False and u["covered"] is False


def test_approver_add_and_list(srv: DevServer, tmp_path: Path) -> None:
    approvers = json.loads(cli(srv, "access", "approver", "list", "-o", "json", check=True).stdout)
    assert {a["name"] for a in approvers} >= {"sec1", "sec2"}
    pub = tmp_path / "sec7.pub"
    pub.write_text("ab" * 32 + "\n")
    a = json.loads(cli(srv, "access", "approver", "add", "sec7", "--principal", "sec7", "--key", str(pub),
                       "-o", "json", role="admin", check=True).stdout)
    assert a["name"] == "sec7" and a["principals"] == ["sec7"] and len(a["key_ids"]) == 1
    refused(cli(srv, "access", "approver", "add", "sec7", "--principal", "sec7", "--key", "cd" * 32, role="admin"),
            6, "--replace")
    refused(cli(srv, "access", "approver", "add", "sec8", "--principal", "sec2", "--key", "ef" * 32, role="admin"),
            2, "already approver sec2's")
    a = json.loads(cli(srv, "access", "approver", "add", "sec7", "--principal", "sec7", "--principal", "sec7-laptop",
                       "--key", "cd" * 32, "--replace", "-o", "json", role="admin", check=True).stdout)
    assert a["principals"] == ["sec7", "sec7-laptop"]
    text = cli(srv, "access", "approver", "list", check=True).stdout
    assert "sec7-laptop" in text


def test_break_glass_warns_loudly(srv: DevServer, tmp_path: Path) -> None:
    art = push_model(srv, tmp_path, "acc-glass", 5)
    res = cli(srv, "access", "break-glass", "--model", "acc-glass", "--principal", "dev-security-team", "--for", "30m",
              "--reason", "incident IR-7: weights needed to assess the leak", "--key", key(srv, "sec1"), check=True)
    assert "HIGH-SEVERITY INCIDENT" in res.stderr and "break-glass grant active" in res.stdout
    srv.cli("pull", art, str(tmp_path / "glass"), check=True)
    refused(cli(srv, "access", "break-glass", "--model", "acc-glass", "--principal", "dev-security-team",
                "--for", "2h", "--reason", "too long", "--key", key(srv, "sec1")), 2, "at most")


def test_identity_selection(srv: DevServer) -> None:
    srv.cli("model", "register", "acc-ident", "--training-flops", "3e26", check=True)
    refused(cli(srv, "access", "pending", identity="nobody"), 2, "no identity 'nobody'")
    refused(cli(srv, "access", "pending", identity="../admin"), 2, "bad identity")
    env = srv.client_env()
    env["CUSTOS_IDENTITY"] = "sec2"
    set_policy = ["access", "policy", "set", "acc-ident", "--approvals", "1"]
    # CUSTOS_IDENTITY picks sec2's certificate (security-team: may not set a policy) ...
    res = subprocess.run([*CUSTOS, *set_policy], env=env, capture_output=True, text=True, check=False)
    refused(res, 4, "may not call SetPolicy")
    # ... and a --role flag, before the command or after it, wins over it.
    for argv in (["--role", "admin", *set_policy], [*set_policy, "--role", "admin"]):
        res = subprocess.run([*CUSTOS, *argv], env=env, capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr


def test_hoist_options() -> None:
    assert hoist_options(["--identity", "sec2", "access", "approve", "ID"]) == \
        ["access", "approve", "ID", "--identity", "sec2"]
    assert hoist_options(["-o", "json", "--role=auditor", "run", "--model", "m", "--", "x", "-o"]) == \
        ["run", "--model", "m", "-o", "json", "--role=auditor", "--", "x", "-o"]
    assert hoist_options(["model", "list", "-o", "json"]) == ["model", "list", "-o", "json"]


def test_who_lists_the_grantee_and_the_puller_over_the_wire(srv: DevServer, tmp_path: Path) -> None:
    """`custos access who` against the real server: the active grant's principal, then the plaintext
    copy its pull made; a revoked grant drops out; the local dev keys say they have no Vault policies."""
    art = push_model(srv, tmp_path, "acc-who", 7)
    before = json.loads(cli(srv, "access", "who", "acc-who", "-o", "json", check=True).stdout)
    assert not [h for h in before["holders"] if h["kind"] == "grant"]
    assert any("no Vault policies" in p for p in before["problems"])
    rid = request(srv, "acc-who")["id"]
    cli(srv, "access", "approve", rid, "--key", key(srv, "sec2"), identity="sec2", check=True)
    srv.cli("pull", art, str(tmp_path / "who-copy"), check=True)
    d = json.loads(cli(srv, "access", "who", "acc-who", "-o", "json", role="auditor", check=True).stdout)
    grants = [h for h in d["holders"] if h["kind"] == "grant"]
    assert [(h["principal"], h["grant_id"]) for h in grants] == [("dev-security-team", rid)]
    assert d["principals"] >= 1
    text = cli(srv, "access", "who", "acc-who", check=True).stdout
    assert "dev-security-team" in text and "can obtain plaintext now" in text
    cli(srv, "access", "revoke", rid, "--reason", "done", check=True)
    after = json.loads(cli(srv, "access", "who", "acc-who", "-o", "json", check=True).stdout)
    assert not [h for h in after["holders"] if h["kind"] == "grant"]
    refused(cli(srv, "access", "who", "acc-who", role="agent"), 4, "")
