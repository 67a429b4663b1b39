"""One conformance suite for every BlobStore backend: local directory and S3 (real SeaweedFS).

Backend-specific tests (least privilege, raw wire checks, symlink traversal) sit
at the end and are marked as such.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from custos.blobs import MIN_PART_SIZE, BlobStore, LocalBlobStore, PartInfo
from custos.blobs.base import content_md5
from custos.errors import (
    BackendUnavailable,
    Conflict,
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    NotFound,
    Unauthorized,
)
from tests.blobs.conftest import StoreFactory, s3_store_for
from tests.servers.ports import free_port
from tests.servers.seaweedfs import SeaweedFS

KiB = 1024
MiB = 1024 * KiB
PART = MIN_PART_SIZE  # the smallest legal non-last part keeps the suite fast


def rand(n: int) -> bytes:
    return os.urandom(n)


def upload_parts(store: BlobStore, key: str, upload_id: str, chunks: list[bytes]) -> list[PartInfo]:
    return [store.upload_part(key, upload_id, i, c) for i, c in enumerate(chunks, start=1)]


def read_all(store: BlobStore, key: str, part_size: int = MiB) -> bytes:
    return b"".join(store.iter_object(key, part_size))


# -- small objects ------------------------------------------------------------------------


def test_put_head_read_iter_delete(store: BlobStore) -> None:
    data = rand(300 * KiB)
    info = store.put("models/m1/blob", data)
    assert (info.key, info.size) == ("models/m1/blob", len(data))
    assert info.etag

    assert store.head("models/m1/blob") == info
    assert store.exists("models/m1/blob")
    assert store.read_range("models/m1/blob", 0, len(data)) == data
    assert store.read_range("models/m1/blob", 1000, 5) == data[1000:1005]
    assert store.read_range("models/m1/blob", len(data) - 1, 1) == data[-1:]
    assert read_all(store, "models/m1/blob", 100 * KiB) == data

    store.delete("models/m1/blob")
    assert store.head("models/m1/blob") is None
    assert not store.exists("models/m1/blob")
    assert store.list("models/") == []


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_put_accepts_bytes_like(store: BlobStore, wrap: Any) -> None:
    data = rand(10 * KiB)
    store.put("k", wrap(data))
    assert store.read_range("k", 0, len(data)) == data


def test_put_rejects_non_bytes(store: BlobStore) -> None:
    with pytest.raises(InvalidInput):
        store.put("k", "text")  # type: ignore[arg-type]
    assert store.head("k") is None


def test_overwrite_replaces_content_and_etag(store: BlobStore) -> None:
    first = store.put("k", b"one")
    second = store.put("k", b"two!")
    assert second.etag != first.etag
    assert store.head("k") == second
    assert store.read_range("k", 0, 4) == b"two!"
    assert [o.key for o in store.list()] == ["k"]


def test_empty_object(store: BlobStore) -> None:
    info = store.put("empty", b"")
    assert info.size == 0
    assert store.head("empty") == info
    assert list(store.iter_object("empty")) == []
    with pytest.raises(InvalidInput):
        store.read_range("empty", 0, 1)


@pytest.mark.parametrize(
    ("start", "length", "error"),
    [
        (-1, 1, InvalidInput),
        (0, 0, InvalidInput),
        (0, -5, InvalidInput),
        (0, 1001, InvalidInput),  # runs past the end
        (999, 2, InvalidInput),
        (1000, 1, InvalidInput),  # starts at the end
        (5000, 1, InvalidInput),  # starts beyond the end
        (True, 1, InvalidInput),
        (0, 1.5, InvalidInput),
    ],
)
def test_read_range_rejects_bad_ranges(store: BlobStore, start: Any, length: Any, error: type[Exception]) -> None:
    store.put("k", rand(1000))
    with pytest.raises(error):
        store.read_range("k", start, length)


def test_iter_object_pieces(store: BlobStore) -> None:
    data = rand(2 * MiB + 512 * KiB)
    store.put("k", data)
    pieces = list(store.iter_object("k", part_size=MiB))
    assert [len(p) for p in pieces] == [MiB, MiB, 512 * KiB]
    assert b"".join(pieces) == data
    assert b"".join(store.iter_object("k", part_size=len(data) * 2)) == data
    with pytest.raises(InvalidInput):
        store.iter_object("k", part_size=0)


def test_missing_object(store: BlobStore) -> None:
    assert store.head("nope/x") is None
    with pytest.raises(NotFound):
        store.read_range("nope/x", 0, 1)
    # iter_object looks the object up at the call, not at the first next().
    with pytest.raises(NotFound):
        store.iter_object("nope/x")
    store.delete("nope/x")  # not an error


def test_delete_is_idempotent(store: BlobStore) -> None:
    store.put("a/b/c", b"x")
    store.put("a/b/d", b"y")
    store.delete("a/b/c")
    store.delete("a/b/c")
    assert store.head("a/b/c") is None
    assert store.read_range("a/b/d", 0, 1) == b"y"  # the sibling survives


def test_list_by_prefix(store: BlobStore) -> None:
    keys = ["a/1", "a/2", "a/b/3", "ab/4", "b/5", "k", "k/x"]
    for k in keys:
        store.put(k, k.encode())
    assert [o.key for o in store.list()] == sorted(keys)
    assert [o.key for o in store.list("a/")] == ["a/1", "a/2", "a/b/3"]
    assert [o.key for o in store.list("a")] == ["a/1", "a/2", "a/b/3", "ab/4"]
    assert [o.key for o in store.list("a/b")] == ["a/b/3"]
    assert [o.key for o in store.list("k")] == ["k", "k/x"]  # an object and a "directory"
    assert store.list("zz") == []
    assert store.list("zz/") == []
    listed = {o.key: o for o in store.list()}
    for k in keys:
        assert listed[k] == store.head(k)
        assert listed[k].size == len(k)


BAD_KEYS = [
    "",
    "/abs",
    "a/../b",
    "..",
    "../x",
    "a/..",
    ".",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "..\\x",
    "a\x00b",
    "a\nb",
    "a b",
    "caf\u00e9",
    "a~",
    "a%2e%2e",
    "x" * 201,
    "/".join(["abc"] * 300),  # longer than 1024
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_key_validation(store: BlobStore, key: str) -> None:
    calls = [
        lambda: store.put(key, b"x"),
        lambda: store.head(key),
        lambda: store.read_range(key, 0, 1),
        lambda: store.iter_object(key),
        lambda: store.delete(key),
        lambda: store.start_upload(key),
        lambda: store.list_uploads(key),
        lambda: store.list_parts(key, "0" * 32),
        lambda: store.upload_part(key, "0" * 32, 1, b"x"),
        lambda: store.complete_upload(key, "0" * 32, [PartInfo(1, 1, "e")]),
        lambda: store.abort_upload(key, "0" * 32),
    ]
    for call in calls:
        with pytest.raises(InvalidInput):
            call()
    assert store.list() == []


@pytest.mark.parametrize("prefix", ["/", "/a", "../", "a/../", "a//", "a b", "~", 5])
def test_list_prefix_validation(store: BlobStore, prefix: Any) -> None:
    with pytest.raises(InvalidInput):
        store.list(prefix)


@pytest.mark.parametrize("key", ["a", "A-z_0.9=:@,", "x/y/z", "sha256:" + "ab" * 32, "/".join(["s" * 200] * 5)])
def test_good_keys(store: BlobStore, key: str) -> None:
    store.put(key, b"ok")
    assert store.read_range(key, 0, 2) == b"ok"
    assert [o.key for o in store.list(key)] == [key]


# -- multipart uploads --------------------------------------------------------------------


def test_multipart_parallel_out_of_order(store: BlobStore) -> None:
    chunks = [rand(PART), rand(PART), rand(PART), rand(3 * KiB)]
    data = b"".join(chunks)
    key = "artifacts/a1/weights.bin"
    uid = store.start_upload(key)

    # Parts from threads, highest number first.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(store.upload_part, key, uid, n, chunks[n - 1]) for n in (4, 3, 2, 1)]
        infos = [f.result() for f in futures]
    assert sorted(p.number for p in infos) == [1, 2, 3, 4]
    assert store.list_parts(key, uid) == sorted(infos, key=lambda p: p.number)

    # Invisible until complete.
    assert store.head(key) is None
    assert store.list("artifacts/") == []
    with pytest.raises(NotFound):
        store.read_range(key, 0, 1)
    assert store.list_uploads(key) == [uid]

    info = store.complete_upload(key, uid, infos)  # any order is fine
    assert info.size == len(data)
    assert store.head(key) == info
    assert [o.key for o in store.list("artifacts/")] == [key]
    assert read_all(store, key, 4 * MiB) == data
    # A range across the part 1 / part 2 boundary.
    assert store.read_range(key, PART - 10, 20) == data[PART - 10 : PART + 10]
    # The upload is gone once completed.
    assert store.list_uploads(key) == []
    with pytest.raises(NotFound):
        store.list_parts(key, uid)


def test_resume_after_crash(make_store: StoreFactory) -> None:
    chunks = [rand(PART), rand(PART), rand(100 * KiB)]
    key = "artifacts/a2/shard-00001"
    first = make_store()
    uid = first.start_upload(key)
    first.upload_part(key, uid, 1, chunks[0])
    first.upload_part(key, uid, 3, chunks[2])
    first.close()  # killed before part 2 and before recording the upload id
    del first

    second = make_store()
    assert second.head(key) is None
    assert second.list_uploads(key) == [uid]
    stored = second.list_parts(key, uid)
    assert [(p.number, p.size) for p in stored] == [(1, PART), (3, 100 * KiB)]
    missing = {1, 2, 3} - {p.number for p in stored}
    for n in sorted(missing):
        stored.append(second.upload_part(key, uid, n, chunks[n - 1]))
    info = second.complete_upload(key, uid, stored)
    assert info.size == 2 * PART + 100 * KiB
    assert read_all(second, key) == b"".join(chunks)


def test_reuploaded_part_completes_with_the_named_version(store: BlobStore) -> None:
    key = "re/part"
    uid = store.start_upload(key)
    first = store.upload_part(key, uid, 1, rand(PART))
    final = rand(PART)
    info1 = store.upload_part(key, uid, 1, final)
    info2 = store.upload_part(key, uid, 2, b"tail")
    listed = store.list_parts(key, uid)
    assert [p.number for p in listed] == [1, 2]  # one entry per number
    assert listed[0] in (first, info1)
    if store.kind == "local":
        assert listed[0] == info1  # a re-upload replaces the part
    store.complete_upload(key, uid, [info1, info2])
    assert read_all(store, key) == final + b"tail"


def test_single_part_upload(store: BlobStore) -> None:
    uid = store.start_upload("one")
    part = store.upload_part("one", uid, 1, b"small is fine for the last part")
    assert store.complete_upload("one", uid, [part]).size == part.size


def test_complete_rejects_gap_in_part_numbers(store: BlobStore) -> None:
    key = "gap"
    uid = store.start_upload(key)
    p1 = store.upload_part(key, uid, 1, rand(PART))
    p3 = store.upload_part(key, uid, 3, b"tail")
    with pytest.raises(InvalidInput):
        store.complete_upload(key, uid, [p1, p3])
    with pytest.raises(InvalidInput):
        store.complete_upload(key, uid, [p1, p1])
    with pytest.raises(InvalidInput):
        store.complete_upload(key, uid, [])
    assert store.head(key) is None
    assert len(store.list_parts(key, uid)) == 2  # nothing was lost


def test_complete_rejects_part_never_stored(store: BlobStore) -> None:
    # Some S3 servers (SeaweedFS among them) complete with whatever parts they
    # hold; the store must not let an object with a hole become visible.
    key = "hole"
    uid = store.start_upload(key)
    p1 = store.upload_part(key, uid, 1, rand(PART))
    ghost = PartInfo(number=2, size=4, etag=p1.etag)
    with pytest.raises(FailedPrecondition):
        store.complete_upload(key, uid, [p1, ghost])
    assert store.head(key) is None


def test_complete_rejects_unlisted_stored_part(store: BlobStore) -> None:
    key = "extra"
    uid = store.start_upload(key)
    parts = upload_parts(store, key, uid, [rand(PART), rand(PART), b"tail"])
    with pytest.raises(Conflict):
        store.complete_upload(key, uid, parts[:2])
    assert store.head(key) is None


def test_complete_rejects_parts_that_differ_from_the_stored_ones(store: BlobStore) -> None:
    key = "differ"
    uid = store.start_upload(key)
    head = store.upload_part(key, uid, 1, rand(PART))
    tail = store.upload_part(key, uid, 2, b"tail")
    other_etag = hashlib.md5(b"never uploaded", usedforsecurity=False).hexdigest()
    for parts in (
        [PartInfo(1, PART, other_etag), tail],
        [head, PartInfo(2, 5, tail.etag)],
        [head, PartInfo(2, 4, other_etag)],
    ):
        with pytest.raises(IntegrityError):
            store.complete_upload(key, uid, parts)
    assert store.head(key) is None
    assert store.complete_upload(key, uid, [head, tail]).size == PART + 4


def test_complete_rejects_small_middle_part(store: BlobStore) -> None:
    key = "small"
    uid = store.start_upload(key)
    parts = upload_parts(store, key, uid, [rand(KiB), rand(KiB)])
    with pytest.raises(InvalidInput):
        store.complete_upload(key, uid, parts)
    assert store.head(key) is None


def test_abort(store: BlobStore) -> None:
    key = "aborted"
    uid = store.start_upload(key)
    part = store.upload_part(key, uid, 1, rand(KiB))
    store.abort_upload(key, uid)
    with pytest.raises(NotFound):
        store.list_parts(key, uid)
    with pytest.raises(NotFound):
        store.upload_part(key, uid, 2, b"late")
    with pytest.raises(NotFound):
        store.complete_upload(key, uid, [part])
    assert store.head(key) is None
    assert store.list_uploads(key) == []
    store.abort_upload(key, uid)  # idempotent


@pytest.mark.parametrize("upload_id", ["0" * 32, "bogus", "Zm9v.YmFy-_="])
def test_unknown_upload(store: BlobStore, upload_id: str) -> None:
    with pytest.raises(NotFound):
        store.list_parts("k", upload_id)
    with pytest.raises(NotFound):
        store.upload_part("k", upload_id, 1, b"x")
    store.abort_upload("k", upload_id)
    assert store.list() == []


@pytest.mark.parametrize("upload_id", ["", "../../objects", "a/b", "a b", "x" * 1025, None])
def test_malformed_upload_id(store: BlobStore, upload_id: Any) -> None:
    for call in (
        lambda: store.list_parts("k", upload_id),
        lambda: store.upload_part("k", upload_id, 1, b"x"),
        lambda: store.complete_upload("k", upload_id, [PartInfo(1, 1, "e")]),
        lambda: store.abort_upload("k", upload_id),
    ):
        with pytest.raises(InvalidInput):
            call()


def test_upload_id_is_bound_to_its_key(store: BlobStore) -> None:
    uid = store.start_upload("mine")
    with pytest.raises(NotFound):
        store.list_parts("other", uid)
    with pytest.raises(NotFound):
        store.upload_part("other", uid, 1, b"x")
    assert store.list_parts("mine", uid) == []


def test_list_uploads_finds_every_unfinished_upload(store: BlobStore) -> None:
    u1 = store.start_upload("dup")
    u2 = store.start_upload("dup")
    store.start_upload("dup/longer")
    assert u1 != u2
    assert set(store.list_uploads("dup")) == {u1, u2}
    store.abort_upload("dup", u1)
    assert store.list_uploads("dup") == [u2]


@pytest.mark.parametrize("number", [0, -1, 10_001, True, "1"])
def test_part_number_bounds(store: BlobStore, number: Any) -> None:
    uid = store.start_upload("n")
    with pytest.raises(InvalidInput):
        store.upload_part("n", uid, number, b"x")
    with pytest.raises(InvalidInput):
        store.upload_part("n", uid, 1, b"")
    assert store.list_parts("n", uid) == []


def test_corrupted_part_checksum_is_rejected(store: BlobStore) -> None:
    # The backend hook is what upload_part calls after hashing; hand it a checksum
    # that does not match the bytes, as a corruption in transit would.
    key = "corrupt"
    uid = store.start_upload(key)
    data = rand(64 * KiB)
    with pytest.raises(IntegrityError):
        store._upload_part(key, uid, 1, memoryview(data), content_md5(data + b"!"))
    assert store.list_parts(key, uid) == []  # nothing stored
    with pytest.raises(IntegrityError):
        store._put(key, memoryview(data), content_md5(b"other"))
    assert store.head(key) is None
    # The honest path still works.
    assert store.upload_part(key, uid, 1, data).size == len(data)


def test_streaming_never_mixes_versions(store: BlobStore) -> None:
    old, new = rand(4 * 64 * KiB), rand(4 * 64 * KiB)
    store.put("v", old)
    if store.kind == "s3":
        store.download_concurrency = 1  # type: ignore[attr-defined]  # one GET ahead
    pieces = store.iter_object("v", part_size=64 * KiB)
    got = [next(pieces)]
    store.put("v", new)
    if store.kind == "s3":
        # Later range GETs are pinned to the old ETag with If-Match.
        with pytest.raises(Conflict):
            got.extend(pieces)
    else:
        # The local store reads through the descriptor opened at the call.
        got.extend(pieces)
        assert b"".join(got) == old


# -- S3 only: the real server's checks and the least-privilege identity ---------------------


@pytest.fixture
def s3_store(seaweedfs: SeaweedFS) -> Any:
    store = s3_store_for(seaweedfs, "s3only/")
    yield store
    store.close()


def test_s3_server_rejects_body_tampered_in_transit(s3_store: Any) -> None:
    # Flip a byte of the request body after the Content-MD5 header was computed:
    # the server recomputes it and refuses the part.
    def tamper(request: Any, **_: Any) -> None:
        raw = request.body if isinstance(request.body, bytes) else request.body.read()
        body = bytearray(raw)
        body[100] ^= 0x01
        request.body = bytes(body)

    key = "tampered"
    uid = s3_store.start_upload(key)
    s3_store._client.meta.events.register("before-send.s3.UploadPart", tamper)
    try:
        with pytest.raises(IntegrityError):
            s3_store.upload_part(key, uid, 1, rand(64 * KiB))
    finally:
        s3_store._client.meta.events.unregister("before-send.s3.UploadPart", tamper)
    assert s3_store.list_parts(key, uid) == []
    s3_store.abort_upload(key, uid)


def test_s3_store_sends_content_md5_with_every_body(s3_store: Any) -> None:
    # SeaweedFS does not check the signed payload hash against the body, so the
    # explicit Content-MD5 is what makes the server verify the bytes.
    sent: list[tuple[str, bytes | None]] = []

    def capture(request: Any, event_name: str, **_: Any) -> None:
        sent.append((event_name.rsplit(".", 1)[-1], request.headers.get("Content-MD5")))

    events = s3_store._client.meta.events
    for op in ("PutObject", "UploadPart"):
        events.register(f"before-send.s3.{op}", capture)
    try:
        s3_store.put("md5/small", b"abc")
        uid = s3_store.start_upload("md5/big")
        s3_store.upload_part("md5/big", uid, 1, b"part")
        s3_store.abort_upload("md5/big", uid)
    finally:
        for op in ("PutObject", "UploadPart"):
            events.unregister(f"before-send.s3.{op}", capture)
    expected = [content_md5(b"abc").encode(), content_md5(b"part").encode()]
    assert [op for op, _ in sent] == ["PutObject", "UploadPart"]
    assert [md5 for _, md5 in sent] == expected


def test_s3_server_verifies_content_md5_and_sha256(seaweedfs: SeaweedFS) -> None:
    # What the store relies on (Content-MD5), and the alternative it does not use.
    client = seaweedfs.client(request_checksum_calculation="when_required")
    key = "raw/checksums"
    uid = client.create_multipart_upload(Bucket=seaweedfs.bucket, Key=key)["UploadId"]
    data = rand(16 * KiB)
    wrong_md5 = base64.b64encode(hashlib.md5(data + b"x").digest()).decode()  # noqa: S324
    for header in ({"ContentMD5": wrong_md5}, {"ChecksumSHA256": content_md5(data + b"x")}):
        with pytest.raises(botocore.exceptions.ClientError) as err:
            client.upload_part(Bucket=seaweedfs.bucket, Key=key, UploadId=uid, PartNumber=1, Body=data, **header)
        assert err.value.response["Error"]["Code"] == "BadDigest"
    parts = client.list_parts(Bucket=seaweedfs.bucket, Key=key, UploadId=uid)
    assert parts.get("Parts", []) == []
    client.abort_multipart_upload(Bucket=seaweedfs.bucket, Key=key, UploadId=uid)


def test_s3_least_privilege_identity(seaweedfs: SeaweedFS) -> None:
    other = "custos-other"
    seaweedfs.create_bucket(other)
    seaweedfs.client(seaweedfs.admin).put_object(Bucket=other, Key="secret", Body=b"s")
    custos = seaweedfs.client()

    def denied(call: Any, **kwargs: Any) -> None:
        with pytest.raises(botocore.exceptions.ClientError) as err:
            call(**kwargs)
        assert err.value.response["Error"]["Code"] in ("AccessDenied", "403")

    denied(custos.create_bucket, Bucket="custos-new")
    denied(custos.delete_bucket, Bucket=seaweedfs.bucket)
    denied(custos.delete_bucket, Bucket=other)
    denied(custos.get_object, Bucket=other, Key="secret")
    denied(custos.put_object, Bucket=other, Key="x", Body=b"x")
    denied(custos.delete_object, Bucket=other, Key="secret")
    denied(custos.list_objects_v2, Bucket=other)
    denied(custos.create_multipart_upload, Bucket=other, Key="x")

    # Through the store: denied is Unauthorized, never "absent".
    store = s3_store_for(seaweedfs, "", bucket=other)
    try:
        with pytest.raises(Unauthorized):
            store.head("secret")
        with pytest.raises(Unauthorized):
            store.put("x", b"x")
        with pytest.raises(Unauthorized):
            store.list()
        with pytest.raises(Unauthorized):
            store.delete("secret")
        with pytest.raises(Unauthorized):
            store.check()
    finally:
        store.close()
    assert seaweedfs.client(seaweedfs.admin).get_object(Bucket=other, Key="secret")["Body"].read() == (b"s")


def test_s3_bad_credentials_are_unauthorized(seaweedfs: SeaweedFS) -> None:
    secret = "not-the-secret-" + "z" * 20
    store = s3_store_for(seaweedfs, "", secret_key=secret)
    try:
        with pytest.raises(Unauthorized) as err:
            store.put("k", b"x")
        assert secret not in str(err.value)
        with pytest.raises(Unauthorized):
            store.check()
    finally:
        store.close()


def test_s3_check(s3_store: Any) -> None:
    s3_store.check()


def test_s3_server_down_is_backend_unavailable(seaweedfs: SeaweedFS) -> None:
    store = s3_store_for(
        seaweedfs,
        "",
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        connect_timeout=1.0,
        max_attempts=2,
    )
    try:
        for call in (
            lambda: store.head("k"),
            lambda: store.put("k", b"x"),
            lambda: store.read_range("k", 0, 1),
            lambda: store.start_upload("k"),
            lambda: store.list(),
            lambda: store.delete("k"),
            store.check,
        ):
            with pytest.raises(BackendUnavailable):
                call()
    finally:
        store.close()


def test_s3_listing_paginates(s3_store: Any) -> None:
    s3_store._page_size = 2
    for i in range(5):
        s3_store.put(f"page/{i}", b"x")
    assert [o.key for o in s3_store.list("page/")] == [f"page/{i}" for i in range(5)]
    uid = s3_store.start_upload("page/mp")
    parts = upload_parts(s3_store, "page/mp", uid, [rand(PART)] * 4 + [b"t"])
    assert s3_store.list_parts("page/mp", uid) == parts
    s3_store.abort_upload("page/mp", uid)


# -- local only: the directory on disk ---------------------------------------------------------


def test_local_symlinks_inside_the_store_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim~").write_bytes(b"\0" * 64 + b"precious")
    store = LocalBlobStore(tmp_path / "root")
    objects = tmp_path / "root" / "objects"
    (objects / "evil").symlink_to(outside, target_is_directory=True)
    (objects / "leaf~").symlink_to(outside / "victim~")
    try:
        with pytest.raises(IntegrityError):
            store.put("evil/x", b"data")
        with pytest.raises(IntegrityError):
            store.head("evil/victim")
        with pytest.raises(IntegrityError):
            store.read_range("leaf", 0, 1)
        with pytest.raises(IntegrityError):
            store.delete("evil/victim")
        with pytest.raises(IntegrityError):
            store.head("leaf")
        assert store.list("evil") == []
    finally:
        store.close()
    assert sorted(p.name for p in outside.iterdir()) == ["victim~"]
    assert (outside / "victim~").read_bytes() == b"\0" * 64 + b"precious"


def test_local_files_and_directories_are_private(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with LocalBlobStore(root) as store:
        store.put("a/b/c", b"x")
        uid = store.start_upload("a/d")
        part = store.upload_part("a/d", uid, 1, b"y")
        store.complete_upload("a/d", uid, [part])
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    assert list((root / "tmp").iterdir()) == []
    assert list((root / "uploads").iterdir()) == []


def test_local_rejected_writes_leave_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with LocalBlobStore(root) as store:
        uid = store.start_upload("k")
        with pytest.raises(IntegrityError):
            store._upload_part("k", uid, 1, memoryview(b"abc"), content_md5(b"abd"))
        with pytest.raises(IntegrityError):
            store._put("k", memoryview(b"abc"), content_md5(b"abd"))
    assert list((root / "tmp").iterdir()) == []
    assert list((root / "objects").iterdir()) == []
    assert [p.name for p in (root / "uploads" / uid).iterdir()] == ["key"]


def test_local_delete_prunes_empty_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with LocalBlobStore(root) as store:
        store.put("a/b/c", b"x")
        store.put("a/z", b"y")
        store.delete("a/b/c")
        assert not (root / "objects" / "a" / "b").exists()
        assert (root / "objects" / "a").is_dir()
        store.put("a/b/c", b"again")  # and the directory comes back
        assert store.read_range("a/b/c", 0, 5) == b"again"


def test_local_root_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InvalidInput):
        LocalBlobStore(tmp_path / "file")
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(InvalidInput):
        LocalBlobStore(tmp_path / "link")


def test_local_sweeps_stale_tmp_files_on_open(tmp_path: Path) -> None:
    root = tmp_path / "root"
    LocalBlobStore(root).close()
    old, fresh = root / "tmp" / "old.tmp", root / "tmp" / "fresh.tmp"
    old.write_bytes(b"left by a crash")
    fresh.write_bytes(b"being written by another process")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    LocalBlobStore(root).close()
    assert sorted(p.name for p in (root / "tmp").iterdir()) == ["fresh.tmp"]
