"""Access grants for tests: request as the dev sec1, approve as sec2, in process over mTLS."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from custos.client import access
from custos.client.session import Client
from custos.client.signerkeys import load_private_key
from custos.v1 import access_pb2


def dev_client(env: dict[str, str], identity: str) -> Client:
    """A client of the dev server described by ``env`` (its dev.env) as the dev identity ``identity``
    (a file pair under CUSTOS_CERT_DIR: security-team, sec1, sec2, executive, admin, ...)."""
    cert_dir = Path(env["CUSTOS_CERT_DIR"])
    return Client.from_env(addr=env["CUSTOS_ADDR"], ca=env["CUSTOS_CA"], cert=str(cert_dir / f"{identity}.pem"),
                           key=str(cert_dir / f"{identity}.key"))


def grant(env: dict[str, str], model: str, *, principal: str = "", hosts: Sequence[str] = (),
          duration_s: int = 3600, artifact: str = "", requester: str = "sec1",
          approvers: Sequence[str] = ("sec2",), reason: str = "test access") -> access_pb2.AccessGrant:
    """An active grant on ``model`` (``principal`` defaults to the default security-team identity)."""
    data_dir = Path(env["CUSTOS_DATA_DIR"])
    if not principal and not hosts:
        principal = "dev-security-team"
    with dev_client(env, requester) as client:
        g = access.request(client, model=model, duration_s=duration_s, reason=reason, artifact=artifact,
                           principal=principal, hosts=hosts)
    for name in approvers:
        with dev_client(env, name) as client:
            g = access.approve(client, g.id, load_private_key(data_dir / "approvers" / f"{name}.key", None))
    return g
