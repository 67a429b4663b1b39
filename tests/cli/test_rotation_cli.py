"""Signer-set rotation through the control plane: version 2 needs a rotate
threshold of version 1 AND of its own keys; afterwards orders are signed by v2."""

from __future__ import annotations

import json
from pathlib import Path

from tests.servers.custos import DevServer


def test_rotation(tmp_path: Path) -> None:
    srv = DevServer(tmp_path / "d").start()
    try:
        signers = srv.data_dir / "signers"
        new_keys = []
        for i in (6, 7, 8, 9):
            key = tmp_path / f"exec{i}.key"
            srv.cli("signer", "keygen", str(key), "--name", f"exec{i}", "--no-passphrase", check=True)
            new_keys.append(key)
        new_set = tmp_path / "v2.json"
        srv.cli("signer", "new-set", "--out", str(new_set), "--remove", "exec1", "--threshold", "rotate=6",
                *[a for i in (6, 7, 8, 9) for a in ("--add", f"exec{i}={tmp_path / f'exec{i}.pub'}")],
                check=True)

        def sign(key: Path) -> str:
            out = tmp_path / f"{key.stem}.sig.json"
            srv.cli("signer", "sign-set", str(new_set), "--key", str(key), "--out", str(out), check=True)
            return str(out)

        old = [sign(signers / f"exec{i}.key") for i in (2, 3, 4, 5)]
        new = [sign(k) for k in new_keys]
        # Only the old signers: v2's own rotate threshold (6) is not met — the new keys
        # must prove possession.
        res = srv.cli("signer", "rotate", str(new_set), *[a for f in old for a in ("--sig", f)], role="executive")
        assert res.returncode == 2 and "new" in res.stderr.lower(), res.stderr
        # Below the old set's rotate threshold (3 of 4): refused.
        res = srv.cli("signer", "rotate", str(new_set), *[a for f in old[:3] + new for a in ("--sig", f)],
                      role="executive")
        assert res.returncode == 2
        info = json.loads(srv.cli("signer", "show", "-o", "json", check=True).stdout)
        assert info["version"] == 1
        res = srv.cli("signer", "rotate", str(new_set), *[a for f in old + new for a in ("--sig", f)],
                      "-o", "json", role="executive", check=True)
        assert json.loads(res.stdout)["version"] == 2
        info = json.loads(srv.cli("signer", "show", "-o", "json", check=True).stdout)
        assert {k["name"] for k in info["keys"]} == {"exec2", "exec3", "exec4", "exec5", "exec6", "exec7",
                                                      "exec8", "exec9"}
        # A removed signer no longer counts; orders now carry version 2.
        srv.cli("model", "register", "m", "--training-flops", "3e26", check=True)
        oid = json.loads(srv.cli("order", "propose", "--action", "halt", "--model", "m", "--reason", "r",
                                 "-o", "json", role="executive", check=True).stdout)["id"]
        status = json.loads(srv.cli("order", "sign", oid, "--key", str(signers / "exec1.key"), "-o", "json",
                                    role="executive", check=True).stdout)
        assert status["signed_by"] == [] and status["signer_set_version"] == 2
        for key in new_keys[:3]:
            status = json.loads(srv.cli("order", "sign", oid, "--key", str(key), "-o", "json", role="executive",
                                        check=True).stdout)
        assert status["state"] in ("executing", "complete")
    finally:
        srv.stop()
