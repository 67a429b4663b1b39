"""Blob stores for ciphertext: one interface, an S3 backend and a local-directory backend.

``S3BlobStore`` needs boto3 and is imported lazily, so the local backend works
without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from custos.blobs.base import (
    DEFAULT_PART_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    BlobStore,
    ObjectInfo,
    PartInfo,
    validate_key,
    validate_prefix,
)
from custos.blobs.local import LocalBlobStore

if TYPE_CHECKING:
    from custos.blobs.s3 import S3BlobStore

__all__ = [
    "DEFAULT_PART_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "BlobStore",
    "LocalBlobStore",
    "ObjectInfo",
    "PartInfo",
    "S3BlobStore",
    "validate_key",
    "validate_prefix",
]


def __getattr__(name: str) -> Any:
    if name == "S3BlobStore":
        from custos.blobs.s3 import S3BlobStore  # optional: boto3 comes with the s3 extra

        return S3BlobStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
