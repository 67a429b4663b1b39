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
    "OpenBaoDevServer",
    "OpenBaoNotFound",
    "OpenBaoRaftServer",
    "OpenBaoStartError",
    "RaftInit",
    "find_bao",
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
