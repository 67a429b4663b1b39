"""The console's HTTP API without sockets: an app over a temporary state directory, and a client
that speaks to it as the console's own pages do (its Host, its Origin, JSON, the session cookie)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from custos.console.app import ConsoleApp, ConsoleConfig, Request, Response
from custos.console.backend import ControlPlane
from custos.console.rotations import RotationStore
from custos.console.sessions import COOKIE
from custos.console.users import UserStore
from custos.core.webauthn import unb64url
from tests.console.softauth import ORIGIN, RP_ID, SoftPasskey

HOST = "localhost:8443"


class Page:
    """What a browser on the console's page sends."""

    def __init__(self, app: ConsoleApp) -> None:
        self.app = app
        self.cookie: str | None = None

    def request(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
                raw: bytes | None = None) -> Response:
        h = {"host": HOST}
        if method == "POST":
            h.update({"origin": ORIGIN, "content-type": "application/json"})
        if self.cookie:
            h["cookie"] = f"{COOKIE}={self.cookie}"
        h.update(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        resp = self.app.handle(Request(method, path, {k: v for k, v in h.items() if v is not None}, data))
        for k, v in resp.headers:
            if k == "Set-Cookie" and v.startswith(COOKIE + "="):
                self.cookie = v.split(";", 1)[0].split("=", 1)[1] or None
        return resp

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, {} if body is None else body, **kw)

    def enroll(self, token: str, pk: SoftPasskey) -> Response:
        begin = self.post("/api/enroll/begin", {"token": token})
        assert begin.status == 200, begin.json()
        challenge = unb64url(begin.json()["public_key"]["challenge"], "challenge")
        return self.post("/api/enroll/finish", {"challenge_id": begin.json()["challenge_id"], "token": token,
                                                **pk.register(challenge)})

    def login(self, user: str, pk: SoftPasskey, **kw: Any) -> Response:
        begin = self.post("/api/login/begin", {"user": user})
        assert begin.status == 200, begin.json()
        challenge = unb64url(begin.json()["public_key"]["challenge"], "challenge")
        return self.post("/api/login/finish", {"challenge_id": begin.json()["challenge_id"],
                                               **pk.assertion(challenge, **kw)})


def make_app(state: Path, control_plane: ControlPlane | None = None, origin: str = ORIGIN) -> ConsoleApp:
    return ConsoleApp(ConsoleConfig(origin=origin, rp_id=RP_ID, audit_state=state / "audit-state.json"),
                      users=UserStore(state / "users.json"), rotation_store=RotationStore(state / "rotations.json"),
                      control_plane=control_plane)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[ConsoleApp]:
    yield make_app(tmp_path / "console")


@pytest.fixture
def page(app: ConsoleApp) -> Page:
    return Page(app)
