"""`custos server --dev` in a thread of the test process: a real control plane (SQLite, dev
keys, its gRPC listeners on 127.0.0.1) whose objects a test can reach on its event loop, to
hold a resource or set a knob the config does not expose."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from custos.controlplane.config import ServerConfig
from custos.controlplane.server import ControlPlane, dev_env_lines, prepare_dev
from custos.fs.private import write_private
from tests.servers.custos import DevServer, parse_env_file

T = TypeVar("T")


class ThreadServer:
    """``cert_ttl``: agent certificates of that many seconds (set on the running Custody:
    server.py does not pass the ``[custody] agent_cert_ttl`` setting to it yet)."""

    def __init__(self, data_dir: Path, *, cert_ttl: float | None = None, lease_ttl: float = 3.0) -> None:
        self.cfg = ServerConfig(listen="127.0.0.1:0", data_dir=data_dir, dev=True, lease_ttl=lease_ttl,
                                sweep_interval=0.5)
        if cert_ttl is not None:
            self.cfg.agent_cert_ttl = cert_ttl
        self._cert_ttl = cert_ttl
        self.dev = DevServer(data_dir)
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="custos-server", daemon=True)

    def start(self) -> ThreadServer:
        self._thread.start()
        assert self._ready.wait(30) and self._failed is None, self._failed
        self.dev.env = parse_env_file(self.cfg.data_dir / "dev.env")  # type: ignore[operator]
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` on the server's event loop; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self._failed = exc
            self._ready.set()

    async def _serve(self) -> None:
        prepare_dev(self.cfg)
        self.cp = ControlPlane(self.cfg)
        port = await self.cp.start()
        if self._cert_ttl is not None:
            self.cp.custody.certs.ttl = self._cert_ttl
        self.loop = asyncio.get_running_loop()
        assert self.cfg.data_dir is not None
        write_private(self.cfg.data_dir / "dev.env",
                      ("\n".join(dev_env_lines(self.cfg, port, self.cp.enroll_port)) + "\n").encode())
        self._ready.set()
        await self.cp.wait()

    def stop(self) -> None:
        if hasattr(self, "loop"):
            self.loop.call_soon_threadsafe(self.cp.request_stop)
        self._thread.join(30)
