"""The console's HTTP API, apart from any socket: a request in, a response out.

Rules every request passes before any work (fail closed):

- the ``Host`` header is the console's own authority (no DNS rebinding);
- a ``POST`` carries ``Origin`` equal to the console's origin, and a JSON body
  (``Content-Type: application/json``, at most 64 KiB): a cross-site form or
  fetch is refused before it reaches a handler (CSRF); a ``Sec-Fetch-Site:
  cross-site`` request is refused on every API path;
- everything but the static files, the session probe, login and enrollment needs
  a live session (sessions.py), whose user still exists with the same role;
- signing and preparing rotations need the executive role; the control plane
  then decides the rest with the certificate of the user's role (backend.py).

Bad input gets a 4xx and one clear sentence (``{"error": "..."}``), a failure of the
console itself a 500 without details (they go to the console's log), never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from custos.client import access, hosts, incidents, orders, registry, signersets
from custos.client.audit import load_public_key, verify_audit
from custos.console import ceremonies, rotations, views
from custos.console.backend import ControlPlane
from custos.console.sessions import COOKIE, Challenges, NotLoggedIn, Sessions
from custos.console.users import Credential, User, UserStore, token_hash
from custos.core import webauthn
from custos.core.orders import ORDER_NAMESPACE
from custos.core.reports import time_to_halt_svg
from custos.core.signers import SIGNER_SET_DOMAIN, SIGNER_SET_NAMESPACE, Signature, SignerSet
from custos.errors import (
    BackendUnavailable,
    Conflict,
    CustosError,
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    NotFound,
    Unauthorized,
)

log = logging.getLogger("custos.console")

MAX_BODY = 64 * 1024
MAX_MODELS = 200  # the fleet page's models (each costs a ListCopies call)
MAX_LINEAGE = 50  # ... and those whose lineage it walks
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
_ID = re.compile(r"[0-9a-f]{8,64}")
STATUS_BY_ERROR: list[tuple[type[CustosError], int]] = [
    (IntegrityError, 422), (InvalidInput, 400), (Unauthorized, 403), (NotFound, 404), (Conflict, 409),
    (FailedPrecondition, 409), (BackendUnavailable, 503),
]
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Strict-Transport-Security", "max-age=31536000"),
    ("Permissions-Policy", "publickey-credentials-get=(self), publickey-credentials-create=(self), camera=(), "
     "microphone=(), geolocation=()"),
]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lowercased names
    body: bytes = b""

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == name:
                return v
        return None


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


def _json(status: int, data: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(data, sort_keys=True).encode(), headers=headers or [])


@dataclass(frozen=True)
class ConsoleConfig:
    """``origin`` is the one web origin browsers reach the console at (``https://host[:port]``);
    ``rp_id`` the passkeys' relying-party id (the origin's host or a parent domain of it)."""

    origin: str
    rp_id: str
    rp_name: str = "Custos console"
    require_uv: bool = True
    audit_key: Path | None = None
    audit_state: Path | None = None

    def __post_init__(self) -> None:
        u = urlsplit(self.origin)
        if u.scheme != "https" or not u.hostname or u.path or u.query or u.fragment or u.username:
            raise InvalidInput(f"console origin {self.origin!r}: want https://HOST[:PORT]")
        host = u.hostname
        if not (host == self.rp_id or host.endswith("." + self.rp_id)):
            raise InvalidInput(f"passkey rp id {self.rp_id!r} is not {host} or a parent domain of it")
        webauthn.WebAuthnParams(alg=-7, rp_id=self.rp_id, origins=(self.origin,), user_verification=True,
                                credential_id=b"x")  # the same rules signer keys will apply

    @property
    def authority(self) -> str:
        return urlsplit(self.origin).netloc


def _field(body: dict[str, Any], name: str, *, max_len: int = 4096) -> str:
    v = body.get(name)
    if not isinstance(v, str) or not v or len(v) > max_len:
        raise InvalidInput(f"{name}: a non-empty string of at most {max_len} characters is required")
    return v


def _b64(body: dict[str, Any], name: str, *, max_len: int = 8192) -> bytes:
    return webauthn.unb64url(_field(body, name, max_len=max_len), name)


def _assertion(body: dict[str, Any]) -> webauthn.Assertion:
    try:
        return webauthn.Assertion(_b64(body, "authenticator_data"), _b64(body, "client_data_json"),
                                  _b64(body, "signature"))
    except InvalidInput:
        raise
    except (TypeError, ValueError):
        raise InvalidInput("a malformed assertion") from None


class ConsoleApp:
    """The console: users, sessions, challenges, prepared rotations and the control plane."""

    def __init__(self, cfg: ConsoleConfig, *, users: UserStore, rotation_store: rotations.RotationStore,
                 control_plane: ControlPlane | None, sessions: Sessions | None = None,
                 challenges: Challenges | None = None) -> None:
        self.cfg = cfg
        self.users = users
        self.rotations = rotation_store
        self.cp = control_plane
        self.sessions = sessions or Sessions()
        self.challenges = challenges or Challenges()
        self._decoy = secrets.token_bytes(32)
        get_routes: list[tuple[str, Callable[..., Response]]] = [
            (r"/api/session", self.get_session),
            (r"/api/fleet", self.get_fleet),
            (r"/api/orders", self.get_orders),
            (r"/api/orders/(?P<oid>[0-9a-f]{8,64})", self.get_order),
            (r"/api/orders/(?P<oid>[0-9a-f]{8,64})/progress", self.get_progress),
            (r"/api/orders/(?P<oid>[0-9a-f]{8,64})/plot\.svg", self.get_plot),
            (r"/api/incidents", self.get_incidents),
            (r"/api/access", self.get_access),
            (r"/api/signers", self.get_signers),
            (r"/api/signers/rotations/(?P<rid>[0-9a-f]{64})", self.get_rotation),
            (r"/api/signers/rotations/(?P<rid>[0-9a-f]{64})/set", self.get_rotation_set),
        ]
        post_routes: list[tuple[str, Callable[..., Response]]] = [
            (r"/api/login/begin", self.login_begin),
            (r"/api/login/finish", self.login_finish),
            (r"/api/logout", self.logout),
            (r"/api/enroll/begin", self.enroll_begin),
            (r"/api/enroll/finish", self.enroll_finish),
            (r"/api/orders/(?P<oid>[0-9a-f]{64})/sign", self.sign_order),
            (r"/api/audit/verify", self.verify_audit),
            (r"/api/signers/rotations", self.prepare_rotation),
            (r"/api/signers/rotations/(?P<rid>[0-9a-f]{64})/sign", self.sign_rotation),
            (r"/api/signers/rotations/(?P<rid>[0-9a-f]{64})/signatures", self.add_rotation_signatures),
            (r"/api/signers/rotations/(?P<rid>[0-9a-f]{64})/install", self.install_rotation),
        ]
        self._routes = {"GET": [(re.compile(p), f) for p, f in get_routes],
                        "POST": [(re.compile(p), f) for p, f in post_routes]}
        self._public = {self.get_session, self.login_begin, self.login_finish, self.logout, self.enroll_begin,
                        self.enroll_finish}

    # -- dispatch -----------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        """Answer one request; never raises."""
        try:
            resp = self._dispatch(req)
        except CustosError as exc:
            status = next((s for cls, s in STATUS_BY_ERROR if isinstance(exc, cls)), 500)
            if isinstance(exc, NotLoggedIn):
                status = 401
            resp = _json(status, {"error": str(exc)[:2000]})
        except Exception:
            log.exception("console: unexpected error on %s %s", req.method, req.path.split("?")[0][:200])
            resp = _json(500, {"error": "internal error in the console (see its log)"})
        resp.headers += SECURITY_HEADERS
        if resp.content_type == "application/json" or req.path.startswith("/api/"):
            resp.headers.append(("Cache-Control", "no-store"))
        return resp

    def _dispatch(self, req: Request) -> Response:
        if req.headers.get("host", "") != self.cfg.authority:
            raise InvalidInput(f"this console answers to {self.cfg.authority} only")
        path = req.path.split("?", 1)[0]
        if req.method not in ("GET", "POST"):
            return _json(405, {"error": f"method {req.method[:16]} not allowed"}, [("Allow", "GET, POST")])
        if req.method == "GET" and not path.startswith("/api/"):
            return self._static(path)
        if req.headers.get("sec-fetch-site") == "cross-site":
            raise Unauthorized("cross-site request refused")
        body: dict[str, Any] = {}
        if req.method == "POST":
            if req.headers.get("origin") != self.cfg.origin:
                raise Unauthorized("cross-origin request refused: a POST must come from the console's own pages "
                                   f"(Origin {self.cfg.origin})")
            if req.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
                return _json(415, {"error": "want Content-Type: application/json"})
            if len(req.body) > MAX_BODY:
                return _json(413, {"error": f"request body over {MAX_BODY} bytes"})
            try:
                parsed = json.loads(req.body or b"{}")
            except (ValueError, RecursionError):
                raise InvalidInput("the request body is not JSON") from None
            if not isinstance(parsed, dict):
                raise InvalidInput("the request body must be a JSON object")
            body = parsed
        for pattern, fn in self._routes[req.method]:
            m = pattern.fullmatch(path)
            if m:
                if fn in self._public:
                    return fn(req, body, **m.groupdict())
                session_user = self._user(req)
                return fn(req, body, session_user, **m.groupdict())
        raise NotFound(f"no such page: {path[:100]}")

    def _static(self, path: str) -> Response:
        base = resources.files("custos.console") / "static"
        if path == "/favicon.ico":
            return Response(204, b"", "image/x-icon")
        if path in ("/", "/index.html"):
            return Response(200, (base / "index.html").read_bytes(), "text/html; charset=utf-8")
        name = path.removeprefix("/static/")
        if path.startswith("/static/") and name in STATIC:
            return Response(200, (base / name).read_bytes(), STATIC[name])
        raise NotFound(f"no such page: {path[:100]}")

    def _user(self, req: Request) -> User:
        token = req.cookie(COOKIE)
        s = self.sessions.get(token)
        user = self.users.get(s.user)
        if user is None or user.role != s.role:
            self.sessions.end(token)
            raise NotLoggedIn("not logged in (the user was removed or changed)")
        return user

    def _cp(self, role: str) -> Any:
        if self.cp is None:
            raise BackendUnavailable("this console is not connected to a control plane")
        return self.cp.client(role)

    @staticmethod
    def _need(user: User, *roles: str) -> None:
        if user.role not in roles:
            raise Unauthorized(f"{user.role} users cannot do this here (want {' or '.join(roles)})")

    def _cookie(self, token: str, max_age: int) -> tuple[str, str]:
        return ("Set-Cookie", f"{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}")

    def _login_response(self, user: User) -> Response:
        token = self.sessions.create(user.name, user.role)
        return _json(200, {"user": user.name, "role": user.role},
                     [self._cookie(token, int(self.sessions.max_s))])

    # -- session, login, enrollment ---------------------------------------------

    def get_session(self, req: Request, body: dict[str, Any]) -> Response:
        info: dict[str, Any] = {"origin": self.cfg.origin, "rp_id": self.cfg.rp_id, "user": None}
        try:
            user = self._user(req)
        except NotLoggedIn:
            return _json(200, info)
        info.update(user=user.name, role=user.role,
                    credentials=[{"id": webauthn.b64url(c.credential_id), "alg": c.alg} for c in user.credentials])
        return _json(200, info)

    def login_begin(self, req: Request, body: dict[str, Any]) -> Response:
        name = _field(body, "user", max_len=64)
        user = self.users.get(name)
        if user is not None and user.credentials:
            allow = [webauthn.b64url(c.credential_id) for c in user.credentials]
        else:  # the same answer for an unknown user: a credential id no authenticator holds
            allow = [webauthn.b64url(hmac.digest(self._decoy, name.encode(), "sha256"))]
        cid, nonce = self.challenges.issue("login", name)
        return _json(200, {"challenge_id": cid, "public_key": {
            "challenge": webauthn.b64url(ceremonies.login_challenge(nonce)), "rpId": self.cfg.rp_id,
            "allowCredentials": [{"type": "public-key", "id": a} for a in allow],
            "userVerification": "required" if self.cfg.require_uv else "preferred", "timeout": 120000}})

    def login_finish(self, req: Request, body: dict[str, Any]) -> Response:
        c = self.challenges.take(body.get("challenge_id"), "login")
        cred_id = _b64(body, "credential_id", max_len=2048)
        assertion = _assertion(body)
        user = self.users.get(c.subject)
        cred = user.credential(cred_id) if user is not None else None
        if user is None or cred is None:
            raise Unauthorized("login refused: this passkey is not registered for that user")
        try:
            count = ceremonies.verify_login(assertion=assertion, nonce=c.value, credential_id=cred.credential_id,
                                            alg=cred.alg, public=cred.public, stored_count=cred.sign_count,
                                            origin=self.cfg.origin, rp_id=self.cfg.rp_id,
                                            require_uv=self.cfg.require_uv)
        except ceremonies.CeremonyError as exc:
            raise Unauthorized(f"login refused: {exc}") from None
        self.users.bump_counter(user.name, cred.credential_id, count)
        log.info("console: %s logged in", user.name)
        return self._login_response(user)

    def logout(self, req: Request, body: dict[str, Any]) -> Response:
        self.sessions.end(req.cookie(COOKIE))
        return _json(200, {"user": None}, [self._cookie("", 0)])

    def enroll_begin(self, req: Request, body: dict[str, Any]) -> Response:
        token = _field(body, "token", max_len=200)
        e = self.users.enrollment(token)
        user = self.users.get(e.user)
        if user is None:
            raise NotFound("this enrollment link is unknown, used or expired")
        cid, challenge = self.challenges.issue("enroll", token_hash(token))
        return _json(200, {"challenge_id": cid, "user": user.name, "role": user.role, "public_key": {
            "challenge": webauthn.b64url(challenge), "rp": {"id": self.cfg.rp_id, "name": self.cfg.rp_name},
            "user": {"id": webauthn.b64url(user.handle), "name": user.name, "displayName": user.name},
            "pubKeyCredParams": [{"type": "public-key", "alg": webauthn.COSE_ES256},
                                 {"type": "public-key", "alg": webauthn.COSE_EDDSA}],
            "excludeCredentials": [{"type": "public-key", "id": webauthn.b64url(x.credential_id)}
                                   for x in user.credentials],
            "authenticatorSelection": {"residentKey": "preferred",
                                       "userVerification": "required" if self.cfg.require_uv else "preferred"},
            "attestation": "none", "timeout": 120000}})

    def enroll_finish(self, req: Request, body: dict[str, Any]) -> Response:
        c = self.challenges.take(body.get("challenge_id"), "enroll")
        token = _field(body, "token", max_len=200)
        if not hmac.compare_digest(c.subject, token_hash(token)):
            raise InvalidInput("the challenge was issued for another enrollment")
        alg = body.get("public_key_algorithm")
        if not isinstance(alg, int) or isinstance(alg, bool):
            raise InvalidInput("public_key_algorithm: want the COSE algorithm number (getPublicKeyAlgorithm())")
        try:
            new = ceremonies.verify_registration(
                client_data_json=_b64(body, "client_data_json"), authenticator_data=_b64(body, "authenticator_data"),
                credential_id=_b64(body, "credential_id", max_len=2048), spki=_b64(body, "public_key"),
                spki_alg=alg, challenge=c.value, origin=self.cfg.origin, rp_id=self.cfg.rp_id,
                require_uv=self.cfg.require_uv)
        except ceremonies.CeremonyError as exc:
            raise InvalidInput(f"passkey registration refused: {exc}") from None
        user = self.users.enroll(token, Credential(credential_id=new.credential_id, alg=new.alg, public=new.public,
                                                   sign_count=new.sign_count, created_ns=time.time_ns(),
                                                   user_verified=new.user_verified))
        log.info("console: %s registered a passkey", user.name)
        return self._login_response(user)

    # -- pages ------------------------------------------------------------------

    def get_fleet(self, req: Request, body: dict[str, Any], user: User) -> Response:
        client = self._cp(user.role)
        host_list = [views.host_json(h) for h in hosts.list_hosts(client)]
        models = []
        edges: list[dict[str, str]] = []
        for model in registry.list_models(client)[:MAX_MODELS]:
            copies = registry.list_copies(client, model.name, exclude_derivatives=True)
            models.append(views.model_json(model, copies.copies, artifacts=len(copies.artifact_ids)))
            if copies.artifact_ids and len(models) <= MAX_LINEAGE:
                edges += views.lineage_edges(registry.lineage(client, model.name))
        unique = sorted({(e["parent"], e["child"], e["relation"]) for e in edges})
        return _json(200, {"hosts": host_list, "models": models,
                           "lineage": [{"parent": p, "child": c, "relation": r} for p, c, r in unique]})

    def get_orders(self, req: Request, body: dict[str, Any], user: User) -> Response:
        return _json(200, {"orders": views.sort_orders(orders.list_orders(self._cp(user.role)))})

    def _signer_set(self, client: Any) -> SignerSet:
        return SignerSet.decode(signersets.get_signer_set(client).signer_set)

    def get_order(self, req: Request, body: dict[str, Any], user: User, oid: str) -> Response:
        client = self._cp(user.role)
        info, order = orders.fetch_order(client, oid)
        ss = self._signer_set(client)
        mine = [c.credential_id for c in user.credentials]
        return _json(200, views.order_detail(info, order, ss, mine))

    def _report(self, client: Any, oid: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(orders.report(client, oid, "json").content)
        except ValueError:
            raise BackendUnavailable("the control plane's report is not JSON") from None
        return data

    def get_progress(self, req: Request, body: dict[str, Any], user: User, oid: str) -> Response:
        client = self._cp(user.role)
        info = orders.get_order(client, oid)
        if info.state in ("proposed", "expired", "rejected"):
            return _json(200, {"state": info.state, "summary": views.order_summary(info), "hosts": []})
        out = views.report_json(self._report(client, info.id))
        out["summary"] = views.order_summary(info)
        return _json(200, out)

    def get_plot(self, req: Request, body: dict[str, Any], user: User, oid: str) -> Response:
        client = self._cp(user.role)
        info = orders.get_order(client, oid)
        if info.state in ("proposed", "expired", "rejected"):
            raise FailedPrecondition(f"order {oid[:16]} is {info.state}: nothing halted yet")
        svg = time_to_halt_svg(self._report(client, info.id))
        return Response(200, svg.encode(), "image/svg+xml; charset=utf-8")

    def get_incidents(self, req: Request, body: dict[str, Any], user: User) -> Response:
        items = incidents.list_incidents(self._cp(user.role), include_closed=True)
        return _json(200, {"incidents": [views.incident_json(i) for i in items]})

    def get_access(self, req: Request, body: dict[str, Any], user: User) -> Response:
        grants = access.list_requests(self._cp(user.role))
        return _json(200, {"grants": [views.grant_json(g) for g in grants]})

    def verify_audit(self, req: Request, body: dict[str, Any], user: User) -> Response:
        self._need(user, "auditor", "security-team")
        key = load_public_key(self.cfg.audit_key, "the console's audit key") if self.cfg.audit_key else None
        v = verify_audit(self._cp(user.role), state_file=self.cfg.audit_state, key=key)
        r = v.result
        log.info("console: %s verified the audit log: %s", user.name, "ok" if v else "FAILED")
        return _json(200, {"ok": bool(v), "events": r.events_checked, "checkpoints": r.checkpoints_checked,
                           "head_seq": r.head_seq, "first_bad_seq": r.first_bad_seq, "problems": r.problems[:50],
                           "warnings": v.warnings, "events_after_last_checkpoint": v.events_after_last_checkpoint,
                           "first_use": v.previous is None, "saved": v.saved})

    # -- signing ----------------------------------------------------------------

    def _my_credential(self, user: User, body: dict[str, Any]) -> Credential:
        cred = user.credential(_b64(body, "credential_id", max_len=2048))
        if cred is None:
            raise Unauthorized("that passkey is not one of yours")
        return cred

    def sign_order(self, req: Request, body: dict[str, Any], user: User, oid: str) -> Response:
        """Pass on a passkey assertion over the order (checked here first, then by the control plane)."""
        self._need(user, "executive")
        cred = self._my_credential(user, body)
        assertion = _assertion(body)
        client = self._cp(user.role)
        info, order = orders.fetch_order(client, oid)
        if info.id != oid:
            raise InvalidInput("give the order's full id")
        ss = self._signer_set(client)
        if ss.version != order.signer_set_version:
            raise FailedPrecondition(f"the order is for signer-set version {order.signer_set_version}, the "
                                     f"current one is {ss.version}: it must be proposed again")
        key = next((k for k in ss.keys if k.webauthn is not None and k.webauthn.credential_id == cred.credential_id),
                   None)
        if key is None:
            raise FailedPrecondition("this passkey is not a signer key of the current signer set: add it first "
                                     "(Signers)")
        sig = assertion.encode()
        problem = key.verify(sig, order.signature_input(), namespace=ORDER_NAMESPACE)
        if problem is not None:
            raise IntegrityError(f"the assertion is not a valid signature of this order: {problem}")
        self._counter(user, cred, assertion)
        after = orders.attach(client, oid, [Signature(key_id=key.key_id, sig=sig)])
        if key.key_id not in after.signed_by:
            raise IntegrityError("the control plane did not count the signature: " + "; ".join(after.problems)[:500])
        log.info("console: %s signed order %s with a passkey (%s)", user.name, oid[:16], after.state)
        return _json(200, views.order_summary(after))

    def _counter(self, user: User, cred: Credential, assertion: webauthn.Assertion) -> None:
        try:
            count = ceremonies.check_counter(assertion.authenticator_data, cred.sign_count)
        except ceremonies.CeremonyError as exc:
            raise IntegrityError(str(exc)) from None
        self.users.bump_counter(user.name, cred.credential_id, count)

    # -- the signer set and rotations ---------------------------------------------

    def get_signers(self, req: Request, body: dict[str, Any], user: User) -> Response:
        ss = self._signer_set(self._cp(user.role))
        in_set = {k.webauthn.credential_id for k in ss.keys if k.webauthn is not None}
        return _json(200, {
            "set": views.signer_set_json(ss),
            "pending": [rotations.status(ss, p) for p in self.rotations.pending(ss)],
            "my_credentials": [{"id": webauthn.b64url(c.credential_id), "in_set": c.credential_id in in_set}
                               for c in user.credentials]})

    def prepare_rotation(self, req: Request, body: dict[str, Any], user: User) -> Response:
        """Prepare version n+1 with the caller's passkey as a webauthn signer key named after them."""
        self._need(user, "executive")
        cred = self._my_credential(user, body)
        ss = self._signer_set(self._cp(user.role))
        new, key = rotations.passkey_successor(ss, name=user.name, alg=cred.alg, public=cred.public,
                                               credential_id=cred.credential_id, rp_id=self.cfg.rp_id,
                                               origin=self.cfg.origin, user_verification=self.cfg.require_uv)
        p = self.rotations.add(new, proposed_by=user.name, added_key_id=key.key_id)
        log.info("console: %s prepared signer-set v%d (%s) adding a passkey", user.name, new.version, new.id[:16])
        return self._rotation(ss, p)

    def _rotation(self, current: SignerSet, p: rotations.PendingRotation) -> Response:
        out = rotations.status(current, p)
        out["signable"] = views.signable(p.new_set.signature_input(), SIGNER_SET_DOMAIN)
        out["new_keys"] = [views.key_json(k, k.key_id in {s.key_id for s in p.signatures}) for k in p.new_set.keys]
        return _json(200, out)

    def get_rotation(self, req: Request, body: dict[str, Any], user: User, rid: str) -> Response:
        ss = self._signer_set(self._cp(user.role))
        return self._rotation(ss, self.rotations.get(rid))

    def get_rotation_set(self, req: Request, body: dict[str, Any], user: User, rid: str) -> Response:
        p = self.rotations.get(rid)
        return Response(200, p.set_bytes, "application/octet-stream",
                        [("Content-Disposition", f'attachment; filename="signer-set-v{p.new_set.version}.json"')])

    def sign_rotation(self, req: Request, body: dict[str, Any], user: User, rid: str) -> Response:
        self._need(user, "executive")
        cred = self._my_credential(user, body)
        assertion = _assertion(body)
        ss = self._signer_set(self._cp(user.role))
        p = self.rotations.get(rid)
        new = p.new_set
        key = next((k for k in (*new.keys, *ss.keys) if k.webauthn is not None
                    and k.webauthn.credential_id == cred.credential_id), None)
        if key is None:
            raise FailedPrecondition("this passkey is not a signer key of this rotation")
        sig = Signature(key_id=key.key_id, sig=assertion.encode())
        problem = key.verify(sig.sig, new.signature_input(), namespace=SIGNER_SET_NAMESPACE)
        if problem is not None:
            raise IntegrityError(f"the assertion is not a valid signature of this signer set: {problem}")
        self._counter(user, cred, assertion)
        return self._rotation(ss, self.rotations.add_signatures(rid, [sig]))

    def add_rotation_signatures(self, req: Request, body: dict[str, Any], user: User, rid: str) -> Response:
        self._need(user, "executive")
        sigs = rotations.parse_signature_text(body.get("text"))
        ss = self._signer_set(self._cp(user.role))
        p = self.rotations.get(rid)
        rotations.check_signatures(ss, p.new_set, sigs)
        return self._rotation(ss, self.rotations.add_signatures(rid, sigs))

    def install_rotation(self, req: Request, body: dict[str, Any], user: User, rid: str) -> Response:
        self._need(user, "executive")
        client = self._cp(user.role)
        p = self.rotations.get(rid)
        info = signersets.rotate_signer_set(client, p.set_bytes, list(p.signatures))
        self.rotations.remove(rid)
        ss = SignerSet.decode(info.signer_set)
        log.info("console: %s installed signer-set v%d (%s)", user.name, ss.version, ss.id[:16])
        return _json(200, {"set": views.signer_set_json(ss)})
