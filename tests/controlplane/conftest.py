from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.custos import DevServer


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("custos-dev")).start()
    yield server
    server.stop()
