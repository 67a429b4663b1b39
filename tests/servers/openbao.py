"""Real OpenBao servers for tests: an in-memory dev server and a raft-storage server.

Plain Python (no pytest), so any test or script can start one::

    with OpenBaoDevServer(workdir) as bao:
        client = hvac.Client(url=bao.address, token=bao.root_token)

Each server runs ``bao`` on 127.0.0.1 and free ports, in its own process group (stop()
kills the group), with HOME pointed at its work directory so nothing is written
elsewhere, and its output in ``<workdir>/openbao.log`` (see :meth:`log_tail`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.servers.ports import free_port

__all__ = [
    "JwtIssuer",
    "OpenBaoDevServer",
    "OpenBaoNotFound",
    "OpenBaoRaftServer",
    "OpenBaoStartError",
    "RaftInit",
    "find_bao",
    "load_policies",
    "setup_approle",
    "setup_jwt",
]

_START_ATTEMPTS = 3  # a free port can be taken between choosing and binding it


class OpenBaoNotFound(FileNotFoundError):
    """No ``bao`` binary on PATH or next to the Python interpreter."""


class OpenBaoStartError(RuntimeError):
    """The server exited or did not become ready; the message ends with its log."""


def find_bao() -> str | None:
    """Path of the ``bao`` binary: on PATH, else next to ``sys.executable`` (a venv)."""
    found = shutil.which("bao")
    if found:
        return found
    beside = Path(sys.executable).parent / "bao"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


@dataclass(frozen=True)
class RaftInit:
    """What initialising a server returns: the Shamir unseal shares and the root token."""

    keys: tuple[str, ...]
    root_token: str


class _OpenBaoServer:
    """Process handling shared by both kinds of server."""

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        binary: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(
            tempfile.mkdtemp(prefix="custos-openbao-") if workdir is None else workdir
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = binary or find_bao()
        if self.binary is None:
            raise OpenBaoNotFound("no 'bao' binary on PATH or next to the Python interpreter")
        self.start_timeout = start_timeout
        self.log_path = self.workdir / "openbao.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The API address, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- subclass hooks ------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _choose_ports(self) -> None:
        raise NotImplementedError

    def _ready(self, health: dict[str, object] | None) -> bool:
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until it is ready.

        Raises:
            OpenBaoStartError: it exited or was not ready within ``start_timeout``.
        """
        if self.running:
            return
        last: OpenBaoStartError | None = None
        for _ in range(_START_ATTEMPTS):
            self._choose_ports()
            try:
                self._spawn()
                self._wait_ready()
                return
            except OpenBaoStartError as exc:
                self.stop()
                last = exc
        assert last is not None
        raise last

    def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.workdir)  # the dev token helper writes to ~; keep it here
        with self.log_path.open("ab") as log:
            log.write(f"\n==== {' '.join(self._command())}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,  # its own process group, killed as one on stop()
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise OpenBaoStartError(f"bao exited early\n{self.log_tail()}")
            if self._ready(self.health()):
                return
            time.sleep(0.05)
        raise OpenBaoStartError(f"bao not ready after {self.start_timeout:.0f}s\n{self.log_tail()}")

    def health(self) -> dict[str, object] | None:
        """``/v1/sys/health`` as a dict whatever the state, or None if not answering."""
        # Every *code parameter set to 200 so any state answers with its JSON body.
        url = (
            f"{self.address}/v1/sys/health?standbyok=true&perfstandbyok=true"
            "&sealedcode=200&uninitcode=200&standbycode=200&drsecondarycode=200"
        )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback http
                body = json.loads(response.read())
        except (OSError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after 10 s."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # Stray children of the group, if any.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """Kill the server at once (SIGKILL to its process group): no shutdown, no flush."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait(timeout=10)

    def cleanup(self) -> None:
        """Stop, and remove the work directory if this object created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the server's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> _OpenBaoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class OpenBaoDevServer(_OpenBaoServer):
    """``bao server -dev``: in memory, initialised and unsealed, known root token.

    Dev mode also listens on ``port + 1`` for cluster traffic.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        binary: str | None = None,
        root_token: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(workdir, binary=binary, start_timeout=start_timeout)
        self.root_token = root_token or f"root-{secrets.token_hex(12)}"

    def _choose_ports(self) -> None:
        self.port = free_port()

    def _command(self) -> list[str]:
        assert self.binary is not None
        return [
            self.binary,
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            f"-dev-root-token-id={self.root_token}",
            "-dev-no-store-token",
        ]

    def _ready(self, health: dict[str, object] | None) -> bool:
        return (
            health is not None
            and health.get("initialized") is True
            and health.get("sealed") is False
            and health.get("standby") is False
        )


class OpenBaoRaftServer(_OpenBaoServer):
    """A one-node server with integrated (raft) storage in ``<workdir>/raft``.

    ``start()`` returns once the API answers; the server is then uninitialised (first
    start) or sealed (restart). Use :meth:`initialize`, :meth:`unseal` and
    :meth:`wait_active`. The ports are kept across stop()/start() so the raft node's
    recorded address stays valid.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        binary: str | None = None,
        node_id: str = "custos-test-1",
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(workdir, binary=binary, start_timeout=start_timeout)
        self.node_id = node_id
        self.cluster_port = 0
        self.root_token: str | None = None
        self.config_path = self.workdir / "openbao.hcl"
        self._ports_fixed = False

    def _choose_ports(self) -> None:
        if not self._ports_fixed:
            self.port = free_port()
            self.cluster_port = free_port()
        self._write_config()

    def _write_config(self) -> None:
        raft_dir = self.workdir / "raft"
        raft_dir.mkdir(mode=0o700, exist_ok=True)
        self.config_path.write_text(
            f"""\
storage "raft" {{
  path = "{raft_dir}"
  node_id = "{self.node_id}"
  performance_multiplier = 1
}}

listener "tcp" {{
  address = "127.0.0.1:{self.port}"
  cluster_address = "127.0.0.1:{self.cluster_port}"
  tls_disable = true
}}

api_addr = "http://127.0.0.1:{self.port}"
cluster_addr = "https://127.0.0.1:{self.cluster_port}"
disable_mlock = true
ui = false
"""
        )

    def _command(self) -> list[str]:
        assert self.binary is not None
        return [self.binary, "server", f"-config={self.config_path}"]

    def _ready(self, health: dict[str, object] | None) -> bool:
        if health is not None:
            self._ports_fixed = True  # it bound them: keep them for restarts
        return health is not None

    def initialize(self, *, shares: int = 5, threshold: int = 3) -> RaftInit:
        """Initialise with Shamir shares; remembers the root token.

        Raises:
            hvac.exceptions.VaultError: the server refused (e.g. already initialised).
        """
        import hvac  # here, so that importing this module needs no third-party package

        result = hvac.Client(url=self.address).sys.initialize(
            secret_shares=shares, secret_threshold=threshold
        )
        init = RaftInit(keys=tuple(result["keys_base64"]), root_token=result["root_token"])
        self.root_token = init.root_token
        return init

    def unseal(self, keys: list[str] | tuple[str, ...]) -> dict[str, object]:
        """Submit unseal shares one by one; return the last seal status."""
        import hvac

        client = hvac.Client(url=self.address)
        status: dict[str, object] = {}
        for key in keys:
            status = client.sys.submit_unseal_key(key=key)
        return status

    def wait_active(self, timeout: float = 30.0) -> None:
        """Wait until the node is unsealed and the raft leader (active).

        Raises:
            OpenBaoStartError: not active within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if (
                health is not None
                and health.get("sealed") is False
                and health.get("standby") is False
            ):
                return
            if not self.running:
                raise OpenBaoStartError(f"bao exited\n{self.log_tail()}")
            time.sleep(0.05)
        raise OpenBaoStartError(f"bao not active after {timeout:.0f}s\n{self.log_tail()}")


# -- auth methods, for tests of tokens that expire -------------------------------------------
# Each takes an hvac.Client holding a root token (typed loosely: importing this module needs
# no third-party package).


def load_policies(root: object, policy_dir: Path, names: tuple[str, ...]) -> None:
    """Write ``<policy_dir>/<name>.hcl`` into the server as policy ``name``, for each name."""
    for name in names:
        root.sys.create_or_update_policy(name, (policy_dir / f"{name}.hcl").read_text())  # type: ignore[attr-defined]


def setup_approle(root: object, *, role: str, policies: list[str], token_ttl: str, token_max_ttl: str,
                  mount: str = "approle") -> tuple[str, str]:
    """Enable AppRole at ``mount`` (once) and create ``role`` issuing tokens with only ``policies``
    (no default policy), ``token_ttl`` and ``token_max_ttl`` (e.g. "10s", "20s").
    Returns (role_id, a fresh secret_id)."""
    if f"{mount}/" not in root.sys.list_auth_methods()["data"]:  # type: ignore[attr-defined]
        root.sys.enable_auth_method("approle", path=mount)  # type: ignore[attr-defined]
    approle = root.auth.approle  # type: ignore[attr-defined]
    approle.create_or_update_approle(role, token_policies=policies, token_no_default_policy=True,
                                     token_ttl=token_ttl, token_max_ttl=token_max_ttl, mount_point=mount)
    role_id = approle.read_role_id(role, mount_point=mount)["data"]["role_id"]
    secret_id = approle.generate_secret_id(role, mount_point=mount)["data"]["secret_id"]
    return str(role_id), str(secret_id)


class JwtIssuer:
    """An RS256 JWT issuer whose public key a test registers with OpenBao (as a Kubernetes API
    server's service-account issuer would be)."""

    def __init__(self, issuer: str = "https://kubernetes.test", audience: str = "custos") -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.issuer, self.audience = issuer, audience
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def public_pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def token(self, subject: str, *, lifetime_s: int = 600, audience: str | None = None) -> str:
        """A signed JWT for ``subject``, valid from now for ``lifetime_s`` seconds."""
        import base64

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        now = int(time.time())
        header = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        claims = b64(json.dumps({"iss": self.issuer, "sub": subject, "aud": audience or self.audience,
                                 "iat": now - 1, "nbf": now - 1, "exp": now + lifetime_s}).encode())
        signed = f"{header}.{claims}".encode()
        signature = self._key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{claims}.{b64(signature)}"


def setup_jwt(root: object, issuer: JwtIssuer, *, role: str, subject: str, policies: list[str], token_ttl: str,
              token_max_ttl: str, mount: str = "jwt") -> None:
    """Enable JWT auth at ``mount`` (once) trusting ``issuer``'s key, and create ``role`` for JWTs
    of ``subject`` and the issuer's audience, issuing tokens with only ``policies``."""
    if f"{mount}/" not in root.sys.list_auth_methods()["data"]:  # type: ignore[attr-defined]
        root.sys.enable_auth_method("jwt", path=mount)  # type: ignore[attr-defined]
    jwt = root.auth.jwt  # type: ignore[attr-defined]
    jwt.configure(jwt_validation_pubkeys=[issuer.public_pem], bound_issuer=issuer.issuer, path=mount)
    jwt.create_role(role, role_type="jwt", user_claim="sub", bound_subject=subject,
                    bound_audiences=[issuer.audience], token_policies=policies, token_no_default_policy=True,
                    token_ttl=token_ttl, token_max_ttl=token_max_ttl, allowed_redirect_uris=None, path=mount)
