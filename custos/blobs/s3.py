"""The S3 blob store (AWS S3, MinIO, SeaweedFS) on boto3's botocore client.

Integrity on the wire: every ``PutObject`` and ``UploadPart`` carries a
``Content-MD5`` of its body, which the server recomputes and rejects on mismatch
(``BadDigest``, mapped to ``IntegrityError``). Not ``x-amz-checksum-sha256``:
SeaweedFS verifies it too, but an upload created with ``ChecksumAlgorithm=SHA256``
must name every part's SHA-256 in ``CompleteMultipartUpload`` while SeaweedFS's
``ListParts`` does not return them, so an upload resumed after a crash could
never complete. ``Content-MD5`` needs nothing at completion but the ETags that
``ListParts`` returns, and AWS, MinIO and SeaweedFS all verify it. (The SigV4
payload hash botocore signs over plain http is no substitute: SeaweedFS does not
compare it with the body.)
``complete_upload`` is checked against ``ListParts`` before and ``HeadObject``
after (see :meth:`BlobStore.complete_upload`). Ranged reads check the
``Content-Range`` and the body length; streaming reads pin the ETag with
``If-Match`` so a replaced object raises ``Conflict`` instead of mixing versions.

Credentials: an access key and secret key given here, or, when neither is given,
boto3's default chain, resolved when the store is made: the ``AWS_*`` environment
variables (with ``AWS_SESSION_TOKEN``), web identity (``AWS_WEB_IDENTITY_TOKEN_FILE``
and ``AWS_ROLE_ARN``, as EKS injects them), the shared config and credentials files
(``AWS_PROFILE``, ``AWS_CONFIG_FILE``, ``AWS_SHARED_CREDENTIALS_FILE``: static keys,
``credential_process``, SSO, assumed roles), container credentials (ECS, EKS Pod
Identity) and the EC2 instance metadata. Temporary credentials are refreshed by
botocore before they expire, so a long-lived store keeps working.

Retries: botocore's ``standard`` mode (throttling, 5xx and connection errors,
with backoff) plus connect and read timeouts; a body that breaks off mid-read is
fetched again. Errors are mapped to :mod:`custos.errors` in one place,
:func:`map_s3_error`, with messages that carry the operation, key and S3 error
code, never credentials or server-echoed request details.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import re
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NoReturn

import botocore.config
import botocore.exceptions
import botocore.session

from custos.blobs.base import (
    MAX_KEY_LENGTH,
    BlobStore,
    ObjectInfo,
    PartInfo,
    validate_key,
    validate_prefix,
)
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

__all__ = ["S3BlobStore", "map_s3_error"]

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_MULTIPART_ETAG_RE = re.compile(r"-(\d+)$")

_NOT_FOUND = {"NoSuchKey", "NoSuchUpload", "NotFound", "404", "NoSuchVersion"}
_UNAUTHORIZED = {
    "AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "AllAccessDisabled", "AccountProblem", "ExpiredToken", "InvalidToken",
    "InvalidSecurity", "TokenRefreshRequired", "AuthorizationHeaderMalformed",
}  # fmt: skip
_INTEGRITY = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"}
_INVALID = {
    "InvalidRange", "EntityTooSmall", "EntityTooLarge", "InvalidPart", "InvalidPartOrder",
    "InvalidArgument", "KeyTooLongError", "MalformedXML", "InvalidRequest",
}  # fmt: skip
_CONFLICT = {"PreconditionFailed", "412", "OperationAborted", "ConditionalRequestConflict"}


def map_s3_error(exc: Exception, op: str, key: str = "") -> CustosError:
    """Translate a botocore exception into the Custos error for it.

    ``BackendUnavailable`` for connection failures, timeouts and 5xx after
    retries; ``NotFound`` for NoSuchKey/NoSuchUpload/404; ``Unauthorized`` for
    AccessDenied and bad credentials; ``IntegrityError`` for checksum
    mismatches; ``Conflict`` for failed preconditions; ``InvalidInput`` for
    requests S3 calls invalid; ``FailedPrecondition`` for a missing bucket.
    """
    where = f"s3 {op}" + (f" {key!r}" if key else "")
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND:
            return NotFound(f"{where}: {code}")
        if code == "NoSuchBucket":
            return FailedPrecondition(f"{where}: the bucket does not exist")
        if code in _UNAUTHORIZED or status in (401, 403):
            # Server messages for signature errors echo the canonical request; keep them out.
            return Unauthorized(f"{where}: {code or status}")
        if code in _INTEGRITY:
            return IntegrityError(f"{where}: the server rejected the checksum ({code})")
        if code in _CONFLICT:
            return Conflict(f"{where}: {code}")
        if code in _INVALID:
            return InvalidInput(f"{where}: {code}: {err.get('Message', '')}")
        if status == 404:
            return NotFound(f"{where}: {code or status}")
        return BackendUnavailable(f"{where}: unexpected S3 error {code or status}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return Unauthorized(f"{where}: no usable credentials")
    if isinstance(exc, botocore.exceptions.FlexibleChecksumError | botocore.exceptions.ChecksumError):
        return IntegrityError(f"{where}: response checksum mismatch")
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return InvalidInput(f"{where}: {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        # ConnectionError, HTTPClientError (timeouts, closed connections), IncompleteRead...
        return BackendUnavailable(f"{where}: {type(exc).__name__}")
    return BackendUnavailable(f"{where}: {type(exc).__name__}")


_BOTO_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
_BODY_ERRORS = (
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
)


_client_lock = threading.Lock()


@functools.cache
def _botocore_session() -> botocore.session.Session:
    # One session for all stores: its loader caches the S3 service model, which
    # makes a new client ~15x cheaper. Credentials are passed per client.
    return botocore.session.Session()


def _setup_error(exc: botocore.exceptions.BotoCoreError) -> CustosError:
    """The Custos error for a failure to set up a client (config files, credential sources)."""
    if isinstance(exc, botocore.exceptions.ProfileNotFound):
        return InvalidInput(f"S3 credentials: the AWS profile {exc.kwargs.get('profile')!r} does not exist")
    if isinstance(exc, botocore.exceptions.ConfigParseError | botocore.exceptions.PartialCredentialsError
                  | botocore.exceptions.InvalidConfigError):
        return InvalidInput(f"S3 credentials: {exc}")
    # Messages of retrieval errors may quote what a credential source answered: name it only.
    source = getattr(exc, "kwargs", {}).get("provider", "")
    return BackendUnavailable(f"S3 credentials: {type(exc).__name__} {source}".rstrip())


def _chain_session() -> tuple[botocore.session.Session, str]:
    """A fresh session whose credentials come from boto3's default chain, and their source.

    Fresh, so the environment and files are read now (a session caches what it
    resolved); it shares the parsed service models of the static-key session.

    Raises:
        InvalidInput: no credentials anywhere, a profile that does not exist, a
            malformed config or credentials file, half a key pair.
        BackendUnavailable: a credential source (metadata, container endpoint,
            STS, credential_process) failed to answer.
    """
    session = botocore.session.Session()
    try:
        session.register_component("data_loader", _botocore_session().get_component("data_loader"))
        credentials = session.get_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        raise _setup_error(exc) from None
    if credentials is None:
        raise InvalidInput(
            "no S3 credentials: give an access key and secret key, or configure boto3's default chain "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the shared files, web identity, "
            "container or instance metadata)"
        )
    return session, str(getattr(credentials, "method", "") or "default-chain")


def _raise(exc: Exception, op: str, key: str = "") -> NoReturn:
    raise map_s3_error(exc, op, key) from exc


def _etag(value: object) -> str:
    return str(value or "").strip('"')


def _body_bytes(data: memoryview) -> bytes:
    # botocore takes bytes or a file object, not a memoryview; avoid the copy
    # when the view already covers a whole bytes object.
    obj = data.obj
    if isinstance(obj, bytes) and len(obj) == data.nbytes:
        return obj
    return data.tobytes()


class S3BlobStore(BlobStore):
    """Objects in one S3 bucket, optionally under a key prefix.

    Keyword-only configuration; the secret key goes to botocore and is not kept
    on this object. Without ``access_key`` and ``secret_key`` the credentials come
    from boto3's default chain (see the module docstring); ``credential_source``
    says which (``"static"``, ``"env"``, ``"shared-credentials-file"``,
    ``"assume-role-with-web-identity"``, ``"container-role"``, ``"iam-role"``, ...).
    ``max_pool_connections`` should be at least the number of threads uploading
    parts (and ``download_concurrency``).

    Raises:
        InvalidInput: on a bad bucket name, prefix, addressing style or limits,
            half a key pair, or no credentials in the default chain.
        BackendUnavailable: a credential source of the chain did not answer.
    """

    kind = "s3"

    def __init__(
        self,
        *,
        endpoint_url: str | None,
        bucket: str,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        prefix: str = "",
        max_pool_connections: int = 32,
        addressing_style: str = "path",
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        download_concurrency: int = 8,
    ) -> None:
        if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
            raise InvalidInput(f"invalid S3 bucket name {bucket!r}")
        prefix = validate_prefix(prefix)
        if prefix and not prefix.endswith("/"):
            raise InvalidInput("the store prefix must be empty or end with '/'")
        if endpoint_url is not None and not re.match(r"https?://[^/]", str(endpoint_url)):
            raise InvalidInput("endpoint_url must be an http:// or https:// URL")
        if addressing_style not in ("path", "virtual", "auto"):
            raise InvalidInput("addressing_style must be 'path', 'virtual' or 'auto'")
        if (access_key is None) != (secret_key is None) or access_key == "" or secret_key == "":
            raise InvalidInput("give access_key and secret_key together, or neither (boto3's default chain)")
        for name, value in (
            ("max_pool_connections", max_pool_connections),
            ("max_attempts", max_attempts),
            ("download_concurrency", download_concurrency),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"{name} must be a positive int")
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.prefix = prefix
        self.download_concurrency = download_concurrency
        self._max_attempts = max_attempts
        # Page size for ListObjectsV2 / ListParts / ListMultipartUploads (tests lower it).
        self._page_size = 1000
        config = botocore.config.Config(
            region_name=region,
            s3={"addressing_style": addressing_style},
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            # We send our own Content-MD5 on every body; no extra CRC32 on top of it.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_supported",
            # Only the endpoint given here, never one from the environment or ~/.aws.
            ignore_configured_endpoint_urls=True,
            tcp_keepalive=True,
        )
        # Resolved outside the lock: the chain may wait on a metadata endpoint.
        if access_key is None:
            session, self.credential_source = _chain_session()
        else:
            session, self.credential_source = _botocore_session(), "static"
        try:
            # botocore's Session.create_client is not documented thread-safe; clients are.
            with _client_lock:
                self._client: Any = session.create_client(
                    "s3",
                    endpoint_url=endpoint_url,
                    region_name=region,
                    aws_access_key_id=access_key,
                    aws_secret_access_key=secret_key,
                    config=config,
                )
        except botocore.exceptions.BotoCoreError as exc:
            # Even with static keys the session reads AWS_PROFILE and the config file.
            raise _setup_error(exc) from None

    def __repr__(self) -> str:
        return f"S3BlobStore(endpoint_url={self.endpoint_url!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _k(self, key: str) -> str:
        full = self.prefix + key
        if len(full) > MAX_KEY_LENGTH:
            raise InvalidInput(f"object key with the store prefix is longer than {MAX_KEY_LENGTH}")
        return full

    # -- writes --------------------------------------------------------------------------

    def _put(self, key: str, data: memoryview, md5_b64: str) -> ObjectInfo:
        try:
            resp = self._client.put_object(
                Bucket=self.bucket,
                Key=self._k(key),
                Body=_body_bytes(data),
                ContentMD5=md5_b64,
            )
        except _BOTO_ERRORS as exc:
            _raise(exc, "put", key)
        return ObjectInfo(key=key, size=data.nbytes, etag=_etag(resp.get("ETag")))

    def _start_upload(self, key: str) -> str:
        try:
            resp = self._client.create_multipart_upload(Bucket=self.bucket, Key=self._k(key))
        except _BOTO_ERRORS as exc:
            _raise(exc, "start_upload", key)
        return str(resp["UploadId"])

    def _upload_part(self, key: str, upload_id: str, number: int, data: memoryview, md5_b64: str) -> PartInfo:
        try:
            resp = self._client.upload_part(
                Bucket=self.bucket,
                Key=self._k(key),
                UploadId=upload_id,
                PartNumber=number,
                Body=_body_bytes(data),
                ContentMD5=md5_b64,
            )
        except _BOTO_ERRORS as exc:
            _raise(exc, f"upload_part {number}", key)
        return PartInfo(number=number, size=data.nbytes, etag=_etag(resp.get("ETag")))

    def _list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        parts: list[tuple[Any, int, PartInfo]] = []
        try:
            pages = self._client.get_paginator("list_parts").paginate(
                Bucket=self.bucket,
                Key=self._k(key),
                UploadId=upload_id,
                PaginationConfig={"PageSize": self._page_size},
            )
            for page in pages:
                for p in page.get("Parts", []):
                    info = PartInfo(number=int(p["PartNumber"]), size=int(p["Size"]), etag=_etag(p.get("ETag")))
                    parts.append((p.get("LastModified"), len(parts), info))
        except _BOTO_ERRORS as exc:
            _raise(exc, "list_parts", key)
        # SeaweedFS lists every upload of a part number, in no particular order.
        parts.sort(key=lambda item: (item[0] is not None, item[0] or 0, item[1]))
        return [info for _, _, info in parts]

    def _list_uploads(self, key: str) -> builtins.list[str]:
        full = self._k(key)
        found: list[tuple[Any, str]] = []
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": self._page_size}
            )
            for page in pages:
                for u in page.get("Uploads", []):
                    if u.get("Key") == full:
                        found.append((u.get("Initiated"), str(u["UploadId"])))
        except _BOTO_ERRORS as exc:
            _raise(exc, "list_uploads", key)
        found.sort(key=lambda item: (item[0] is None, item[0] or 0))
        return [upload_id for _, upload_id in found]

    def _complete_upload(self, key: str, upload_id: str, parts: builtins.list[PartInfo]) -> ObjectInfo:
        listed = [{"PartNumber": p.number, "ETag": f'"{p.etag}"'} for p in parts]
        try:
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self._k(key),
                UploadId=upload_id,
                MultipartUpload={"Parts": listed},
            )
        except _BOTO_ERRORS as exc:
            _raise(exc, "complete_upload", key)
        info = self._head(key)
        if info is None:
            raise IntegrityError(f"s3 complete_upload {key!r}: object not visible after completion")
        m = _MULTIPART_ETAG_RE.search(info.etag)
        if m and int(m.group(1)) != len(parts):
            raise IntegrityError(
                f"s3 complete_upload {key!r}: server assembled {m.group(1)} parts, expected {len(parts)}"
            )
        return info

    def _abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=self._k(key), UploadId=upload_id)
        except _BOTO_ERRORS as exc:
            err = map_s3_error(exc, "abort_upload", key)
            if not isinstance(err, NotFound):  # already gone: aborting is idempotent
                raise err from exc

    # -- reads ---------------------------------------------------------------------------

    def _head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self._k(key))
        except _BOTO_ERRORS as exc:
            err = map_s3_error(exc, "head", key)
            if isinstance(err, NotFound):
                return None
            raise err from exc
        return ObjectInfo(key=key, size=int(resp["ContentLength"]), etag=_etag(resp.get("ETag")))

    def _get_range(self, key: str, start: int, length: int, if_match: str | None) -> bytes:
        """GET bytes [start, start+length); retries a body that breaks off mid-read."""
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._k(key),
            "Range": f"bytes={start}-{start + length - 1}",
        }
        if if_match is not None:
            args["IfMatch"] = f'"{if_match}"'
        for attempt in range(self._max_attempts):
            try:
                resp = self._client.get_object(**args)
            except _BOTO_ERRORS as exc:
                _raise(exc, "read", key)
            m = _CONTENT_RANGE_RE.fullmatch(str(resp.get("ContentRange") or ""))
            if m is None or int(m.group(1)) != start:
                resp["Body"].close()
                raise IntegrityError(f"s3 read {key!r}: server did not honour the byte range")
            served = int(m.group(2)) - start + 1
            if served != length:
                resp["Body"].close()
                raise InvalidInput(f"range {start}+{length} runs past the end of {key!r} (size {m.group(3)})")
            try:
                return bytes(resp["Body"].read())
            except _BODY_ERRORS as exc:
                if attempt + 1 >= self._max_attempts:
                    _raise(exc, "read", key)
            except _BOTO_ERRORS as exc:
                _raise(exc, "read", key)
        raise BackendUnavailable(f"s3 read {key!r}: no attempts left")  # pragma: no cover

    def _read_range(self, key: str, start: int, length: int) -> bytes:
        return self._get_range(key, start, length, None)

    def _open_stream(self, key: str, part_size: int) -> tuple[int, Iterator[bytes]]:
        info = self._head(key)
        if info is None:
            raise NotFound(f"s3 read {key!r}: no such object")
        return info.size, self._stream(key, info, part_size)

    def _stream(self, key: str, info: ObjectInfo, part_size: int) -> Iterator[bytes]:
        """Ranged GETs, up to ``download_concurrency`` in flight, yielded in order."""
        if info.size == 0:
            return
        offsets = iter(range(0, info.size, part_size))
        window = max(1, min(self.download_concurrency, -(-info.size // part_size)))
        pending: deque[Future[bytes]] = deque()
        pool = ThreadPoolExecutor(max_workers=window, thread_name_prefix="custos-s3-get")
        try:

            def submit_next() -> None:
                offset = next(offsets, None)
                if offset is not None:
                    n = min(part_size, info.size - offset)
                    pending.append(pool.submit(self._get_range, key, offset, n, info.etag))

            for _ in range(window):
                submit_next()
            while pending:
                data = pending.popleft().result()
                submit_next()
                yield data
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    # -- removal, listing, health -------------------------------------------------------

    def _delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._k(key))
        except _BOTO_ERRORS as exc:
            err = map_s3_error(exc, "delete", key)
            if not isinstance(err, NotFound):
                raise err from exc

    def _list(self, prefix: str) -> builtins.list[ObjectInfo]:
        out: list[ObjectInfo] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=self._k(prefix),
                PaginationConfig={"PageSize": self._page_size},
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    key = str(obj["Key"])[len(self.prefix) :]
                    # Skip what Custos could not have written (directory markers, foreign keys).
                    with contextlib.suppress(InvalidInput):
                        out.append(
                            ObjectInfo(
                                key=validate_key(key),
                                size=int(obj["Size"]),
                                etag=_etag(obj.get("ETag")),
                            )
                        )
        except _BOTO_ERRORS as exc:
            _raise(exc, "list", prefix)
        return out

    def _check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except _BOTO_ERRORS as exc:
            err = map_s3_error(exc, "check")
            if isinstance(err, NotFound):
                err = FailedPrecondition(f"s3 bucket {self.bucket!r} does not exist")
            raise err from exc
