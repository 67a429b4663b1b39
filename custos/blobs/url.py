"""Open a BlobStore from a URL, the one string clients and servers configure.

    file:///var/lib/custos/blobs                      local directory (embedded default)
    s3://BUCKET[/PREFIX]?endpoint=URL&region=R        S3 API: AWS, MinIO, SeaweedFS

S3 credentials never go in the URL: they come from the arguments, else the
environment (CUSTOS_S3_ACCESS_KEY / CUSTOS_S3_SECRET_KEY), else boto3's default
chain (AWS_* variables with their session token, AWS_PROFILE and the shared files,
web identity, container and instance metadata; see custos.blobs.s3). The control
plane tells clients the URL it uses (without credentials) so a client needs only
its own credentials.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

from custos.blobs.base import BlobStore
from custos.blobs.local import LocalBlobStore
from custos.errors import InvalidInput

OBJECT_PREFIX = "artifacts/"


def object_key(artifact_id: str, index: int) -> str:
    """Where file ``index`` (manifest order) of an artifact's ciphertext is stored."""
    return f"{OBJECT_PREFIX}{artifact_id}/{index:06d}"


def open_blob_store(url: str, *, access_key: str | None = None, secret_key: str | None = None) -> BlobStore:
    """Raises InvalidInput for a malformed URL, half an S3 key pair or no S3 credentials at all,
    BackendUnavailable when a credential source of the default chain does not answer."""
    parts = urlsplit(url)
    if parts.scheme == "file":

        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidInput(f"bad blob store URL {url!r}: want file:///absolute/path")
        return LocalBlobStore(parts.path)
    if parts.scheme == "s3":
        from custos.blobs.s3 import S3BlobStore  # optional: boto3 comes with the s3 extra

        if parts.username or parts.password:
            raise InvalidInput("do not put credentials in the blob store URL")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise InvalidInput(f"bad blob store URL: unknown parameter(s) {sorted(unknown)}")
        env = os.environ
        # The AWS_* variables are left to botocore's chain, which also reads AWS_SESSION_TOKEN.
        ak = access_key or env.get("CUSTOS_S3_ACCESS_KEY") or None
        sk = secret_key or env.get("CUSTOS_S3_SECRET_KEY") or None
        if (ak is None) != (sk is None):
            raise InvalidInput("S3 credentials: an access key without its secret key or the reverse: give both "
                               "(CUSTOS_S3_ACCESS_KEY and CUSTOS_S3_SECRET_KEY) or neither (boto3's default chain)")
        prefix = parts.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3BlobStore(endpoint_url=query.get("endpoint"), bucket=parts.netloc, access_key=ak,
                           secret_key=sk, region=query.get("region", "us-east-1"), prefix=prefix)
    raise InvalidInput(f"unknown blob store URL {url!r}: want file:///PATH or s3://BUCKET[/PREFIX]?endpoint=URL")
