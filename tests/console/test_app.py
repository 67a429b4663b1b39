"""The console's HTTP API, no control plane: CSRF and origin rules, enrollment, login, sessions, and
bad input answered with a 4xx and a sentence, never a traceback."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from custos.console.app import ConsoleApp, ConsoleConfig
from custos.console.sessions import Challenges, NotLoggedIn, Sessions
from custos.core.webauthn import FLAG_UP, unb64url
from custos.errors import Conflict, InvalidInput
from tests.console.conftest import Page, make_app
from tests.console.softauth import ORIGIN, SoftPasskey


def _enrolled(page: Page, name: str = "alice", role: str = "executive") -> SoftPasskey:
    pk = SoftPasskey()
    token = page.app.users.add_user(name, role)
    resp = page.enroll(token, pk)
    assert resp.status == 200, resp.json()
    return pk


def test_enrollment_logs_in_with_a_strict_session_cookie(page: Page) -> None:
    pk = SoftPasskey()
    token = page.app.users.add_user("alice", "executive")
    resp = page.enroll(token, pk)
    assert resp.status == 200 and resp.json() == {"user": "alice", "role": "executive"}
    cookie = dict(resp.headers)["Set-Cookie"]
    assert cookie.startswith("__Host-custos-session=")
    for attr in ("Path=/", "Secure", "HttpOnly", "SameSite=Strict"):
        assert attr in cookie.split("; "), cookie
    assert page.get("/api/session").json()["user"] == "alice"
    stored = page.app.users.get("alice")
    assert stored is not None and stored.credentials[0].public == pk.public
    assert token not in (page.app.users.path.read_text())  # only the token's hash was ever stored


def test_an_enrollment_token_works_once(page: Page) -> None:
    token = page.app.users.add_user("alice", "executive")
    assert page.enroll(token, SoftPasskey()).status == 200
    again = Page(page.app).post("/api/enroll/begin", {"token": token})
    assert again.status == 404 and "unknown, used or expired" in again.json()["error"]
    assert Page(page.app).post("/api/enroll/begin", {"token": "guess" * 8}).status == 404


def test_an_expired_enrollment_token_is_refused(app: ConsoleApp) -> None:
    token = app.users.add_user("alice", "executive", ttl_s=60, now_ns=time.time_ns() - 120 * 10**9)
    assert Page(app).post("/api/enroll/begin", {"token": token}).status == 404


def test_enrollment_challenges_are_single_use_and_bound_to_their_token(page: Page) -> None:
    t1 = page.app.users.add_user("alice", "executive")
    t2 = page.app.users.add_user("bob", "auditor")
    begin = page.post("/api/enroll/begin", {"token": t1}).json()
    challenge = unb64url(begin["public_key"]["challenge"], "c")
    pk = SoftPasskey()
    # alice's challenge cannot enroll bob's token
    wrong = page.post("/api/enroll/finish", {"challenge_id": begin["challenge_id"], "token": t2,
                                            **pk.register(challenge)})
    assert wrong.status == 400 and "another enrollment" in wrong.json()["error"]
    # ... and it was used up by that attempt
    replay = page.post("/api/enroll/finish", {"challenge_id": begin["challenge_id"], "token": t1,
                                             **pk.register(challenge)})
    assert replay.status == 400 and "unknown, used or expired" in replay.json()["error"]
    assert page.app.users.get("alice").credentials == ()  # type: ignore[union-attr]


def test_a_bad_registration_changes_nothing(page: Page) -> None:
    token = page.app.users.add_user("alice", "executive")
    begin = page.post("/api/enroll/begin", {"token": token}).json()
    pk = SoftPasskey()
    resp = page.post("/api/enroll/finish", {"challenge_id": begin["challenge_id"], "token": token,
                                           **pk.register(unb64url(begin["public_key"]["challenge"], "c"),
                                                         origin="https://evil.test")})
    assert resp.status == 400 and "registration refused" in resp.json()["error"]
    assert page.app.users.get("alice").credentials == ()  # type: ignore[union-attr]
    assert page.enroll(token, pk).status == 200  # the token is still good for a real attempt


def test_login_with_the_passkey_and_a_fresh_challenge(page: Page) -> None:
    pk = _enrolled(page)
    fresh = Page(page.app)
    resp = fresh.login("alice", pk)
    assert resp.status == 200 and fresh.cookie and fresh.cookie != page.cookie


def test_replayed_and_forged_login_assertions_are_refused(page: Page) -> None:
    pk = _enrolled(page)
    eve = Page(page.app)
    begin = eve.post("/api/login/begin", {"user": "alice"}).json()
    a = pk.assertion(unb64url(begin["public_key"]["challenge"], "c"))
    assert eve.post("/api/login/finish", {"challenge_id": begin["challenge_id"], **a}).status == 200
    eve.cookie = None
    # the same assertion again: its challenge was used
    r = eve.post("/api/login/finish", {"challenge_id": begin["challenge_id"], **a})
    assert r.status == 400 and eve.cookie is None
    # the same assertion with a fresh challenge id: not that challenge
    begin2 = eve.post("/api/login/begin", {"user": "alice"}).json()
    r = eve.post("/api/login/finish", {"challenge_id": begin2["challenge_id"], **a})
    assert r.status == 403 and "challenge" in r.json()["error"] and eve.cookie is None
    # a forged one: right challenge, another key
    begin3 = eve.post("/api/login/begin", {"user": "alice"}).json()
    forged = pk.assertion(unb64url(begin3["public_key"]["challenge"], "c"), key=SoftPasskey().key)
    r = eve.post("/api/login/finish", {"challenge_id": begin3["challenge_id"], **forged})
    assert r.status == 403 and "does not verify" in r.json()["error"]
    # no user presence
    assert eve.login("alice", pk, flags=FLAG_UP).status == 403
    assert eve.cookie is None


def test_a_passkey_logs_in_only_its_own_user(page: Page) -> None:
    alice = _enrolled(page, "alice")
    _enrolled(Page(page.app), "bob", "auditor")
    eve = Page(page.app)
    r = eve.login("bob", alice)
    assert r.status == 403 and "not registered for that user" in r.json()["error"]
    # an unknown user gets the same shape of answer as a known one
    unknown = eve.post("/api/login/begin", {"user": "mallory"}).json()
    assert len(unknown["public_key"]["allowCredentials"]) == 1
    assert eve.login("mallory", alice).status == 403


def test_a_cloned_passkey_is_caught_by_its_counter(page: Page) -> None:
    pk = _enrolled(page)
    assert Page(page.app).login("alice", pk, bump=5).status == 200
    r = Page(page.app).login("alice", pk, bump=-3)  # a clone a few signatures behind
    assert r.status == 403 and "counter" in r.json()["error"]


@pytest.mark.parametrize(("headers", "status", "why"), [
    ({"origin": None}, 403, "cross-origin"),
    ({"origin": "https://evil.test"}, 403, "cross-origin"),
    ({"origin": "null"}, 403, "cross-origin"),
    ({"origin": "https://localhost:8444"}, 403, "cross-origin"),
    ({"origin": "http://localhost:8443"}, 403, "cross-origin"),
    ({"content-type": "text/plain"}, 415, "application/json"),
    ({"content-type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ({"sec-fetch-site": "cross-site"}, 403, "cross-site"),
    ({"host": "evil.test"}, 400, "answers to"),
    ({"host": "127.0.0.1:8443"}, 400, "answers to"),
])
def test_csrf_and_origin_rules_on_every_post(page: Page, headers: dict[str, str], status: int, why: str) -> None:
    _enrolled(page)
    for path in ("/api/logout", "/api/login/begin", "/api/orders/" + "a" * 64 + "/sign", "/api/audit/verify",
                 "/api/signers/rotations"):
        r = page.request("POST", path, {"user": "alice"}, headers=headers)
        assert r.status == status and why in r.json()["error"], (path, r.json())
    assert page.get("/api/session").json()["user"] == "alice"  # the session survived every attempt


def test_pages_need_a_live_session(app: ConsoleApp) -> None:
    anon = Page(app)
    for path in ("/api/fleet", "/api/orders", "/api/orders/" + "a" * 64, "/api/incidents", "/api/access",
                 "/api/signers"):
        r = anon.get(path)
        assert r.status == 401 and "not logged in" in r.json()["error"], path
    anon.cookie = "forged-session-token"
    assert anon.get("/api/fleet").status == 401
    assert anon.get("/api/session").json()["user"] is None


def test_logout_removal_and_expiry_end_sessions(page: Page) -> None:
    _enrolled(page)
    assert page.get("/api/fleet").status == 503  # logged in; no control plane behind this app
    cookie = page.cookie
    page.post("/api/logout")
    page.cookie = cookie
    assert page.get("/api/fleet").status == 401
    # removing the user ends the sessions they had
    pk = SoftPasskey()
    token = page.app.users.add_user("bob", "auditor")
    bob = Page(page.app)
    assert bob.enroll(token, pk).status == 200
    page.app.users.remove_user("bob")
    assert bob.get("/api/fleet").status == 401


def test_sessions_expire_idle_and_absolute() -> None:
    s = Sessions(idle_s=10, max_s=100)
    t = s.create("alice", "executive", now=0)
    assert s.get(t, now=9).user == "alice"
    with pytest.raises(NotLoggedIn):
        s.get(t, now=20)
    t = s.create("alice", "executive", now=0)
    for now in range(5, 100, 5):
        s.get(t, now=now)
    with pytest.raises(NotLoggedIn):
        s.get(t, now=101)


def test_challenges_expire_and_do_not_cross_purposes() -> None:
    c = Challenges(ttl_s=10)
    cid, _ = c.issue("login", "alice", now=0)
    with pytest.raises(InvalidInput):
        c.take(cid, "enroll", now=1)  # taken (and gone) even though of the wrong purpose
    with pytest.raises(InvalidInput):
        c.take(cid, "login", now=1)
    cid, _ = c.issue("login", "alice", now=0)
    with pytest.raises(InvalidInput):
        c.take(cid, "login", now=11)


def test_roles_the_console_enforces_before_the_control_plane(page: Page) -> None:
    _enrolled(page, "audrey", "auditor")
    r = page.post("/api/orders/" + "a" * 64 + "/sign", {"credential_id": "AA"})
    assert r.status == 403 and "executive" in r.json()["error"]
    assert page.post("/api/signers/rotations", {"credential_id": "AA"}).status == 403
    exec_page = Page(page.app)
    _enrolled(exec_page, "alice", "executive")
    assert exec_page.post("/api/audit/verify").status == 403


BAD_BODIES = [b"", b"[]", b"null", b"not json", b'{"user": 5}', b'{"user": ""}', b'{"token": ["x"]}',
              b'{"challenge_id": 1}', b'{"challenge_id": "x", "credential_id": "!!"}', b"{" * 10000,
              json.dumps({"user": "a" * 100000}).encode()]


@pytest.mark.parametrize("raw", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_bad_input_gets_a_4xx_and_a_sentence(page: Page, raw: bytes) -> None:
    for path in ("/api/login/begin", "/api/login/finish", "/api/enroll/begin", "/api/enroll/finish"):
        r = page.request("POST", path, raw=raw)
        assert 400 <= r.status < 500, (path, raw[:40], r.status, r.body[:200])
        err = r.json()["error"]
        assert err and "Traceback" not in err


def test_random_requests_never_crash_the_console(page: Page) -> None:
    _enrolled(page)
    rng = random.Random(7)
    paths = ["/", "/index.html", "/static/app.js", "/static/../users.json", "/static/%2e%2e/x", "/api/", "/api/orders/",
             "/api/orders/zz", "/api/orders/" + "a" * 63 + "/sign", "/api/signers/rotations/" + "0" * 64,
             "/api/signers/rotations/" + "0" * 64 + "/set", "/../../etc/passwd", "/api/session?x=1", "//api/fleet"]
    for _ in range(300):
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "OPTIONS"])
        path = rng.choice(paths) + rng.choice(["", "/", "?a=b", "#x"])
        body = rng.choice([b"", b"{}", b'{"text": "x"}', rng.randbytes(rng.randrange(64))])
        r = page.request(method, path, raw=body)
        assert r.status in (200, 204, 400, 401, 403, 404, 405, 409, 413, 415, 422, 503), (method, path, r.status)
        if r.content_type == "application/json":
            assert "Traceback" not in r.body.decode()


def test_static_pages_carry_a_strict_policy(page: Page) -> None:
    r = page.get("/")
    assert r.status == 200 and r.content_type.startswith("text/html")
    headers = dict(r.headers)
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert b"<script src=\"/static/app.js\"" in r.body and b"<script>" not in r.body
    assert page.get("/static/app.js").content_type.startswith("text/javascript")
    assert page.get("/static/users.json").status == 404


@pytest.mark.parametrize(("origin", "rp_id"), [
    ("http://localhost:8443", "localhost"),  # not HTTPS
    ("https://localhost:8443/path", "localhost"),
    ("https://console.example.com", "example.org"),  # the rp id must be the host or a parent of it
    ("https://console.example.com", "Example.com"),
])
def test_the_console_refuses_a_bad_origin_or_rp_id(origin: str, rp_id: str) -> None:
    with pytest.raises(InvalidInput):
        ConsoleConfig(origin=origin, rp_id=rp_id)


def test_users_and_tokens(tmp_path: Path) -> None:
    app = make_app(tmp_path / "c")
    with pytest.raises(InvalidInput):
        app.users.add_user("Alice", "executive")  # not a signer name
    with pytest.raises(InvalidInput):
        app.users.add_user("alice", "admin")
    app.users.add_user("alice", "executive")
    with pytest.raises(Conflict):
        app.users.add_user("alice", "auditor")
    assert app.users.path.stat().st_mode & 0o777 == 0o600
    assert ORIGIN.startswith("https://")
