"""`custos console add-user|users|remove-user` and the serve command's refusals, in process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from custos.cli.main import main
from custos.console.users import UserStore, token_hash


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        rc = main(list(args))
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_add_list_remove_users(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "console")
    rc, out, _ = run(capsys, "console", "add-user", "alice", "--role", "executive", "--state-dir", state, "-o", "json")
    assert rc == 0
    d = json.loads(out)
    assert d["user"] == "alice" and d["enrollment_path"] == f"/#/enroll/{d['enrollment_token']}"
    stored = UserStore(Path(state) / "users.json")
    assert stored.enrollment(d["enrollment_token"]).user == "alice"
    assert d["enrollment_token"] not in (Path(state) / "users.json").read_text()
    assert token_hash(d["enrollment_token"]) in (Path(state) / "users.json").read_text()
    rc, out, _ = run(capsys, "console", "users", "--state-dir", state)
    assert rc == 0 and "alice" in out and "executive" in out
    rc, out, _ = run(capsys, "console", "remove-user", "alice", "--state-dir", state)
    assert rc == 0 and "removed console user alice" in out
    assert stored.users() == []


@pytest.mark.parametrize(("args", "rc", "why"), [
    (["console", "add-user", "alice", "--role", "executive"], 2, "--state-dir"),
    (["console", "add-user", "Alice!", "--role", "executive", "--state-dir", "S"], 2, "bad user name"),
    (["console", "add-user", "alice", "--role", "executive", "--ttl", "5s", "--state-dir", "S"], 2, "lifetime"),
    (["console", "remove-user", "nobody", "--state-dir", "S"], 3, "no console user"),
    (["console", "--state-dir", "S"], 2, "--origin, --tls-cert"),
    (["console", "--dev"], 2, "--dev needs --data-dir"),
    (["console", "--dev", "--data-dir", "D"], 2, "dev.env"),
])
def test_refusals_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], rc: int,
                               why: str) -> None:
    args = [str(tmp_path / a) if a in ("S", "D") else a for a in args]
    got, _, err = run(capsys, *args)
    assert got == rc and why in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
